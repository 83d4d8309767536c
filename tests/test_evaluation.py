"""course_utils.evaluation: the one forward pass."""

from __future__ import annotations

import logging

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
