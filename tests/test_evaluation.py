"""course_utils.evaluation: the one forward pass, reports, divergence, and the one noise rule."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from course_utils import evaluation
from course_utils.quiet import keras


@pytest.fixture(scope="module")
def two_output_model():
    inputs = keras.Input((4, 4, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    probs = keras.layers.Dense(3, activation="softmax", name="probs")(pooled)
    return keras.Model(inputs, [pooled, probs])


def test_predict_equals_keras_predict_for_any_batch_size(lite0_64):
    x = np.random.default_rng(0).random((7, 64, 64, 3)).astype("float32") * 2 - 1
    expected = lite0_64.predict(x, verbose=0)
    for batch_size in (1, 3, 64):
        np.testing.assert_allclose(evaluation.predict(lite0_64, x, batch_size=batch_size), expected, atol=1e-5)


def test_preprocess_is_applied_per_batch(two_output_model):
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    pooled = evaluation.predict_all(two_output_model, images, preprocess=lambda b: b / 255.0, batch_size=1)[0]
    np.testing.assert_allclose(pooled, images.reshape(2, 16, 3).mean(axis=1) / 255.0, atol=1e-6)


def test_several_outputs_come_back_as_a_list_and_one_as_an_array(two_output_model, lite0_64):
    x = np.zeros((5, 4, 4, 3), "float32")
    pooled, probs = evaluation.predict(two_output_model, x, batch_size=2)
    assert pooled.shape == (5, 3) and probs.shape == (5, 3) and pooled.dtype == probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert isinstance(evaluation.predict(lite0_64, np.zeros((1, 64, 64, 3), "float32")), np.ndarray)


def test_no_images_give_empty_outputs_of_the_right_shape(two_output_model):
    pooled, probs = evaluation.predict_all(two_output_model, np.zeros((0, 4, 4, 3), "float32"))
    assert pooled.shape == (0, 3) and probs.shape == (0, 3)


def test_batch_size_below_one_is_refused(two_output_model):
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        evaluation.predict(two_output_model, np.zeros((1, 4, 4, 3), "float32"), batch_size=0)


def test_many_new_models_trace_nothing(caplog):
    """model.predict traces a tf.function per model; six new models in a row made TensorFlow warn."""
    x = np.zeros((3, 4, 4, 3), "float32")
    with caplog.at_level(logging.WARNING):
        for units in range(1, 7):
            model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(units)])
            assert evaluation.predict(model, x, batch_size=2).shape == (3, units)
    assert "retracing" not in caplog.text


def test_format_report_prints_accuracy_per_class_and_confusion_matrix():
    report = {"classes": ["cat", "dog"], "accuracy": 0.75, "n_test": 4, "n_train": 8, "seconds": 1.5,
              "per_class_accuracy": {"cat": 1.0, "dog": 0.5}, "confusion_matrix": [[2, 0], [1, 1]]}
    assert evaluation.format_report(report).splitlines() == [
        "test accuracy: 0.750  (4 test images, 8 train, 1.5 s)",
        "per-class accuracy:",
        "  cat  1.000",
        "  dog  0.500",
        "confusion matrix (rows: true, columns: predicted):",
        "         cat   dog",
        "  cat      2     0",
        "  dog      1     1",
    ]


def test_format_report_of_a_diverged_run_has_no_accuracy():
    text = evaluation.format_report({"diverged": True, "reason": "the loss became nan"})
    assert text == "the loss became nan (so there is no test accuracy)"



# ------------------------------------------------------------------------------------------ reports (H3)


def test_classification_report_counts():
    rep = evaluation.classification_report(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), ["a", "b", "c"])
    assert rep["accuracy"] == pytest.approx(0.6)
    assert rep["per_class_accuracy"] == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert rep["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert rep["n_test"] == 5
    empty = evaluation.classification_report(np.array([0]), np.array([0]), ["a", "b"])
    assert np.isnan(empty["per_class_accuracy"]["b"]) and empty["confusion_matrix"] == [[1, 0], [0, 0]]


def test_evaluate_reports_a_model_on_an_image_set():
    head = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    head.layers[0].set_weights([np.array([[1, -1]] * 3, "float32"), np.zeros(2, "float32")])
    images = SimpleNamespace(images=np.array([[1, 1, 1], [-1, -1, -1], [2, 0, 0]], "float32"),
                             labels=np.array([0, 1, 1]), classes=["a", "b"])
    report = evaluation.evaluate(head, images, None)
    assert report["confusion_matrix"] == [[1, 0], [1, 1]] and report["accuracy"] == pytest.approx(2 / 3)


def test_validation_metrics_are_keras_loss_and_accuracy():
    head = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    head.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = np.random.default_rng(0).normal(size=(8, 3)).astype("float32"), np.array([0, 1] * 4)
    loss, acc = head.evaluate(x, y, verbose=0)
    assert evaluation.validation_metrics(head, x, y) == {"val_loss": pytest.approx(loss, rel=1e-5),
                                                          "val_accuracy": pytest.approx(acc)}


def test_mean_std_is_the_population_spread():
    assert evaluation.mean_std([0.5, 0.7]) == (pytest.approx(0.6), pytest.approx(0.1), 2)
    mean, std, n = evaluation.mean_std([])
    assert np.isnan(mean) and np.isnan(std) and n == 0


def test_non_finite_losses_or_outputs_are_a_divergence_not_an_accuracy():
    """Issue 13: a diverged run has no accuracy (``recipes.run`` and the sweep store report it as diverged)."""
    evaluation.check_finite([0.7, 0.5], "the loss")  # finite: nothing happens
    with pytest.raises(evaluation.DivergedError, match=r"the loss became nan \(at 2 of 3\); lower the learning rate"):
        evaluation.check_finite([0.7, float("nan"), 0.1], "the loss")
    head = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    head.layers[0].set_weights([np.full((3, 2), np.inf, "float32"), np.zeros(2, "float32")])
    images = SimpleNamespace(images=np.ones((2, 3)), labels=np.array([0, 1]), classes=["a", "b"])  # an ImageSet
    with pytest.raises(evaluation.DivergedError, match="the model's outputs on the test images became nan"):
        evaluation.evaluate(head, images, None)
    report = evaluation.diverged_report(["a", "b"], 2, "why")
    assert report["diverged"] is True and report["accuracy"] is None


# ------------------------------------------------------------------------------------------ the one noise rule (H4)


def _paired(n_images: int, only_a: int, only_b: int, both: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness with exactly the given discordant and concordant counts."""
    a = np.zeros(n_images, bool)
    b = np.zeros(n_images, bool)
    a[:only_a] = True
    b[only_a:only_a + only_b] = True
    a[only_a + only_b:only_a + only_b + both] = b[only_a + only_b:only_a + only_b + both] = True
    return a, b


def test_mcnemar_p_is_the_exact_binomial_tail():
    assert evaluation.mcnemar_p(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert evaluation.mcnemar_p(2, 0) == pytest.approx(0.5)
    assert evaluation.mcnemar_p(0, 0) == 1.0
    assert evaluation.mcnemar_p(5, 5) == 1.0


def test_compare_calls_a_known_significant_paired_difference_significant():
    a, b = _paired(200, only_a=30, only_b=2, both=140)  # A 0.85, B 0.71, 28 more images right
    result = evaluation.compare(a, b, names=("tune", "freeze"))
    assert (result.acc_a, result.acc_b, result.diff) == pytest.approx((0.85, 0.71, 0.14))
    assert result.test == "exact McNemar" and result.n_images == 200 and result.n_seeds == 1
    assert result.p_value == pytest.approx(evaluation.mcnemar_p(30, 2)) and result.p_value < 1e-6
    assert result.verdict == "tune better" and result.significant
    assert 0 < result.ci_low < 0.14 < result.ci_high
    assert evaluation.compare(b, a, names=("freeze", "tune")).verdict == "tune better"


@pytest.mark.parametrize("only_a, only_b", [(2, 0), (12, 10)])
def test_compare_a_two_image_gap_on_200_images_is_within_noise(only_a, only_b):
    a, b = _paired(200, only_a=only_a, only_b=only_b, both=150)
    result = evaluation.compare(a, b)
    assert result.diff == pytest.approx(0.01)
    assert result.p_value == pytest.approx(evaluation.mcnemar_p(only_a, only_b)) and result.p_value > 0.3
    assert result.verdict == "within noise" and not result.significant
    assert result.ci_low < 0 < result.ci_high or result.ci_low == 0


def test_compare_over_seeds_bootstraps_images_and_seeds():
    rng = np.random.default_rng(0)
    b = rng.random((3, 200)) < 0.7
    big = evaluation.compare(b | (rng.random((3, 200)) < 0.5), b)  # A fixes about half of B's errors
    assert big.test == "paired bootstrap" and big.n_seeds == 3 and big.verdict == "A better"
    assert big.p_value == pytest.approx(2 / 10_001)  # no bootstrap replicate reaches 0
    small = b.copy()
    small[:, :2] = True  # two images at most
    assert evaluation.compare(small, b).verdict == "within noise"
    every_seed, one_seed = b.copy(), b.copy()
    wrong = [np.flatnonzero(~row) for row in b]
    for row, idx in enumerate(wrong):
        every_seed[row, idx[:10]] = True  # 10 more images right in each seed
    one_seed[0, wrong[0][:30]] = True  # the same mean gain, all in one seed
    assert evaluation.compare(one_seed, b).diff == pytest.approx(evaluation.compare(every_seed, b).diff)
    assert evaluation.compare(one_seed, b).p_value > evaluation.compare(every_seed, b).p_value


def test_compare_is_deterministic_for_a_seed_and_checks_its_input():
    rng = np.random.default_rng(1)
    a, b = rng.random((2, 200)) < 0.8, rng.random((2, 200)) < 0.75
    first, again = evaluation.compare(a, b, seed=3), evaluation.compare(a, b, seed=3)
    assert first == again and str(first) == str(again)
    assert str(first).startswith("A 0.") and "paired bootstrap, 200 images x 2 seeds" in str(first)
    with pytest.raises(ValueError, match="same test images"):
        evaluation.compare(a, b[:, :100])
    with pytest.raises(ValueError, match="0/1"):
        evaluation.compare(a * 2, b)
    with pytest.raises(ValueError, match="n_seeds, n_images"):
        evaluation.compare(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))
