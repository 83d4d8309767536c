"""Training and evaluation (course_utils.training, features, recipes): rates, schedules, probes, reports."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from course_utils import features, recipes, training
from course_utils.data import ImageSet


def _linear_model(name_a="pretrained", name_b="head"):
    inputs = keras.Input((3,))
    x = keras.layers.Dense(3, use_bias=False, name=name_a, kernel_initializer="ones")(inputs)
    out = keras.layers.Dense(1, use_bias=False, name=name_b, kernel_initializer="ones")(x)
    return keras.Model(inputs, out)


def test_layerwise_sgd_scales_each_layers_rate():
    """One SGD step without momentum moves each layer by lr * factor * gradient."""
    model = _linear_model()
    opt = training.LayerwiseSGD(learning_rate=0.1, momentum=0.0, multipliers={"pretrained": 0.1})
    model.compile(optimizer=opt, loss="mse")
    x, y = np.ones((1, 3), "float32"), np.zeros((1, 1), "float32")
    twin = _linear_model()
    twin.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.0), loss="mse")
    model.train_on_batch(x, y)
    twin.train_on_batch(x, y)
    start = np.ones((3, 3))
    moved = start - model.get_layer("pretrained").get_weights()[0]
    moved_twin = start - twin.get_layer("pretrained").get_weights()[0]
    np.testing.assert_allclose(moved, 0.1 * moved_twin, rtol=1e-5)
    np.testing.assert_allclose(model.get_layer("head").get_weights()[0], twin.get_layer("head").get_weights()[0])


def test_make_optimizer_uses_plain_sgd_for_one_rate_and_layerwise_for_two():
    model = _linear_model("stem_conv", "head")
    assert type(training.make_optimizer(model, 0.01)) is keras.optimizers.SGD
    opt = training.make_optimizer(model, 0.01, backbone_lr=0.001)
    assert isinstance(opt, training.LayerwiseSGD)
    assert opt.multipliers == {"stem_conv": pytest.approx(0.1)}
    with pytest.raises(ValueError, match="positive"):
        training.make_optimizer(model, 0.0)


def test_layerwise_sgd_survives_save_and_load(tmp_path):
    model = _linear_model("stem_conv", "head")
    training.compile_classifier(model, 0.01, backbone_lr=0.001)
    model.fit(np.ones((4, 3)), np.zeros(4), verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.optimizer.multipliers == {"stem_conv": pytest.approx(0.1)}


@pytest.mark.parametrize("n, batch, steps, epochs, expected", [
    (100, 32, None, 3, (3, 4)),
    (100, 32, 8, None, (2, 4)),
    (100, 32, 1, None, (1, 1)),
    (10, 32, 50, None, (50, 1)),
])
def test_schedule(n, batch, steps, epochs, expected):
    n_epochs, per_epoch = training.schedule(n, batch, steps, epochs)
    assert (n_epochs, per_epoch) == expected
    if steps:
        assert steps <= n_epochs * per_epoch < steps + n_epochs


def test_schedule_needs_exactly_one_budget():
    with pytest.raises(ValueError, match="exactly one"):
        training.schedule(10, 2, 5, 5)
    with pytest.raises(ValueError, match="exactly one"):
        training.schedule(10, 2, None, None)


def test_classification_report_counts():
    rep = training.classification_report(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), ["a", "b", "c"])
    assert rep["accuracy"] == pytest.approx(0.6)
    assert rep["per_class_accuracy"] == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert rep["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert rep["n_test"] == 5


@pytest.mark.parametrize("method, standardize", [("logreg", False), ("logreg", True), ("svm", False)])
def test_probe_folds_into_one_dense_layer(method, standardize):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype("float32") + np.repeat(np.eye(3, 8) * 3, 20, axis=0)
    y = np.repeat(np.arange(3), 20)
    probe = features.fit_probe(x, y, method, standardize=standardize)
    kernel, bias = recipes.probe_to_dense(probe, 3)
    logits = x @ kernel + bias
    np.testing.assert_array_equal(logits.argmax(1), probe.predict(x))
    if method == "logreg":
        probs = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose(probs / probs.sum(1, keepdims=True), probe.predict_proba(x), atol=1e-4)


def test_choose_c_uses_training_folds_only():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 5))
    y = np.repeat(np.arange(3), 10)
    assert features.choose_c(x, y) in (0.01, 0.1, 1.0, 10.0)
    with pytest.raises(ValueError, match="2 classes"):
        features.fit_probe(x, np.zeros(30, int))


def _tiny_set(images, labels, prefix):
    return ImageSet(images, labels, ["a", "b"], [f"{prefix}{i}" for i in range(len(labels))])


def test_feature_cache_is_keyed_by_the_exact_image_list(lite0_64, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, size=(4, 64, 64, 3), dtype=np.uint8)
    first = features.extract_features(_tiny_set(imgs, np.array([0, 0, 1, 1]), "x"), model=lite0_64)
    assert first.shape == (4, 1280) and len(list((tmp_path / "features").glob("*.npz"))) == 1
    again = features.extract_features(_tiny_set(imgs, np.array([0, 0, 1, 1]), "x"), model=lite0_64)
    np.testing.assert_array_equal(first, again)
    assert len(list((tmp_path / "features").glob("*.npz"))) == 1  # a cache hit, no new file
    features.extract_features(_tiny_set(imgs[:3], np.array([0, 0, 1]), "x"), model=lite0_64)
    assert len(list((tmp_path / "features").glob("*.npz"))) == 2  # another image list, another entry
    fused = features.extract_features(_tiny_set(imgs, np.array([0, 0, 1, 1]), "x"), model=lite0_64,
                                      layers=["block6a_expand_activation", "avg_pool"])
    assert fused.shape == (4, lite0_64.get_layer("block6a_expand_activation").output.shape[-1] + 1280)


def test_recipe_rejects_unknown_method():
    with pytest.raises(ValueError, match="Unknown method"):
        recipes.Recipe(method="magic")


@pytest.mark.parametrize("method", ["logreg", "head", "finetune"])
def test_recipes_learn_flowers(flowers_dir, method):
    """Every method beats chance (0.2) clearly on 10 photos per class at 96 px."""
    from course_utils.data import load_dataset

    split = load_dataset(str(flowers_dir), image_size=96, per_class=10, test_per_class=10, seed=0)
    model, report = recipes.run(split, recipes.Recipe(method=method, epochs=1 if method == "finetune" else None))
    assert report["n_train"] == 50 and report["n_test"] == 50
    assert report["accuracy"] > 0.5, report
    assert model.outputs[0].shape[-1] == 5


def test_non_finite_losses_or_outputs_are_a_divergence_not_an_accuracy(photos):
    """Issue 13: a diverged run has no accuracy (``recipes.run`` and the sweep store report it as diverged)."""
    training.check_finite([0.7, 0.5], "the loss")  # finite: nothing happens
    with pytest.raises(training.DivergedError, match=r"the loss became nan \(at 2 of 3\); lower the learning rate"):
        training.check_finite([0.7, float("nan"), 0.1], "the loss")
    head = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    head.layers[0].set_weights([np.full((3, 2), np.inf, "float32"), np.zeros(2, "float32")])
    images = ImageSet(np.ones((2, 3)), np.array([0, 1]), ["a", "b"], ["x", "y"])
    with pytest.raises(training.DivergedError, match="the model's outputs on the test images became nan"):
        training.evaluate(head, images, None)
    report = training.diverged_report(["a", "b"], 2, "why")
    assert report["diverged"] is True and report["accuracy"] is None
    with pytest.raises(ValueError, match="positive and finite"):
        training.make_optimizer(head, float("nan"))
