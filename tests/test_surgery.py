"""Model surgery (course_utils.surgery): new heads, freezing by block/index/name, BatchNorm mode, counts."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from course_utils import backbones, surgery

LITE0_FEATURES = 1280


@pytest.fixture()
def model(lite0_64):
    return surgery.replace_head(lite0_64, 5)


def test_replace_head_drops_the_imagenet_softmax(model, lite0_64):
    names = [layer.name for layer in model.layers]
    assert "predictions" not in names and names[-1] == surgery.HEAD_NAME
    assert model.outputs[0].shape[-1] == 5
    # the backbone's layers are shared, not copied
    assert model.get_layer("top_conv") is lite0_64.get_layer("top_conv")
    probs = model.predict(np.zeros((2, 64, 64, 3), "float32"), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_head_only_trains_exactly_the_new_dense(model):
    counts = surgery.freeze(model)
    assert counts["trainable"] == LITE0_FEATURES * 5 + 5
    assert counts["total"] == 4_694_024 - (LITE0_FEATURES * 1000 + 1000) + LITE0_FEATURES * 5 + 5
    assert surgery.trainable_layers(model) == [surgery.HEAD_NAME]


def test_extension_layers_sit_before_the_head(lite0_64):
    model = surgery.replace_head(lite0_64, 3, extension_units=(256, 64))
    counts = surgery.freeze(model)
    assert counts["trainable"] == (LITE0_FEATURES * 256 + 256) + (256 * 64 + 64) + (64 * 3 + 3)
    assert surgery.trainable_layers(model) == ["extension_1", "extension_2", surgery.HEAD_NAME]


def test_train_last_blocks_counts_blocks_from_the_top(model):
    blocks = backbones.block_names(model)
    assert blocks[0] == "stem" and blocks[-1] == "top" and "block7a" in blocks
    surgery.freeze(model, train_last=2)
    trainable = set(surgery.trainable_layers(model))
    assert {"top_conv", "block7a_project_conv", surgery.HEAD_NAME} <= trainable
    assert "block6d_project_conv" not in trainable and "stem_conv" not in trainable
    # BatchNorm stays frozen (inference mode) by default
    assert not model.get_layer("top_bn").trainable
    surgery.freeze(model, train_last=2, bn="train")
    assert model.get_layer("top_bn").trainable and not model.get_layer("block6d_bn").trainable


def test_tune_all_vs_freeze_all(model):
    all_blocks = len(backbones.block_names(model))
    everything = surgery.freeze(model, train_last=all_blocks, bn="train")
    assert everything["non_trainable"] == sum(
        int(np.prod(w.shape)) for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
        for w in layer.weights if "moving" in w.path)
    head_only = surgery.freeze(model, train_last=0)
    assert head_only["trainable"] < everything["trainable"]


def test_freeze_upto_index_and_name_agree(model):
    by_name = surgery.freeze(model, upto="block6a_expand_conv")
    index = [layer.name for layer in model.layers].index("block6a_expand_conv")
    by_index = surgery.freeze(model, upto=index)
    assert by_name == by_index
    assert not model.get_layer("block6a_expand_conv").trainable
    assert model.get_layer("block6a_dwconv").trainable


@pytest.mark.parametrize("kwargs, words", [
    ({"train_last": 99}, "between 0 and"),
    ({"upto": "no_such_layer"}, "No layer named"),
    ({"upto": 10_000}, "out of range"),
    ({"train_last": 1, "upto": 3}, "not both"),
    ({"bn": "batch"}, "bn must be"),
])
def test_freeze_rejects_bad_arguments_clearly(model, kwargs, words):
    with pytest.raises(ValueError, match=words):
        surgery.freeze(model, **kwargs)


def test_one_class_is_refused(lite0_64):
    with pytest.raises(ValueError, match="at least 2 classes"):
        surgery.replace_head(lite0_64, 1)


def test_reinitialize_resets_only_the_chosen_blocks():
    # a private backbone: reinitialize changes weights in place
    model = surgery.replace_head(backbones.load_backbone("efficientnet_lite0", input_size=64), 5)
    before_top = model.get_layer("top_conv").get_weights()[0].copy()
    before_b6 = model.get_layer("block6a_expand_conv").get_weights()[0].copy()
    reset = surgery.reinitialize(model, ["top"])
    assert "top_conv" in reset and "top_bn" in reset
    assert not np.allclose(model.get_layer("top_conv").get_weights()[0], before_top)
    np.testing.assert_array_equal(model.get_layer("block6a_expand_conv").get_weights()[0], before_b6)
    gamma, beta, mean, var = model.get_layer("top_bn").get_weights()
    assert np.all(gamma == 1) and np.all(beta == 0) and np.all(mean == 0) and np.all(var == 1)
    with pytest.raises(ValueError, match="Unknown blocks"):
        surgery.reinitialize(model, ["block99z"])
