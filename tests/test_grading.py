"""The generic checks (course_utils.grading): values, predictions and the noise-rule answers; each passes on a
right answer with one ``ok:`` line and raises AssertionError with its exact hint on a wrong one. Grading a
folder of notebooks (re-injecting the instructor's checks) is tested in ``test_release.py``."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from course_utils import grading



def _fails(message: str):
    return pytest.raises(AssertionError, match=f"^{re.escape(message)}$")


def test_check_defined_refuses_the_placeholders():
    for placeholder in (None, ...):
        with _fails("my answer is not set yet: replace the placeholder with your answer."):
            grading.check_defined(placeholder, "my answer")
    grading.check_defined(0, "my answer")


def test_check_in_range_equal_greater_and_in_set(capsys):
    grading.check_in_range(0.5, 0.5, 0.75, "accuracy")
    with _fails("accuracy is 0.800; expected between 0.500 and 0.750."):
        grading.check_in_range(0.8, 0.5, 0.75)
    grading.check_equal((64, 64, 3), (64, 64, 3), "the shape")
    with _fails("the method is 'svm'; expected 'head'."):
        grading.check_equal("svm", "head", "the method")
    grading.check_greater(0.9, 0.8, "with vs without", margin=0.05)
    with _fails("with vs without: 0.900 should exceed 0.800 by more than 0.100."):
        grading.check_greater(0.9, 0.8, "with vs without", margin=0.1)
    grading.check_in_set("tabby", ("tabby", "tiger cat"), "top-1")
    with _fails("top-1 is 'lynx'; expected one of ['tabby', 'tiger cat']."):
        grading.check_in_set("lynx", ("tabby", "tiger cat"), "top-1")
    with _fails("top-1 is not set yet: replace the placeholder with your answer."):
        grading.check_in_set(None, ("tabby", "tiger cat"), "top-1")
    assert capsys.readouterr().out.splitlines() == [
        "ok: accuracy 0.500 within [0.500, 0.750]", "ok: the shape = (64, 64, 3)",
        "ok: with vs without: 0.900 > 0.800", "ok: top-1 = 'tabby'"]


def test_nb06_check_extension_verdict_recomputes_the_noise_rule_and_refuses_constant_answers(capsys):
    import numpy as np

    from course_utils import evaluation, surgery

    rng = np.random.default_rng(0)
    f_test, y_test = rng.normal(size=(60, 10)).astype("float32"), np.repeat([0, 1, 2], 20)
    heads = [surgery.head_model(10, 3, (8, 8), seed=s) for s in (0, 1)]
    correct = np.stack([evaluation.predict(h, f_test).argmax(1) == y_test for h in heads])
    truth = {"within noise": correct, "better": np.zeros_like(correct), "worse": np.ones_like(correct)}
    for verdict, baseline in truth.items():
        grading.check_extension_verdict(heads, f_test, y_test, baseline, verdict, units=(8, 8))
        grading.check_extension_verdict(heads, f_test, y_test, baseline, f" {verdict.upper()} ", units=[8, 8])
        for constant in set(truth) - {verdict}:  # a constant answer fails where the measurement disagrees
            with pytest.raises(AssertionError, match="^that is not what the noise rule says about your heads"):
                grading.check_extension_verdict(heads, f_test, y_test, baseline, constant, units=(8, 8))
    assert capsys.readouterr().out == "ok: your heads and your reading of the noise rule's verdict\n" * 6
    with pytest.raises(AssertionError, match=r"^a head has 115 trainable parameters; one with extension layers \[8, 8\] on 10 features has 187\.$"):
        grading.check_extension_verdict([surgery.head_model(10, 3, (8,), seed=s) for s in (0, 1)], f_test, y_test,
                                        correct, "within noise", units=(8, 8))
    with pytest.raises(AssertionError, match="^two of your heads make identical predictions"):
        grading.check_extension_verdict([heads[0], heads[0]], f_test, y_test, correct, "within noise", units=(8, 8))
    with pytest.raises(AssertionError, match="^train one head per seed"):
        grading.check_extension_verdict(heads[:1], f_test, y_test, correct, "within noise", units=(8, 8))
    with pytest.raises(AssertionError, match="^give the verdict as one of"):
        grading.check_extension_verdict(heads, f_test, y_test, correct, "extension better", units=(8, 8))


def test_nb03_check_divergence_prediction_fails_wrong_sets_and_passes_a_dict(capsys):
    """03 Ex2 (predict, then run "which rate diverges"): the measured set passes as a set or as a dict
    rate -> bool; "none diverge", "all diverge" and a rate outside the sweep fail, naming no rate."""

    result = SimpleNamespace(rates=[0.1, 0.01, 0.001], diverged=[[True, True], [True, True], [False, True]])
    grading.check_divergence_prediction({0.1, 0.01}, result)
    grading.check_divergence_prediction({0.1: True, 0.01: True, 0.001: False}, result)
    assert capsys.readouterr().out == "ok: your prediction matches the run for all 3 rates\n" * 2
    for wrong, count in ((set(), 2), ({0.1, 0.01, 0.001}, 1), ({0.1}, 1)):
        with pytest.raises(AssertionError, match=f"^your prediction is wrong for {count} of the 3 rates"):
            grading.check_divergence_prediction(wrong, result)
    with pytest.raises(AssertionError, match=r"^\[1.0\] are not rates of this sweep"):
        grading.check_divergence_prediction({1.0, 0.1}, result)
    with pytest.raises(AssertionError, match="one entry per rate"):
        grading.check_divergence_prediction({0.1: True}, result)
    with pytest.raises(AssertionError, match="as a set"):
        grading.check_divergence_prediction("0.1", result)
    with pytest.raises(AssertionError, match="not set yet"):
        grading.check_divergence_prediction(..., result)


def test_nb02_check_prediction_never_shows_the_measured_value(capsys):
    """02 Ex2 (predict, then run): the exact count passes, as int or numpy int; a wrong one, a bool for a number
    and the placeholder fail with the hint only."""
    import numpy as np


    grading.check_prediction(1_281_000, 1_281_000, "your prediction", "hint")
    grading.check_prediction(np.int64(1_281_000), 1_281_000, "your prediction", "hint")
    assert capsys.readouterr().out == "ok: your prediction (1281000) is what happens\n" * 2
    for wrong in (4_694_024, 0, True):
        with pytest.raises(AssertionError, match=rf"^your prediction \({wrong!r}\) is not what happens. Which layers\?$"):
            grading.check_prediction(wrong, 1_281_000, "your prediction", "Which layers?")
    with pytest.raises(AssertionError, match=r"^your prediction \(1\) is not what happens"):
        grading.check_prediction(1, True, "your prediction", "")
    with pytest.raises(AssertionError, match="not set yet"):
        grading.check_prediction(..., 1_281_000, "your prediction", "")


def _nb01_features():
    """Five overlapping Gaussian classes: 20 training and 40 test feature vectors each, 6 dimensions."""
    import numpy as np

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1.0, (5, 6))
    y_train, y_test = np.repeat(np.arange(5), 20), np.repeat(np.arange(5), 40)
    return (centres[y_train] + rng.normal(0, 1.2, (100, 6)), y_train,
            centres[y_test] + rng.normal(0, 1.2, (200, 6)), y_test)


def test_nb01_check_probe_correctness_fails_the_known_wrong_answers(capsys):
    """01 Ex1 known wrong answers (the old check took any accuracy in a range): a probe on all training images,
    one on another seed's sample, a typed-in accuracy, the predictions, the training images' correctness and
    all-correct fail; the solution, and plain scikit-learn as a list of 0/1, pass."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from course_utils import data, features, grading

    x_train, y_train, x_test, y_test = _nb01_features()
    idx = data.stratified_sample(y_train, 2, seed=0)
    right = features.fit_probe(x_train[idx], y_train[idx], "logreg").predict(x_test) == y_test
    args = (x_train, y_train, x_test, y_test)
    all_images = features.fit_probe(x_train, y_train, "logreg")
    other = data.stratified_sample(y_train, 2, seed=1)
    wrong = {
        "disagrees on": [all_images.predict(x_test) == y_test,
                         features.fit_probe(x_train[other], y_train[other]).predict(x_test) == y_test,
                         np.ones(len(y_test), bool)],
        "single number": [float(right.mean())],
        "not the predicted classes": [all_images.predict(x_test)],
        "shape": [all_images.predict(x_train) == y_train, np.stack([right, right])],
    }
    for message, answers in wrong.items():
        for answer in answers:
            with pytest.raises(AssertionError, match=message):
                grading.check_probe_correctness(answer, *args, per_class=2, seed=0)
    with pytest.raises(AssertionError, match="not set yet"):
        grading.check_probe_correctness(None, *args, per_class=2, seed=0)
    capsys.readouterr()
    grading.check_probe_correctness(right, *args, per_class=2, seed=0)
    sklearn_way = LogisticRegression(max_iter=1000).fit(x_train[idx], y_train[idx]).predict(x_test) == y_test
    grading.check_probe_correctness([int(v) for v in sklearn_way], *args, per_class=2, seed=0)
    assert capsys.readouterr().out.count("ok: your per-image correctness: a logreg probe on 2 images per class, "
                                         "scored on all 200 test images\n") == 2


def test_nb01_check_comparison_needs_the_noise_rule_on_the_named_arrays(capsys):
    """01 Ex1: a hand-made verdict, a dict, and compare() of other arrays (the all-images probe; the training
    images) fail; compare() in either order, and at another alpha, passes."""
    from course_utils import evaluation, features, grading

    x_train, y_train, x_test, y_test = _nb01_features()
    probe = features.fit_probe(x_train[::10], y_train[::10]).predict(x_test) == y_test
    scratch = (y_test + (y_test % 2)) % 5 == y_test  # right on the even classes only
    full = features.fit_probe(x_train, y_train).predict(x_test) == y_test
    for answer in ("probe better", {"verdict": "within noise"}):
        with pytest.raises(AssertionError, match="store what evaluation.compare"):
            grading.check_comparison(answer, probe, scratch)
    for a, b in ((full, scratch), (probe, full), (probe[:100], scratch[:100])):
        with pytest.raises(AssertionError, match="should compare the two per-image correctness arrays"):
            grading.check_comparison(evaluation.compare(a, b), probe, scratch)
    capsys.readouterr()
    expected = evaluation.compare(probe, scratch, names=("probe", "scratch"))
    grading.check_comparison(expected, probe, scratch)
    grading.check_comparison(evaluation.compare(scratch, probe, names=("scratch", "probe"), alpha=0.01), probe, scratch)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"ok: your comparison uses the noise rule on 200 paired test images: {expected.verdict}"
    assert len(out) == 2


def _nb07_correct():
    """Per-image correctness (2 seeds x 20 images) of four topologies: frozen_head best (0.75), last2 and
    all tied runner-ups (0.5), svm worst (0.25)."""
    import numpy as np

    def pattern(n_right):
        return np.tile(np.arange(20) < n_right, (2, 1))

    return {"svm": pattern(5), "frozen_head": pattern(15), "last2": pattern(10), "all": pattern(10)}


def test_nb07_best_and_runner_up_rejects_the_known_wrong_answers():
    """07 Ex1: hard-coding "svm", a hand-made verdict, or a comparison of the wrong pair fail."""
    from course_utils import evaluation

    correct = _nb07_correct()
    right = evaluation.compare(correct["frozen_head"], correct["last2"], names=("frozen_head", "last2"))
    with pytest.raises(AssertionError, match="'svm' is not the topology with the highest mean accuracy"):
        grading.check_best_and_runner_up("svm", right, correct)
    with pytest.raises(AssertionError, match="'resnet' is not a topology label here"):
        grading.check_best_and_runner_up("resnet", right, correct)
    with pytest.raises(AssertionError, match="store what evaluation.compare"):
        grading.check_best_and_runner_up("frozen_head", "within noise", correct)
    wrong_pair = evaluation.compare(correct["frozen_head"], correct["svm"])
    with pytest.raises(AssertionError, match="should compare the two per-image correctness arrays"):
        grading.check_best_and_runner_up("frozen_head", wrong_pair, correct)
    with pytest.raises(AssertionError, match="write your prediction first"):
        grading.check_best_and_runner_up("frozen_head", right, correct, prediction="frozen_head")


def test_nb07_best_and_runner_up_accepts_either_order_and_a_tied_runner_up(capsys):
    """07 Ex1: the comparison in either order, with either tied runner-up, passes; the output names neither
    the best topology nor the verdict."""
    from course_utils import evaluation

    correct = _nb07_correct()
    prediction = {"best": "svm", "beyond_noise": False}  # a wrong prediction is fine: it is not graded
    grading.check_best_and_runner_up("frozen_head", evaluation.compare(
        correct["frozen_head"], correct["last2"], names=("frozen_head", "last2")), correct, prediction)
    grading.check_best_and_runner_up("frozen_head", evaluation.compare(
        correct["all"], correct["frozen_head"], names=("all", "frozen_head"), alpha=0.01), correct)
    out = capsys.readouterr().out
    assert out == ("ok: best_at_5 is the best mean, and comparison_at_5 applies the noise rule to it and the "
                   "runner-up\n") * 2
    assert "frozen_head" not in out and "within noise" not in out and "better" not in out

