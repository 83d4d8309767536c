"""Tests for course_utils.training (notebooks 01, 03, 04): per-layer rates (SGD, Adam), schedules, the step loop."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from course_utils import training
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


def _one_step_moves(optimizer) -> tuple[np.ndarray, np.ndarray]:
    model = _linear_model()
    model.compile(optimizer=optimizer, loss="mse")
    model.train_on_batch(np.ones((1, 3), "float32"), np.zeros((1, 1), "float32"))
    return (1 - model.get_layer("pretrained").get_weights()[0], 1 - model.get_layer("head").get_weights()[0])


def test_layerwise_adam_scales_each_layers_rate_exactly():
    """Adam's first step moves every weight by about lr (its update is m/sqrt(v) ~ sign of the gradient)."""
    pretrained, head = _one_step_moves(training.LayerwiseAdam(0.01, multipliers={"pretrained": 0.1}))
    plain_pretrained, plain_head = _one_step_moves(keras.optimizers.Adam(0.01))
    np.testing.assert_allclose(pretrained, 0.1 * plain_pretrained, rtol=1e-5)
    np.testing.assert_allclose(head, plain_head, rtol=1e-6)
    np.testing.assert_allclose(plain_head, 0.01, rtol=1e-3)


def test_make_optimizer_builds_adam_and_schedules():
    model = _linear_model("stem_conv", "head")
    assert type(training.make_optimizer(model, 0.001, kind="adam")) is keras.optimizers.Adam
    adam = training.make_optimizer(model, 0.001, backbone_lr=0.0002, kind="adam")
    assert isinstance(adam, training.LayerwiseAdam) and adam.multipliers == {"stem_conv": pytest.approx(0.2)}
    stepped = training.make_optimizer(model, 0.1, schedule=training.Schedule("step", 0.1, 10), steps=30)
    assert stepped.get_config()["learning_rate"]["class_name"] == "ExponentialDecay"  # Caffe's step, staircase
    with pytest.raises(ValueError, match="optimizer must be one of"):
        training.make_optimizer(model, 0.1, kind="rmsprop")


def test_step_decay_is_caffes_step_policy():
    rate = training.Schedule("step", gamma=0.1, stepsize=10).rate(0.1, 30)
    values = [float(rate(step)) for step in (0, 9, 10, 19, 20, 29)]
    np.testing.assert_allclose(values, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
    default = training.Schedule("step").rate(0.1, 30)  # stepsize: a third of the steps
    np.testing.assert_allclose([float(default(9)), float(default(10))], [0.1, 0.01], rtol=1e-6)


def test_cosine_warms_up_linearly_then_decays_to_zero():
    rate = training.Schedule("cosine", warmup=10).rate(0.1, 110)
    values = [float(rate(step)) for step in (0, 5, 10, 60, 110)]
    np.testing.assert_allclose(values, [0.0, 0.05, 0.1, 0.05, 0.0], atol=1e-7)
    assert training.Schedule().rate(0.1, 100) == 0.1


def test_scheduled_sgd_follows_the_schedule_per_step():
    model = _linear_model()
    model.compile(optimizer=training.make_optimizer(model, 0.1, schedule=training.Schedule("step", 0.5, 1),
                                                   momentum=0.0, steps=3), loss="mse")
    rates = []
    for _ in range(3):
        rates.append(float(model.optimizer.learning_rate))
        model.train_on_batch(np.ones((1, 3), "float32"), np.zeros((1, 1), "float32"))
    np.testing.assert_allclose(rates, [0.1, 0.05, 0.025], rtol=1e-6)


def test_reset_optimizer_zeroes_state_and_sets_the_rate():
    model = _linear_model()
    training.compile_classifier(model, 0.1)
    model.train_on_batch(np.ones((2, 3), "float32"), np.array([0, 0]))
    training.reset_optimizer(model.optimizer, 0.02)
    assert int(model.optimizer.iterations) == 0 and float(model.optimizer.learning_rate) == pytest.approx(0.02)
    assert all(not np.any(np.array(v)) for v in model.optimizer.variables if v.name != "learning_rate")


def test_batch_order_is_seeded_whole_permutations():
    order = training.batch_order(5, 2, 6, seed=3)
    assert order.shape == (6, 2)
    flat = order.ravel()
    assert sorted(flat[:5]) == sorted(flat[5:10]) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(order, training.batch_order(5, 2, 6, seed=3))
    assert not np.array_equal(order, training.batch_order(5, 2, 6, seed=4))
    assert training.batch_order(3, 8, 2, 0).shape == (2, 3)  # a batch is at most the whole set
    assert training.batch_order(3, 2, 0, 0).shape == (0, 2)


def test_fit_steps_history_means_each_chunk_and_calls_back():
    model = _linear_model()
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse", metrics=["accuracy"])  # rate 0: output 9, loss 81
    x, y = np.ones((4, 3), "float32"), np.zeros(4, "float32")
    history = training.fit_steps(model, x, y, training.batch_order(4, 2, 5, 0), every=2,
                                 on_chunk=lambda step: {"val_step": step}, first_step=10)
    assert history == {"step": [12, 14, 15], "loss": [81.0, 81.0, 81.0], "accuracy": [0.0, 0.0, 0.0],
                       "val_step": [12.0, 14.0, 15.0]}


def test_fit_steps_stops_at_the_first_non_finite_loss():
    model = _linear_model()
    model.compile(optimizer=keras.optimizers.SGD(1e30), loss="mse", metrics=["accuracy"])
    x, y = np.ones((4, 3), "float32"), np.zeros(4, "float32")
    history = training.fit_steps(model, x, y, training.batch_order(4, 2, 50, 0))
    assert len(history["loss"]) < 50 and not np.isfinite(history["loss"][-1])
    assert all(np.isfinite(history["loss"][:-1]))


def test_fit_steps_augments_uint8_batches_before_preprocessing():
    seen = []
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(2, name="head")])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    images = np.arange(2 * 4 * 4 * 3, dtype="uint8").reshape(2, 4, 4, 3)
    training.fit_steps(model, images, np.array([0, 1]), np.array([[0, 1]]),
                       preprocess=lambda b: seen.append(b) or b, augment_seed=5)
    from course_utils.pipelines import augment

    np.testing.assert_array_equal(seen[0], augment(images, (5, 11, 0)))


def test_train_fits_an_image_set_the_keras_way():
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax",
                                                                                              name="head")])
    images = ImageSet(np.zeros((6, 4, 4, 3), "uint8"), np.array([0, 1] * 3), ["a", "b"], [str(i) for i in range(6)])
    history = training.train(model, images, None, lr=0.01, epochs=2, batch_size=4, val_set=images)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history.history["loss"]) == 2


def test_relative_change():
    before = [np.ones((2, 2)), np.zeros(3)]
    assert training.relative_change(before, before) == 0.0
    after = [np.ones((2, 2)) * 2, np.zeros(3)]
    assert training.relative_change(before, after) == pytest.approx(1.0)
    assert np.isnan(training.relative_change([np.zeros(2)], [np.ones(2)]))


def test_fit_arrays_makes_whole_passes_for_about_the_asked_steps():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax", name="head")])
    history = training.fit_arrays(model, np.ones((18, 3), "float32"), np.zeros(18, int), lr=0.01, steps=6,
                                  batch_size=6)
    assert len(history.history["loss"]) == 2  # 18 examples, 6 per batch: 3 steps a pass, 2 passes
    assert isinstance(model.optimizer, keras.optimizers.SGD)
