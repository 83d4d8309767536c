"""Checks that recompute a student's answer from the same data and never show it (notebooks ``02``, ``05``,
``08``, ``09``): a distance, Chu's advice for a case, a probe's sample, late fusion, a flipped photo's top-1,
a recipe for a recommendation, an exported model's prediction. Messages and the ``ok`` line come from
``grading``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import clone

from course_utils import advice, backbones, domain, evaluation, features, grading, grading_models
from course_utils.quiet import keras


def check_cosine_distance(value: float | None, source_mean: Any, target_mean: Any,
                          what: str = "your cosine distance", tol: float = 1e-4) -> None:
    """``value`` is Chu et al.'s distance ``1 - cos(source_mean, target_mean)`` (notebook 08_domain_distance).

    The right value is computed here and never shown, so the check cell does not give the answer away.
    """
    grading.check_defined(value, what)
    try:
        got = float(value)
    except (TypeError, ValueError):
        grading.fail(f"{what} should be a number, got {type(value).__name__}")
    if abs(got - domain.cosine_distance(source_mean, target_mean)) > tol:
        grading.fail(f"{what} is {got:.4f}, which is not 1 - cos(mu_S, mu_T) of the two mean feature vectors. "
              "A distance is 0 for vectors pointing the same way: is this the cosine similarity, or a "
              "Euclidean distance?")
    grading.ok(f"{what} {got:.4f} is Chu's cosine distance")


def _normalise_advice(answer: Any) -> str | None:
    """"freeze" / "try both" / "tune", from either spelling (Table 3's verbatim entry or the short one)."""
    text = " ".join(str(answer).strip().lower().split())
    verbatim = {entry.lower(): short for entry, short in advice.CHU_ADVICE.items()}
    return verbatim.get(text, text if text in advice.CHU_ADVICE.values() else None)


def check_chu_advice(predictions: Any, cases: Any, what: str = "your predictions") -> None:
    """Each ``predictions[name]`` is Chu's Table 3 entry for ``cases[name] = (distance on Chu's scale, images
    per class)`` (notebook 08_domain_distance, a "predict, then run" exercise). Accepts ``"freeze"``, ``"try
    both"``, ``"tune"`` or Table 3's own words (``"Try Freeze or Tune"``); names the wrong cases, not their answers.
    """
    grading.check_defined(predictions, what)
    if not isinstance(predictions, dict) or set(predictions) != set(cases):
        grading.fail(f"{what} should be a dict with one entry per case: {sorted(cases)}")
    unknown = sorted(name for name, answer in predictions.items() if _normalise_advice(answer) is None)
    if unknown:
        grading.fail(f"{what}: use \"freeze\", \"try both\" or \"tune\" (or Table 3's words); not understood for {unknown}")
    wrong = sorted(name for name, (distance, n) in cases.items()
                   if _normalise_advice(predictions[name]) != advice.chu_advice(advice.chu_cell(distance, n)))
    if wrong:
        grading.fail(f"{len(wrong)} of {len(cases)} predictions disagree with Chu's Table 3: {wrong}. Find each case's "
              "row (distance 0-0.2 / 0.2-0.4 / 0.4-1) and column (1-20 / 21-99 / >=100 images per class).")
    grading.ok(f"all {len(cases)} predictions match Chu's Table 3")


def check_probe_sample(probe: Any, sample: Any, train_features: np.ndarray, train_labels: np.ndarray,
                       test_features: np.ndarray, test_labels: np.ndarray, accuracy: float | None,
                       per_class: int) -> None:
    """A linear SVM trained on ``per_class`` training images per class (notebook 05_bottleneck_features).

    ``sample``: the indices into the training features it was fitted on. The check refits a copy of
    ``probe`` on exactly those and requires the same test predictions (so a probe fitted on other images
    fails), and recomputes the test accuracy from the probe (so a typed-in number fails).
    """
    for value, what in ((probe, "the probe"), (sample, "the sample indices"), (accuracy, "the test accuracy")):
        grading.check_defined(value, what)
    estimator = probe.steps[-1][1] if hasattr(probe, "steps") else probe
    kind = type(estimator).__name__
    if not (kind == "LinearSVC" or (kind == "SVC" and getattr(estimator, "kernel", "") == "linear")):
        grading.fail(f"the probe is a {kind}; the exercise asks for a linear SVM (sklearn LinearSVC, or "
              "features.fit_probe(..., method='svm')).")
    idx = np.asarray(sample).ravel()
    counts = np.bincount(np.asarray(train_labels)[idx], minlength=int(np.max(train_labels)) + 1)
    if len(np.unique(idx)) != len(idx) or not (counts == per_class).all():
        grading.fail(f"the sample should hold {per_class} distinct training images of every class "
              "(data.stratified_sample(y_train, n, seed)).")
    predicted = probe.predict(test_features)
    refit = clone(probe).fit(train_features[idx], np.asarray(train_labels)[idx]).predict(test_features)
    if np.mean(refit == predicted) < 0.99:
        grading.fail("refitted on your sample, the probe predicts differently: fit it on the features of exactly "
              "those images (f_train[sample], y_train[sample]), not on all the training images or the test set.")
    if abs(float(accuracy) - float(np.mean(predicted == test_labels))) > 1e-9:
        grading.fail("the accuracy you stored is not your probe's accuracy on the test features: compute "
              "np.mean(probe.predict(f_test) == y_test).")
    grading.ok(f"a linear SVM on {per_class} images per class, and its own test accuracy")


def check_late_fusion(proba: Any, train_parts: Any, train_labels: np.ndarray, test_parts: Any,
                      tol: float = 0.02) -> None:
    """``proba`` are late-fused probabilities, Pittaras' way: one logistic regression per layer (default
    regularisation), their predicted probabilities averaged (notebook 05_bottleneck_features). The right
    answer is computed here (``features.late_fusion_probe``) and never shown."""
    grading.check_defined(proba, "the fused probabilities")
    got = np.asarray(proba, dtype="float64")
    fused, per_layer = features.late_fusion_probe(train_parts, train_labels, test_parts)
    if got.shape != fused.shape:
        grading.fail(f"the fused probabilities have shape {got.shape}; expected one row per test image and one "
              f"column per class, {fused.shape}.")
    if np.abs(got - fused).max() <= tol:
        grading.ok(f"late fusion of {len(per_layer)} per-layer logistic regressions")
        return
    if any(np.abs(got - layer).max() <= tol for layer in per_layer):
        grading.fail("these are one layer's probabilities: fit one classifier per layer and average all of them.")
    if not np.allclose(got.sum(axis=1), 1.0, atol=1e-3):
        grading.fail("each row should sum to 1: average the per-layer probabilities (not sum or multiply them).")
    grading.fail("these are not the mean of the per-layer classifiers' probabilities: one LogisticRegression per "
          "layer, each fitted on that layer's training features only (late fusion, not one classifier on "
          "the concatenated features), then the arithmetic mean of their predict_proba.")


def check_mirrored_top1(flipped: Any, original: np.ndarray, top1: Any, model, preprocess) -> None:
    """``flipped`` is ``original`` mirrored left to right (``image[:, ::-1]``) and ``top1`` is the ImageNet
    ``model``'s most probable class name for it (notebook ``02_replace_softmax``)."""
    grading.check_defined(flipped, "the mirrored photo")
    grading.check_defined(top1, "the top-1 class")
    flipped, original = np.asarray(flipped), np.asarray(original)
    if flipped.shape != original.shape:
        grading.fail(f"the mirrored photo has shape {flipped.shape}, the photo {original.shape}: flip it, do not crop or resize.")
    if not np.array_equal(flipped, original[:, ::-1]):
        wrong = {"is the photo itself": original, "is upside down (rows flipped, axis 0)": original[::-1],
                 "has its colour channels reversed (RGB -> BGR)": original[..., ::-1]}
        what = next((text for text, image in wrong.items() if np.array_equal(flipped, image)), "is something else")
        grading.fail(f"your mirrored photo {what}; a mirror swaps left and right: the columns, image[:, ::-1].")
    expected = backbones.imagenet_top_k(evaluation.predict(model, flipped[None], preprocess), k=1)[0][0][0]
    if top1 != expected:
        grading.fail(f"{top1!r} is not the network's most probable class for the mirrored photo: ask the network "
              "(evaluation.predict, then backbones.imagenet_top_k) about the mirrored photo.")
    grading.ok(f"the mirrored photo's top-1 class is {top1!r}")


CAPSTONE_METHODS = {"freeze": ("head",), "tune": ("finetune",), "try both": ("head", "finetune")}


def check_capstone_recipe(recipe: Any, recommendation: Any) -> None:
    """``recipe`` (a ``recipes.Recipe``) follows ``recommendation`` (``advice.recommend``; notebook
    ``09_capstone``, Exercise 1): Chu's Freeze is ``method="head"``, his Tune is ``"finetune"``, "Try Freeze or
    Tune" accepts either. Fine-tuning needs 1 to all blocks (the course's 2, or Chu's every block), the
    pretrained layers at 0.05-0.25x the head's rate (the course's 0.1x, or Chu's 0.2x) and augmentation; a
    frozen backbone ("head") needs neither a backbone rate nor augmentation. The head's rate is about 0.01."""
    grading.check_defined(recipe, "my_recipe")
    entry, methods = recommendation.chu_table3_entry, CAPSTONE_METHODS[recommendation.chu_advice]
    method = getattr(recipe, "method", None)
    if method not in methods:
        grading.fail(f"method {method!r} does not follow Chu's Table 3 entry for your data ({entry!r}): Freeze is "
              "method=\"head\" (a new head on the frozen network), Tune is method=\"finetune\".")
    lr = float(recipe.lr)
    if not 0.003 <= lr <= 0.03:
        grading.fail(f"the new head's rate lr={lr:g} is far from the course's 0.01 (notebook 03_learning_rate).")
    if method == "head":
        grading.ok(f"method 'head' for Chu's {entry!r}: the pretrained layers stay frozen")
        return
    n_blocks = int(recommendation.n_blocks)
    if not 1 <= int(recipe.unfreeze) <= n_blocks:
        grading.fail(f"unfreeze={recipe.unfreeze!r}: fine-tune between 1 block and all {n_blocks} (the course "
              "extension's 2, or Chu's Tune: every block).")
    if recipe.backbone_lr is None or not 0.05 <= float(recipe.backbone_lr) / lr <= 0.25:
        grading.fail(f"backbone_lr={recipe.backbone_lr!r} with lr={lr:g}: the pretrained layers train at a lower rate "
              "than the new head, 0.1x in the course (F. Yu, notebook 03) or 0.2x in Chu et al.")
    if recipe.augment is not True:
        grading.fail("augment: fine-tuning on few images per class overfits quickly; turn augmentation on.")
    grading.ok(f"method 'finetune' for Chu's {entry!r}: the last {recipe.unfreeze} blocks at "
        f"{float(recipe.backbone_lr) / lr:.2g}x the head's rate, with augmentation")


def check_exported_prediction(prediction: Any, loaded: Any, image: np.ndarray, classes: list[str], model: Any,
                              preprocess: Any) -> None:
    """``loaded`` is the exported model (raw uint8 images in, the trained ``model``'s probabilities out, to
    1e-4) and ``prediction`` is the class **name** it gives ``image`` (notebook ``09_capstone``, Exercise 3).
    A model loaded from another file, an image preprocessed twice, or a class index fail; the check never
    shows the class."""
    grading.check_defined(loaded, "loaded")
    grading.check_defined(prediction, "new_prediction")
    grading_models.check_model_output(loaded, len(classes))
    batch = np.asarray(image)[None]
    if keras.backend.standardize_dtype(loaded.inputs[0].dtype) != "uint8":
        grading.fail("loaded takes float input: load the file recipes.save_model wrote, which takes raw uint8 images.")
    mine = np.asarray(loaded.predict(batch, verbose=0))[0]
    reference = np.asarray(model.predict(np.asarray(preprocess(batch.astype("float32"))), verbose=0))[0]
    if not np.allclose(mine, reference, atol=1e-4):
        grading.fail("loaded gives other probabilities than the trained model: load the file saved above.")
    if not isinstance(prediction, str) or prediction not in classes:
        grading.fail(f"new_prediction is {prediction!r}; store the class name (an entry of classes), not an index.")
    if prediction != classes[int(np.argmax(mine))]:
        grading.fail(f"new_prediction ({prediction!r}) is not the class the loaded model gives the highest probability: "
              "give it the raw uint8 image (it preprocesses itself) and take classes[argmax].")
    grading.ok("the loaded model takes raw images, matches the trained model, and new_prediction is its top class")

