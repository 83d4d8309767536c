"""Tests for the package functions added for notebooks 04_freezing, 05_bottleneck_features, 06_extension_layers.

Small and offline: a randomly initialised EfficientNet-Lite0 at 32 px and random images.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import keras
import numpy as np
import pytest

from course_utils import backbones, features, plots, surgery, training
from course_utils.data import ImageSet, Split, stratified_sample

SIZE = 32
CLASSES = ["a", "b", "c"]


def _image_set(per_class: int, seed: int) -> ImageSet:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES)), per_class).astype("int64")
    images = rng.integers(0, 256, (len(labels), SIZE, SIZE, 3), dtype=np.uint8)
    images[..., 0] = np.clip(images[..., 0].astype(int) // 4 + 80 * labels[:, None, None], 0, 255)  # learnable
    return ImageSet(images, labels, list(CLASSES), [f"img{seed}-{i}" for i in range(len(labels))])


@pytest.fixture(scope="module")
def split() -> Split:
    return Split(_image_set(6, 0), _image_set(3, 1), "synthetic")


@pytest.fixture(scope="module")
def preprocess():
    return backbones.get_preprocess("efficientnet_lite0")


@pytest.fixture()
def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    base = backbones.load_backbone(weights=None, input_size=SIZE)
    return surgery.replace_head(base, len(CLASSES))


# ----------------------------------------------------------------------------- surgery


def test_split_at_block_composes_to_the_model_and_shares_layers(model, split, preprocess):
    prefix, suffix = surgery.split_at_block(model, "block7a")
    x = preprocess(split.test.images[:4])
    whole = np.asarray(model(x, training=False))
    parts = np.asarray(suffix(prefix(x, training=False), training=False))
    np.testing.assert_allclose(parts, whole, atol=1e-5)
    assert suffix.get_layer("top_conv") is model.get_layer("top_conv")
    assert "block6d_project_conv" not in {layer.name for layer in suffix.layers}
    with pytest.raises(ValueError, match="Unknown block"):
        surgery.split_at_block(model, "block9z")
    with pytest.raises(ValueError, match="first block"):
        surgery.split_at_block(model, "stem")


def test_split_before_new_layers_also_works_on_a_suffix(model, split, preprocess):
    _, suffix = surgery.split_at_block(model, "top")
    feats_part, new_part = surgery.split_before_new_layers(suffix)
    assert [layer.name for layer in new_part.layers[1:]] == ["head_dropout", "head"]
    assert feats_part.output.shape[-1] == 1280
    with pytest.raises(ValueError, match="no layers added"):
        surgery.split_before_new_layers(backbones.load_backbone(weights=None, input_size=SIZE))


def test_head_model_matches_replace_head_and_copy_new_layers(model, split, preprocess):
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


def test_batchnorm_stats_and_drift(model):
    before = surgery.batchnorm_moving_stats(model)
    assert "top_bn" in before and "stem_bn" in before and len(before) == 49
    mean, var = before["top_bn"]
    after = dict(before)
    after["top_bn"] = (mean + np.sqrt(var + 1e-3), var)
    drift = surgery.batchnorm_drift(before, after)
    assert drift["top_bn"] == pytest.approx(1.0, rel=1e-5)
    assert drift["stem_bn"] == 0.0


# ----------------------------------------------------------------------------- training


def test_activations_and_fit_arrays(model, split, preprocess):
    prefix, suffix = surgery.split_at_block(model, "top")
    x = training.activations(prefix, split.train, preprocess)
    assert x.shape[0] == len(split.train) and x.dtype == np.float32
    np.testing.assert_allclose(training.activations(suffix, x[:3]), suffix.predict(x[:3], verbose=0), atol=1e-5)
    with pytest.raises(ValueError, match="preprocess"):
        training.activations(prefix, split.train)
    surgery.freeze(model)
    history = training.fit_arrays(suffix, x, split.train.labels, lr=0.01, steps=6, batch_size=6)
    assert len(history.history["loss"]) == 2  # 18 images, 6 per batch: 3 steps a pass, 2 passes


def test_freeze_depth_sweep_rows_and_bn_modes(model, split, preprocess):
    start = [w.copy() for w in model.get_weights()]
    rows = training.freeze_depth_sweep(model, split, preprocess, train_last=(0, 2, None), epochs=1,
                                       batch_size=6, head_epochs=1)
    assert [r["train_last"] for r in rows] == [0, 2, 18]
    assert [r["path"] for r in rows] == ["cached", "cached", "images"]
    assert rows[0]["trainable"] == 1280 * 3 + 3 and rows[0]["first_trained"] == "(new layers only)"
    assert rows[1]["first_trained"] == "block7a" and rows[0]["trainable"] < rows[1]["trainable"] < rows[2]["trainable"]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    assert all(max(r["bn_drift"].values()) == 0.0 for r in rows)  # BatchNorm in inference mode
    # the backbone is back to its pretrained weights (only the warmed-up head differs)
    head_vars = {id(v) for v in model.get_layer("head").weights}
    for var, old in zip(model.weights, start):
        if id(var) not in head_vars:
            np.testing.assert_array_equal(np.asarray(var), old)
    rows = training.freeze_depth_sweep(model, split, preprocess, train_last=(1,), epochs=1, batch_size=3,
                                       bn="train")
    assert rows[0]["bn_drift"]["top_bn"] > 0 and rows[0]["bn_drift"]["block7a_project_bn"] == 0.0
    with pytest.raises(ValueError, match="between 0 and 18"):
        training.freeze_depth_sweep(model, split, preprocess, train_last=(19,))


def test_batchnorm_mode_comparison_scales_lr_and_keeps_the_model(model, split, preprocess):
    start = [w.copy() for w in model.get_weights()]
    rows = training.batchnorm_mode_comparison(model, split, preprocess, train_last=1, batch_sizes=(3, 6),
                                              epochs=1, lr=0.06, backbone_lr=0.006, reference_batch=6, seeds=(0, 1))
    assert [(r["batch_size"], r["bn"], r["seed"]) for r in rows] == [
        (3, "inference", 0), (3, "inference", 1), (3, "train", 0), (3, "train", 1),
        (6, "inference", 0), (6, "inference", 1), (6, "train", 0), (6, "train", 1)]
    assert rows[0]["lr"] == pytest.approx(0.03) and rows[0]["backbone_lr"] == pytest.approx(0.003)
    assert rows[0]["steps"] == 6 and rows[-1]["steps"] == 3  # 18 training images
    assert all(max(r["bn_drift"].values()) == 0.0 for r in rows if r["bn"] == "inference")
    assert all(r["bn_drift"]["top_bn"] > 0.0 for r in rows if r["bn"] == "train")
    for var, old in zip(model.weights, start):
        np.testing.assert_array_equal(np.asarray(var), old)
    with pytest.raises(ValueError, match="between 1 and 17"):
        training.batchnorm_mode_comparison(model, split, preprocess, train_last=0)


def test_extension_finetune_comparison_restores_the_backbone(split, preprocess):
    keras.utils.set_random_seed(0)
    base = backbones.load_backbone(weights=None, input_size=SIZE)
    start = [w.copy() for w in base.get_weights()]
    rows = training.extension_finetune_comparison(base, split, preprocess, {"plain": (), "ext": (8,)}, train_last=1,
                                                  epochs=1, batch_size=6, head_epochs=1)
    assert list(rows) == ["plain", "ext"] and rows["ext"]["extension_units"] == [8]
    assert rows["ext"]["trainable"] - rows["plain"]["trainable"] == (1280 * 8 + 8 + 8 * 3 + 3) - (1280 * 3 + 3)
    assert all(r["path"] == "cached" and 0.0 <= r["accuracy"] <= 1.0 for r in rows.values())
    for var, old in zip(base.get_weights(), start):
        np.testing.assert_array_equal(var, old)
    with pytest.raises(ValueError, match="at least one"):
        training.extension_finetune_comparison(base, split, preprocess, {})


def test_per_class_finetune_sweep_shape(model, split, preprocess):
    accs = training.per_class_finetune_sweep(model, split, preprocess, per_class=[2, 4], seeds=[0, 1],
                                             train_last=1, steps=2, batch_size=4)
    assert np.asarray(accs).shape == (2, 2)
    assert all(0.0 <= a <= 1.0 for row in accs for a in row)


def test_train_head_on_features_learns_separable_features():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, (3, 20))
    y = np.repeat(np.arange(3), 20)
    x = (centers[y] + rng.normal(0, 0.5, (60, 20))).astype("float32")
    head, report = training.train_head_on_features(x, y, x, y, CLASSES, extension_units=(8,), epochs=30, lr=0.05,
                                                   batch_size=16, seed=1)
    assert report["accuracy"] > 0.9
    assert report["trainable_params"] == 20 * 8 + 8 + 8 * 3 + 3 == surgery.count_params(head)["trainable"]
    assert report["extension_units"] == [8] and report["seed"] == 1


def test_extension_sweep_restarts_every_seed_from_fresh_weights():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, (3, 20))
    y = np.repeat(np.arange(3), 20)
    x = (centers[y] + rng.normal(0, 0.5, (60, 20))).astype("float32")
    out = training.extension_sweep(x, y, x, y, CLASSES, {"plain": (), "ext": (8,)}, seeds=[0, 1, 0], epochs=20,
                                   lr=0.05, batch_size=16)
    assert list(out) == ["plain", "ext"] and [r["seed"] for r in out["ext"]] == [0, 1, 0]
    assert out["plain"][0]["trainable_params"] == 20 * 3 + 3 and out["ext"][0]["extension_units"] == [8]
    assert all(r["accuracy"] > 0.9 for reports in out.values() for r in reports)
    # seed 0 again after seed 1: the optimizer state and weights were reset, so the loss curve starts afresh
    assert out["ext"][2]["train_accuracy"] == pytest.approx(out["ext"][0]["train_accuracy"], abs=0.05)


# ----------------------------------------------------------------------------- features and plots


def test_probe_sweep_uses_stratified_subsets():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    x = rng.normal(0, 1, (30, 5)) + 4 * np.eye(3, 5)[y]
    out = features.probe_sweep(x, y, x, y, per_class=[2, 5], seeds=[0, 1], methods=("svm", "logreg"))
    assert set(out) == {"svm", "logreg"} and np.asarray(out["svm"]).shape == (2, 2)
    assert min(out["logreg"][1]) > 0.8
    assert len(stratified_sample(y, 2, 0)) == 6


def test_freeze_depth_and_per_layer_plots():
    rows = [{"train_last": k, "first_trained": b, "trainable": p, "accuracy": a}
            for k, b, p, a in [(0, "(new layers only)", 10, 0.7), (2, "block7a", 1000, 0.8), (2, "block7a", 1000, 0.9)]]
    ax = plots.freeze_depth(rows, n_test=200)
    assert len(ax.get_xticks()) == 2
    low, high = ax.get_ylim()
    assert high - low >= 0.2 and low <= 0.7 - 2 * np.sqrt(0.7 * 0.3 / 200)  # the noise band is inside
    ax = plots.per_layer({"train": {"a_bn": 0.1, "b_bn": 0.0}, "inference": {"a_bn": 0.0, "b_bn": 0.0}}, "drift")
    assert len(ax.get_lines()) == 2
    matplotlib.pyplot.close("all")
