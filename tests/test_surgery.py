"""Model surgery (course_utils.surgery): new heads, freezing by block/index/name, BatchNorm mode, counts, the one cut."""

from __future__ import annotations

from types import SimpleNamespace

import keras
import numpy as np
import pytest

from course_utils import backbones, surgery
from course_utils.blocks import block_names
from course_utils.small_cnn import small_cnn

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
    blocks = block_names(model)
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
    all_blocks = len(block_names(model))
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


# --------------------------------------------------------------------------------- cutting and heads
SIZE = 32


@pytest.fixture()
def random_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return surgery.replace_head(backbones.load_backbone(weights=None, input_size=SIZE), 3)


@pytest.fixture(scope="module")
def preprocess():
    return backbones.get_preprocess("efficientnet_lite0")


@pytest.fixture(scope="module")
def split():
    rng = np.random.default_rng(1)
    return SimpleNamespace(test=SimpleNamespace(images=rng.integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)))


def test_boundary_is_the_layer_feeding_the_first_trained_block(random_model, lite0_64):
    assert surgery.boundary(random_model, 0) == "avg_pool"  # the new layers start after the pooled features
    assert surgery.boundary(random_model, 2) == "block6d_add"  # block7a and top train
    assert surgery.boundary(random_model, len(block_names(random_model))) is None
    assert surgery.boundary(lite0_64, 0) == "avg_pool"
    with pytest.raises(ValueError, match="between 0 and 18"):
        surgery.boundary(random_model, 19)


def test_cut_composes_to_the_model_and_shares_layers(random_model, split, preprocess):
    prefix, suffix = surgery.cut(random_model, "block6d_add")
    x = preprocess(split.test.images)
    parts = np.asarray(suffix(prefix(x, training=False), training=False))
    np.testing.assert_allclose(parts, np.asarray(random_model(x, training=False)), atol=1e-5)
    assert suffix.get_layer("block7a_project_conv") is random_model.get_layer("block7a_project_conv")
    assert prefix.output.shape == random_model.get_layer("block6d_add").output.shape


def test_cut_at_a_blocks_boundary_leaves_that_block_in_the_suffix(random_model, split, preprocess):
    prefix, suffix = surgery.cut(random_model, surgery.boundary(random_model, 2))  # block7a and top train
    x = preprocess(split.test.images[:4])
    whole = np.asarray(random_model(x, training=False))
    parts = np.asarray(suffix(prefix(x, training=False), training=False))
    np.testing.assert_allclose(parts, whole, atol=1e-5)
    assert suffix.get_layer("top_conv") is random_model.get_layer("top_conv")
    assert "block7a_project_conv" in {layer.name for layer in suffix.layers}
    assert "block6d_project_conv" not in {layer.name for layer in suffix.layers}
    with pytest.raises(ValueError, match="train_last must be between 0 and"):
        surgery.boundary(random_model, 99)


def test_split_before_new_layers_also_works_on_a_suffix(random_model, split, preprocess):
    _, suffix = surgery.cut(random_model, surgery.boundary(random_model, 1))  # only top trains
    feats_part, new_part = surgery.split_before_new_layers(suffix)
    assert [layer.name for layer in new_part.layers[1:]] == ["head_dropout", "head"]
    assert feats_part.output.shape[-1] == 1280
    with pytest.raises(ValueError, match="no layers added"):
        surgery.split_before_new_layers(backbones.load_backbone(weights=None, input_size=SIZE))


def test_head_model_matches_replace_head_and_copy_new_layers(random_model, split, preprocess):
    base = backbones.load_backbone(weights=None, input_size=SIZE)
    full = surgery.replace_head(base, 3, extension_units=(16,), seed=5)
    head = surgery.head_model(1280, 3, extension_units=(16,), seed=5)
    for name in ("extension_1", "head"):  # same seeded initial weights
        for a, b in zip(full.get_layer(name).get_weights(), head.get_layer(name).get_weights()):
            np.testing.assert_allclose(a, b)
    surgery.freeze(full)
    assert surgery.count_params(full)["trainable"] == surgery.count_params(head)["trainable"] == 1280 * 16 + 16 + 16 * 3 + 3
    head.get_layer("head").set_weights([w + 1.0 for w in head.get_layer("head").get_weights()])
    assert surgery.copy_new_layers(head, full) == ["extension_1", "head"]
    x = preprocess(split.test.images[:4])
    feats = keras.Model(full.inputs, full.get_layer("avg_pool").output)(x, training=False)
    np.testing.assert_allclose(np.asarray(head(feats, training=False)), np.asarray(full(x, training=False)),
                               atol=1e-5)


def test_batchnorm_stats_and_drift(random_model):
    before = surgery.batchnorm_moving_stats(random_model)
    assert "top_bn" in before and "stem_bn" in before and len(before) == 49
    mean, var = before["top_bn"]
    after = dict(before)
    after["top_bn"] = (mean + np.sqrt(var + 1e-3), var)
    drift = surgery.batchnorm_drift(before, after)
    assert drift["top_bn"] == pytest.approx(1.0, rel=1e-5)
    assert drift["stem_bn"] == 0.0


def test_params_by_block_sums_to_model_and_reports_new_head():
    backbone = small_cnn(32, 3, widths=(4, 8), seed=0)
    model = surgery.replace_head(backbone, 5)
    surgery.freeze(model)
    rows = surgery.params_by_block(model)
    assert sum(r["params"] for r in rows) == model.count_params()
    assert [r["block"] for r in rows][-1] == "new head"
    assert rows[-1]["trainable"] == 8 * 5 + 5
    assert sum(r["trainable"] for r in rows) == surgery.count_params(model)["trainable"]
