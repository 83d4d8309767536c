"""Check functions for the exercises' check cells (notebooks ``02``–``09``).

Each check raises ``AssertionError`` with a hint when the answer is wrong or missing, and prints a short
"ok" line when it is right. Checks look at what can be checked robustly (parameter counts, which layers are
frozen, the learning rate used, an accuracy range), never at exact floats.

This module holds the messages (``fail``, ``ok``) and the checks of values, predictions and noise-rule
answers; ``grading_models`` checks Keras models and optimizers, ``grading_answers`` recomputes an answer
from the data. Check cells call these functions. ``python -m course_utils grade`` (``release.grade``) puts the instructor's
check cells back into each submission before running it, so an edited or removed check fails (README,
"For instructors").
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Iterable

import numpy as np

from course_utils import data, evaluation, features, surgery


def fail(message: str) -> None:
    raise AssertionError(message)


def ok(message: str) -> None:
    print(f"ok: {message}")


def check_defined(value: Any, what: str) -> None:
    """The exercise must produce a value (not ``None``, not ``...``); every check calls it first
    (notebooks ``00_setup``-``09_capstone``)."""
    if value is None or value is Ellipsis:
        fail(f"{what} is not set yet: replace the placeholder with your answer.")


def check_in_range(value: float | None, low: float, high: float, what: str = "accuracy") -> None:
    """A measured number (accuracy, distance, ...) lies in [low, high] (notebook ``01_why_finetune``)."""
    check_defined(value, what)
    value = float(value)
    if not low <= value <= high:
        fail(f"{what} is {value:.3f}; expected between {low:.3f} and {high:.3f}.")
    ok(f"{what} {value:.3f} within [{low:.3f}, {high:.3f}]")


def check_equal(value: Any, expected: Any, what: str) -> None:
    """An exact, discrete answer (a count, a class name, a choice; notebook ``07_experiments``)."""
    check_defined(value, what)
    if value != expected:
        fail(f"{what} is {value!r}; expected {expected!r}.")
    ok(f"{what} = {value!r}")


def check_greater(a: float | None, b: float | None, what: str, margin: float = 0.0) -> None:
    """``a`` exceeds ``b`` by at least ``margin`` (e.g. accuracy with vs without a technique, for
    the measured comparisons of notebooks ``03_learning_rate`` and ``04_freezing``)."""
    check_defined(a, what)
    check_defined(b, what)
    if not float(a) > float(b) + margin:
        fail(f"{what}: {float(a):.3f} should exceed {float(b):.3f} by more than {margin:.3f}.")
    ok(f"{what}: {float(a):.3f} > {float(b):.3f}")


def check_in_set(value: Any, allowed: Iterable[Any], what: str) -> None:
    """A discrete answer that may be any of several right ones (e.g. "tabby" or "tiger cat" for a cat photo;
    notebook ``02_replace_softmax``)."""
    check_defined(value, what)
    allowed = list(allowed)
    if value not in allowed:
        fail(f"{what} is {value!r}; expected one of {allowed!r}.")
    ok(f"{what} = {value!r}")


VERDICT_WORDS = ("better", "worse", "within noise")


def check_extension_verdict(heads: Any, test_features: np.ndarray, test_labels: np.ndarray,
                            baseline_correct: Any, verdict: Any, units: Iterable[int]) -> None:
    """Heads with extension layers of ``units``, one per seed, trained on bottleneck features, and the
    noise rule's verdict on them against the plain head (notebook 06_extension_layers, a "predict, then
    run" exercise). ``verdict``: "better", "worse" or "within noise" for the extension; the check
    recomputes ``evaluation.compare`` from the heads themselves and never shows its answer."""
    check_defined(heads, "the trained heads")
    check_defined(verdict, "your verdict")
    heads = list(heads) if isinstance(heads, (list, tuple)) else [heads]
    baseline = np.atleast_2d(np.asarray(baseline_correct))
    if len(heads) != len(baseline):
        fail(f"train one head per seed of the plain head ({len(baseline)}), so seed i pairs with seed i.")
    units = tuple(int(u) for u in units)
    width, n_classes = int(np.shape(test_features)[1]), int(np.max(test_labels)) + 1
    want = surgery.count_params(surgery.head_model(width, n_classes, units))["trainable"]
    for head in heads:
        if surgery.count_params(head)["trainable"] != want:
            fail(f"a head has {surgery.count_params(head)['trainable']:,} trainable parameters; one with "
                  f"extension layers {list(units)} on {width} features has {want:,}.")
    correct = np.stack([evaluation.predict(h, test_features).argmax(axis=1) == test_labels for h in heads])
    if len({c.tobytes() for c in correct}) < len(heads) > 1:
        fail("two of your heads make identical predictions: give each its own seed.")
    result = evaluation.compare(correct, baseline, names=("extension", "plain head"))
    expected = {"extension better": "better", "plain head better": "worse"}.get(result.verdict, "within noise")
    answer = " ".join(str(verdict).strip().lower().split())
    if answer not in VERDICT_WORDS:
        fail(f"give the verdict as one of {list(VERDICT_WORDS)} (for the extension, against the plain head).")
    if answer != expected:
        fail("that is not what the noise rule says about your heads: run evaluation.compare(extension "
              "correctness, plain-head correctness) and read its verdict.")
    ok("your heads and your reading of the noise rule's verdict")


def _predicted_rates(prediction: Any, rates: list[float]) -> set[float]:
    """The rates a prediction says diverge: a collection of rates, or a mapping rate -> True/False."""
    if isinstance(prediction, dict):
        chosen = [rate for rate, diverges in prediction.items() if diverges]
        if set(map(float, prediction)) != set(rates):
            fail(f"your prediction should have one entry per rate: {rates}")
    elif isinstance(prediction, (set, frozenset, list, tuple)):
        chosen = list(prediction)
    else:
        fail("give the rates you expect to diverge as a set, e.g. {1.0, 0.1} (or set() for none), or a "
              "dict {rate: True/False}")
    try:
        chosen = {float(rate) for rate in chosen}
    except (TypeError, ValueError):
        fail("your prediction should contain learning rates (numbers)")
    unknown = sorted(chosen - set(rates))
    if unknown:
        fail(f"{unknown} are not rates of this sweep; choose among {rates}")
    return chosen


def check_divergence_prediction(prediction: Any, result: Any) -> None:
    """A "predict, then run" answer (notebook ``03_learning_rate``): ``prediction`` names the rates of
    ``result`` (a ``studies.LRSweepResult``: ``rates`` and per-seed ``diverged``) that diverge, as a set of
    rates or a dict rate -> True/False; a rate counts as diverged when most of its seeds did. The message
    says how many rates are wrong, never which."""
    check_defined(prediction, "your prediction")
    rates = [float(r) for r in result.rates]
    predicted = _predicted_rates(prediction, rates)
    measured = {rate for rate, flags in zip(rates, result.diverged) if 2 * sum(map(bool, flags)) > len(flags)}
    wrong = len(predicted ^ measured)
    if wrong:
        fail(f"your prediction is wrong for {wrong} of the {len(rates)} rates. Read the run's final losses: "
              "a diverged run ends with a loss that is nan or above 2 ln(number of classes).")
    ok(f"your prediction matches the run for all {len(rates)} rates")


def check_prediction(prediction: Any, measured: Any, what: str, hint: str) -> None:
    """A "predict, then run" answer equals what was measured; a wrong one gets ``hint``, never the measured
    value, so the check does not give the answer away (notebook ``02_replace_softmax``)."""
    check_defined(prediction, what)
    prediction = prediction.item() if isinstance(prediction, np.generic) else prediction
    if isinstance(measured, (bool, np.bool_)) != isinstance(prediction, bool) or prediction != measured:
        fail(f"{what} ({prediction!r}) is not what happens. {hint}")
    ok(f"{what} ({prediction!r}) is what happens")


def _per_image(correct: Any, n_images: int, what: str) -> np.ndarray:
    """``correct`` as a boolean array of one entry per test image, or a failed check saying what is wrong."""
    arr = np.asarray(correct)
    if arr.ndim == 0:
        fail(f"{what} is a single number; give one True/False per test image (predictions == labels).")
    if arr.shape != (n_images,):
        fail(f"{what} has shape {arr.shape}; expected one entry per test image, ({n_images},). "
              "Did you score the training images, or several seeds at once?")
    if arr.dtype.kind not in "biuf" or not np.isin(arr, (0, 1)).all():
        fail(f"{what} should hold True/False (or 1/0) per test image: store predictions == labels, "
              "not the predicted classes or the probabilities.")
    return arr.astype(bool)


def check_probe_correctness(correct: Any, train_features: np.ndarray, train_labels: np.ndarray,
                            test_features: np.ndarray, test_labels: np.ndarray, per_class: int, seed: int = 0,
                            method: str = "logreg", what: str = "your per-image correctness",
                            max_mismatch: int = 1) -> None:
    """``correct`` says, for each test image, whether a ``features.fit_probe(..., method)`` probe fitted on the
    training images that ``data.stratified_sample(train_labels, per_class, seed)`` picks gets it right
    (notebook ``01_why_finetune``, Exercise 1). The right answer is recomputed here and never shown; up to
    ``max_mismatch`` images may differ (a solver's round-off). A probe fitted on all the training images, an
    accuracy typed in, or the training images' correctness fail."""
    check_defined(correct, what)
    test_labels = np.asarray(test_labels)
    got = _per_image(correct, len(test_labels), what)
    idx = data.stratified_sample(np.asarray(train_labels), int(per_class), int(seed))
    probe = features.fit_probe(np.asarray(train_features)[idx], np.asarray(train_labels)[idx], method, seed=int(seed))
    differ = int(np.sum(got != (probe.predict(np.asarray(test_features)) == test_labels)))
    if differ > max_mismatch:
        fail(f"{what} disagrees on {differ} of {len(got)} test images with a {method} probe fitted on "
              f"{per_class} training images per class. Fit it on exactly the images "
              f"data.stratified_sample(labels, {per_class}, seed={seed}) picks (not on all of them), then score "
              "the test features.")
    ok(f"{what}: a {method} probe on {per_class} images per class, scored on all {len(got)} test images")


def check_comparison(comparison: Any, correct_a: Any, correct_b: Any, what: str = "your comparison") -> None:
    """``comparison`` is ``evaluation.compare`` of ``correct_a`` with ``correct_b`` (in either order) on the same
    test images (notebook ``01_why_finetune``: every "A vs B" verdict comes from the one noise rule). A
    hand-made verdict string, or a comparison of other results, fails."""
    check_defined(comparison, what)
    if not isinstance(comparison, evaluation.Comparison):
        fail(f"{what} is a {type(comparison).__name__}; store what evaluation.compare(correct_a, correct_b, "
              "names=(...)) returns, the course's one noise rule.")
    expected = evaluation.compare(correct_a, correct_b, n_boot=100)
    pairs = {(expected.acc_a, expected.acc_b), (expected.acc_b, expected.acc_a)}
    same = any(np.isclose(comparison.acc_a, a) and np.isclose(comparison.acc_b, b) for a, b in pairs)
    if not same or (comparison.n_images, comparison.n_seeds) != (expected.n_images, expected.n_seeds):
        fail(f"{what} compares accuracies {comparison.acc_a:.3f} and {comparison.acc_b:.3f} on "
              f"{comparison.n_images} images x {comparison.n_seeds} seeds; it should compare the two per-image "
              "correctness arrays the exercise names, on the same test images.")
    ok(f"{what} uses the noise rule on {comparison.n_images} paired test images: {comparison.verdict}")


def check_best_and_runner_up(best: Any, comparison: Any, correct: Any, prediction: Any = None) -> None:
    """``best`` is the label with the highest mean accuracy in ``correct`` (label -> per-image correctness,
    ``(n_seeds, n_images)``, e.g. every topology at 5 images per class), and ``comparison`` is the noise rule,
    ``evaluation.compare``, between it and the runner-up (either order; any tied label counts). ``prediction``,
    when given, must be a dict ``{"best": label, "beyond_noise": True/False}``: it is checked for its form,
    never for being right. Neither the best label nor the verdict is shown (notebook ``07_experiments``, a
    "predict, then run" exercise)."""
    check_defined(best, "best_at_5")
    check_defined(comparison, "comparison_at_5")
    arrays = {str(label): np.asarray(values) for label, values in dict(correct).items()}
    means = {label: float(values.mean()) for label, values in arrays.items()}
    if prediction is not None and not (isinstance(prediction, dict) and set(prediction) == {"best", "beyond_noise"}
                                       and str(prediction["best"]) in means
                                       and isinstance(prediction["beyond_noise"], bool)):
        fail(f'write your prediction first, as {{"best": one of {sorted(means)}, "beyond_noise": True or False}}.')
    if str(best) not in means:
        fail(f"{best!r} is not a topology label here; choose among {sorted(means)}.")
    if not np.isclose(means[str(best)], max(means.values())):
        fail(f"{best!r} is not the topology with the highest mean accuracy at these settings: summarize the rows "
              "by topology (results.summarize) and take the best mean (results.best), not a guess.")
    others = {label: mean for label, mean in means.items() if label != str(best)}
    runner_up = max(others, key=others.get)
    with contextlib.redirect_stdout(io.StringIO()):  # its "ok" line would show the verdict
        check_comparison(comparison, arrays[str(best)], arrays[runner_up],
                         "comparison_at_5 (the best against the runner-up)")
    ok("best_at_5 is the best mean, and comparison_at_5 applies the noise rule to it and the runner-up")

