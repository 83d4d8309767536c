"""The checks of Keras models and optimizers (course_utils.grading_models): known wrong answers fail, plain-Keras
alternatives pass."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from course_utils import grading_models, training
from course_utils.quiet import keras



def _fails(message: str):
    return pytest.raises(AssertionError, match=f"^{re.escape(message)}$")


@pytest.fixture(scope="module")
def tiny():
    """4 inputs -> ``dense`` (5, ReLU) -> ``bn`` -> ``head`` (3-way softmax): 25 + 20 + 18 weights."""
    inputs = keras.Input((4,))
    x = keras.layers.Dense(5, activation="relu", name="dense")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(x))


def test_check_model_output(tiny, capsys):
    grading_models.check_model_output(tiny, 3)
    assert capsys.readouterr().out == "ok: the model ends in a 3-way classifier\n"
    with _fails("the model outputs 3 values; it should output one probability per class (5)."):
        grading_models.check_model_output(tiny, 5)
    with _fails("expected a keras.Model, got list"):
        grading_models.check_model_output([tiny], 3)


def test_check_trainable_params_counts_and_tolerance(tiny, capsys):
    grading_models.check_trainable_params(tiny, 25 + 10 + 18)  # BatchNorm trains gamma and beta only
    assert capsys.readouterr().out == "ok: 53 trainable parameters\n"
    with _fails("the model has 53 trainable parameters; expected 50. Check which layers you froze "
                "(layer.trainable) and that you compiled after freezing."):
        grading_models.check_trainable_params(tiny, 50)
    grading_models.check_trainable_params(tiny, 50, tolerance=0.06)


def test_check_frozen_and_batchnorm_inference(tiny, capsys):
    tiny.get_layer("dense").trainable = False
    try:
        grading_models.check_frozen(tiny, frozen=["dense"], trainable=["head", "bn"])
        with _fails("layer 'dense' is frozen; it should be trainable."):
            grading_models.check_frozen(tiny, trainable=["dense"])
        with _fails("layer 'head' is still trainable; it should be frozen."):
            grading_models.check_frozen(tiny, frozen=["dense", "head"])
        with _fails("1 BatchNormalization layers would use batch statistics (e.g. 'bn'); set their trainable "
                    "to False (surgery.freeze(..., bn='inference'))."):
            grading_models.check_batchnorm_inference(tiny)
        tiny.get_layer("bn").trainable = False
        grading_models.check_batchnorm_inference(tiny)
    finally:
        for layer in tiny.layers:
            layer.trainable = True
    assert capsys.readouterr().out.splitlines() == ["ok: frozen and trainable layers as expected",
                                                    "ok: all BatchNormalization layers stay in inference mode"]


def test_learning_rate_of_a_compiled_model_or_an_optimizer(tiny, capsys):
    model = keras.models.clone_model(tiny)
    with _fails("the model is not compiled yet: call compile() (or training.train) first."):
        grading_models.learning_rate_of(model)
    model.compile(optimizer=keras.optimizers.Adam(0.25), loss="sparse_categorical_crossentropy")
    assert grading_models.learning_rate_of(model) == grading_models.learning_rate_of(model.optimizer) == 0.25
    grading_models.check_learning_rate(model, 0.25, 0.25)
    assert capsys.readouterr().out == "ok: learning rate 0.25\n"
    with _fails("the learning rate is 0.25; it should be between 0.001 and 0.01."):
        grading_models.check_learning_rate(model, 0.001, 0.01)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.5, decay_steps=10, decay_rate=0.5)
    assert grading_models.learning_rate_of(keras.optimizers.SGD(schedule)) == 0.5  # a schedule: its current rate


def test_check_layerwise_rates_judges_every_layer_with_weights(tiny, capsys):
    right = SimpleNamespace(learning_rate=0.5, multipliers={"dense": 0.125, "bn": 0.125})
    grading_models.check_layerwise_rates(right, tiny, lr=0.5, backbone_lr=0.0625)
    assert capsys.readouterr().out == "ok: new layers at 0.5, 2 pretrained layers at 0.0625\n"
    with _fails("the base learning rate (the new head's) is 0.5; it should be 0.25."):
        grading_models.check_layerwise_rates(right, tiny, lr=0.25, backbone_lr=0.0625)
    with _fails("pretrained layer 'bn' trains at 0.5; it should train at 0.0625."):
        grading_models.check_layerwise_rates(SimpleNamespace(learning_rate=0.5, multipliers={"dense": 0.125}),
                                      tiny, lr=0.5, backbone_lr=0.0625)
    with _fails("new layer 'head' trains at 0.0625; it should train at 0.5."):
        grading_models.check_layerwise_rates(SimpleNamespace(learning_rate=0.5, multipliers={"dense": 0.125,
                                                      "bn": 0.125, "head": 0.125}), tiny, lr=0.5, backbone_lr=0.0625)
    with _fails("SGD uses one rate for every layer; build it with training.make_optimizer(model, lr, "
                "backbone_lr=...) to give the pretrained layers their own rate."):
        grading_models.check_layerwise_rates(keras.optimizers.SGD(0.5), tiny, lr=0.5, backbone_lr=0.0625)


def _pretrained_and_head() -> keras.Model:
    """A "pretrained" layer (``stem_conv``) and the new layers ``replace_head`` names (``head_dropout``, ``head``)."""
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, name="stem_conv")(inputs)
    x = keras.layers.Dropout(0.1, name="head_dropout")(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x))


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_check_layerwise_rates_with_the_course_optimizers(kind, capsys):
    """Moved from test_notebook_helpers_a.py: SGD and Adam with per-layer rates both pass (issue 11: 03 Ex2
    must not accept only LayerwiseSGD); one rate for all, or wrong rates, fail."""
    model = _pretrained_and_head()
    grading_models.check_layerwise_rates(training.make_optimizer(model, 0.01, backbone_lr=0.001, kind=kind), model,
                                  0.01, 0.001)
    training.compile_classifier(model, 0.01, optimizer=training.make_optimizer(model, 0.01, 0.001, kind=kind))
    grading_models.check_layerwise_rates(model, model, 0.01, 0.001)  # a compiled model works too
    assert capsys.readouterr().out == "ok: new layers at 0.01, 1 pretrained layers at 0.001\n" * 2
    with _fails(f"{'SGD' if kind == 'sgd' else 'Adam'} uses one rate for every layer; build it with "
                "training.make_optimizer(model, lr, backbone_lr=...) to give the pretrained layers their own rate."):
        grading_models.check_layerwise_rates(training.make_optimizer(model, 0.01, kind=kind), model, 0.01, 0.001)
    with _fails("pretrained layer 'stem_conv' trains at 0.005; it should train at 0.001."):
        grading_models.check_layerwise_rates(training.make_optimizer(model, 0.01, backbone_lr=0.005, kind=kind), model,
                                      0.01, 0.001)
    with _fails("the base learning rate (the new head's) is 0.1; it should be 0.01."):
        grading_models.check_layerwise_rates(training.make_optimizer(model, 0.1, backbone_lr=0.001, kind=kind), model,
                                      0.01, 0.001)
    with _fails("the optimizer is not set yet: replace the placeholder with your answer."):
        grading_models.check_layerwise_rates(None, model, 0.01, 0.001)


def test_nb06_check_ft3_ex_fails_on_a_frozen_backbone_wrong_width_and_training_batchnorm_and_passes_plain_keras(capsys):
    from course_utils import backbones, surgery

    def fresh(units=(128,)):
        return surgery.replace_head(backbones.load_backbone(weights=None, input_size=64), 5, extension_units=units)

    right = fresh()
    surgery.freeze(right, train_last=2)
    grading_models.check_ft3_ex(right, 5, (128,), train_last=2)
    base = backbones.load_backbone(weights=None, input_size=64)  # the same model in plain Keras
    x = keras.layers.Dense(128, activation="relu")(base.get_layer("avg_pool").output)
    plain = keras.Model(base.inputs, keras.layers.Dense(5, activation="softmax")(keras.layers.Dropout(0.2)(x)))
    for layer in base.layers:
        layer.trainable = (layer.name.startswith(("block7a", "top"))
                           and not isinstance(layer, keras.layers.BatchNormalization))
    grading_models.check_ft3_ex(plain, 5, (128,), train_last=2)
    assert capsys.readouterr().out.count("ok: FT3-ex: extension [128], last 2 blocks trainable") == 2
    frozen = fresh()
    surgery.freeze(frozen)  # only the new layers train: that is not fine-tuning
    wide = fresh((256,))
    surgery.freeze(wide, train_last=2)
    for wrong in (frozen, wide):
        with pytest.raises(AssertionError, match="trainable parameters; FT3-ex with extension"):
            grading_models.check_ft3_ex(wrong, 5, (128,), train_last=2)
    bn_train = fresh()
    surgery.freeze(bn_train, train_last=2, bn="train")
    with pytest.raises(AssertionError, match="BatchNormalization layers would use batch statistics|trainable parameters"):
        grading_models.check_ft3_ex(bn_train, 5, (128,), train_last=2)


def test_nb03_check_optimizer_accepts_keras_and_the_course_optimizers(capsys):
    """03 Ex1/Ex3: plain Keras SGD and the course's LayerwiseSGD both count as SGD; Adam is not SGD."""

    grading_models.check_optimizer(keras.optimizers.SGD(0.001, momentum=0.9), "sgd", momentum=0.9)
    grading_models.check_optimizer(training.LayerwiseSGD(0.001, 0.9, {"x": 0.1}), "sgd", momentum=0.9)
    grading_models.check_optimizer(keras.optimizers.Adam(1e-4), "adam")
    assert capsys.readouterr().out == "ok: SGD with momentum 0.9\n" * 2 + "ok: Adam\n"
    with pytest.raises(AssertionError, match=r"^the optimizer is Adam; it should be keras.optimizers.SGD"):
        grading_models.check_optimizer(keras.optimizers.Adam(1e-4), "sgd")
    with pytest.raises(AssertionError, match=r"^SGD's momentum is 0; it should be 0.9.$"):
        grading_models.check_optimizer(keras.optimizers.SGD(0.001), "sgd", momentum=0.9)


def test_nb03_check_step_decay_fails_smooth_cosine_constant_and_passes_piecewise(capsys):
    """03 Ex1 (plain Keras): ExponentialDecay(staircase=True), PiecewiseConstantDecay (another correct answer)
    and training.Schedule("step") pass; a smooth exponential decay, a cosine, a constant rate or the wrong
    stepsize fail."""

    sched = keras.optimizers.schedules
    grading_models.check_step_decay(keras.optimizers.SGD(sched.ExponentialDecay(0.001, 100, 0.1, staircase=True)),
                             0.001, 0.1, 100)
    grading_models.check_step_decay(keras.optimizers.SGD(sched.PiecewiseConstantDecay([100, 200], [1e-3, 1e-4, 1e-5])),
                             0.001, 0.1, 100)
    grading_models.check_step_decay(keras.optimizers.SGD(training.Schedule("step", stepsize=100).rate(0.001, 300)),
                             0.001, 0.1, 100)
    assert capsys.readouterr().out == "ok: step decay from 0.001, x 0.1 every 100 steps\n" * 3
    with pytest.raises(AssertionError, match=r"^at step 50 the rate is 0.000316; Caffe's step policy gives 0.001"):
        grading_models.check_step_decay(keras.optimizers.SGD(sched.ExponentialDecay(0.001, 100, 0.1)), 0.001, 0.1, 100)
    with pytest.raises(AssertionError, match=r"^at step 0 the rate is 0; Caffe's step policy gives 0.001"):
        grading_models.check_step_decay(keras.optimizers.SGD(training.Schedule("cosine").rate(0.001, 300)), 0.001, 0.1, 100)
    with pytest.raises(AssertionError, match=r"^at step 150 the rate is 0.001; Caffe's step policy gives 0.0001"):
        grading_models.check_step_decay(keras.optimizers.SGD(sched.ExponentialDecay(0.001, 200, 0.1, staircase=True)),
                                 0.001, 0.1, 100)
    with pytest.raises(AssertionError, match=r"^the learning rate is constant"):
        grading_models.check_step_decay(keras.optimizers.SGD(0.001), 0.001, 0.1, 100)


def _nb02_backbone(seed: int = 0) -> keras.Model:
    """A tiny ImageNet-shaped classifier: 8x8 RGB -> conv -> BatchNorm -> ``avg_pool`` -> 1000-way softmax."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="stem_conv", kernel_initializer=keras.initializers.GlorotUniform(seed))(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, keras.layers.Dense(1000, activation="softmax", name="predictions")(x))


def _nb02_plain_keras(base: keras.Model, num_classes: int, softmax: bool = True) -> keras.Model:
    """The canonical lines: cut at the pooled layer, ``trainable = False``, a new head on ``base(x, training=False)``."""
    base_model = keras.Model(base.input, base.get_layer("avg_pool").output)
    base_model.trainable = False
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Dropout(0.2)(base_model(inputs, training=False))
    model = keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax" if softmax else None)(x))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def test_nb02_check_frozen_new_head_fails_on_copies_and_a_missing_freeze_and_passes_plain_keras(capsys):
    """02 Ex1/Ex2 known wrong answers: a copy of the call above (``replace_head(base, ...)``, with or without
    ``freeze``) reuses base's layers, and omitting ``freeze`` on a fresh backbone trains it all; plain Keras
    on a fresh backbone passes, and so does ``replace_head`` + ``freeze`` on one."""
    from course_utils import surgery

    base = _nb02_backbone()
    _nb02_plain_keras(base, 3)  # the notebook's plain-Keras cell: it froze base's layers too (shared)
    copied = surgery.replace_head(base, 3)
    copied.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    grading_models.check_trainable_params(copied, 4 * 3 + 3)  # the old Ex2 check passed without freeze
    for answer in (copied, _nb02_plain_keras(base, 3)):
        with pytest.raises(AssertionError, match=r"^your model reuses 2 layers of an earlier model \(e.g. 'stem_conv'\)"):
            grading_models.check_frozen_new_head(answer, 3, not_sharing_with=base)
    unfrozen = surgery.replace_head(_nb02_backbone(1), 3)
    unfrozen.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(AssertionError, match=r"^3 layers would train \(e.g. 'stem_conv'\); only the new 3-way"):
        grading_models.check_frozen_new_head(unfrozen, 3, not_sharing_with=base)
    with pytest.raises(AssertionError, match="the outputs are not probabilities"):
        grading_models.check_frozen_new_head(_nb02_plain_keras(_nb02_backbone(2), 3, softmax=False), 3)
    with pytest.raises(AssertionError, match=r"^the model outputs 3 values; it should output one probability per class \(4\)"):
        grading_models.check_frozen_new_head(_nb02_plain_keras(_nb02_backbone(2), 3), 4)
    helper = surgery.replace_head(_nb02_backbone(3), 3)
    surgery.freeze(helper)
    with pytest.raises(AssertionError, match="^the model is not compiled"):
        grading_models.check_frozen_new_head(helper, 3, not_sharing_with=base)
    capsys.readouterr()
    helper.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    for right in (helper, _nb02_plain_keras(_nb02_backbone(4), 3)):
        grading_models.check_frozen_new_head(right, 3, not_sharing_with=base)
    assert capsys.readouterr().out == ("ok: the model ends in a 3-way classifier\n"
                                       "ok: a frozen backbone under a new 3-way softmax head; only the head trains\n") * 2


def test_nb02_check_frozen_new_head_catches_batchnorm_statistics_that_move_and_restores_them():
    """A BatchNorm layer without gamma/beta has no trainable weights, yet in training mode it would update
    its statistics: the behaviour check catches it, and puts the statistics back."""

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="stem_conv", trainable=False)(inputs)
    norm = keras.layers.BatchNormalization(center=False, scale=False, name="stem_bn")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(norm(x))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(x))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(AssertionError, match=r"^in training mode 1 BatchNorm layers update their statistics \(e.g. 'stem_bn'\)"):
        grading_models.check_frozen_new_head(model, 3)
    assert keras.ops.convert_to_numpy(norm.moving_mean).tolist() == [0.0] * 4
    assert keras.ops.convert_to_numpy(norm.moving_variance).tolist() == [1.0] * 4


def _nb04_backbone() -> keras.Model:
    """A tiny pretrained-looking network with EfficientNet block names: stem, block1a, block2a, top, then a
    1000-way ImageNet classifier; seeded, so two calls give the same weights (a fresh reference)."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 128, offset=-1.0, name="stem_rescaling")(inputs)
    for i, block in enumerate(("stem", "block1a", "block2a", "top")):
        x = keras.layers.Conv2D(4, 3, padding="same", name=f"{block}_conv",
                                kernel_initializer=keras.initializers.GlorotUniform(i))(x)
        x = keras.layers.BatchNormalization(name=f"{block}_bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, keras.layers.Dense(1000, activation="softmax", name="predictions")(x))


def _nb04_recipe(nested: bool = True, bn_trainable: bool = False, recompile: bool = True, ratio: float = 0.1,
                 unfreeze: tuple[str, ...] = ("block2a", "top"), validation: bool = True, sgd: bool = False):
    """The two-phase recipe in plain Keras, with one thing changed per argument; returns what the check takes."""
    import numpy as np

    keras.utils.set_random_seed(0)
    base = _nb04_backbone()
    features = keras.Model(base.inputs, base.get_layer("avg_pool").output)
    inputs = keras.Input((8, 8, 3))
    if nested:  # the keras.io way: base.trainable = False, base(x, training=False)
        features.trainable = False
        x = features(inputs, training=False)
    else:  # an alternative: the backbone's own layers, frozen one by one
        x = base.get_layer("avg_pool").output
        for layer in base.layers:
            layer.trainable = False
    head = keras.layers.Dense(3, activation="softmax", name="new_head")
    model = keras.Model(inputs if nested else base.inputs, head(x))
    rate = 0.01 if sgd else 1e-3
    first = keras.optimizers.SGD(rate, momentum=0.9) if sgd else keras.optimizers.Adam(rate)
    # no tracing: seconds faster for a model this small (without a recompile, as in a notebook: an eager step
    # would raise on the newly trainable variables, a traced one silently leaves them alone)
    eager = dict(metrics=["accuracy"], run_eagerly=recompile)
    model.compile(first, "sparse_categorical_crossentropy", **eager)
    rng = np.random.default_rng(0)
    x_train, y_train = rng.uniform(0, 255, (16, 8, 8, 3)).astype("float32"), rng.integers(0, 3, 16)
    val = (x_train[:4], y_train[:4]) if validation else None
    h1 = model.fit(x_train, y_train, validation_data=val, epochs=1, batch_size=8, verbose=0)
    features.trainable = True
    for layer in (features.layers if nested else base.layers):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = layer.name.startswith(unfreeze) and (bn_trainable or not is_bn)
    if recompile:
        second = keras.optimizers.SGD(rate * ratio, momentum=0.9) if sgd else keras.optimizers.Adam(rate * ratio)
        model.compile(second, "sparse_categorical_crossentropy", **eager)
    h2 = model.fit(x_train, y_train, validation_data=val, epochs=2, initial_epoch=1, batch_size=8, verbose=0)
    return model, first, h1, h2, _nb04_backbone(), 3


def test_nb04_check_two_phase_recipe_passes_the_keras_io_way_and_an_alternative(capsys):
    """04 Ex3: the keras.io recipe (nested base called with training=False, BatchNorm layers kept frozen, Adam 1e-3
    then 1e-4) and an alternative (the backbone's own layers, no nested call, SGD 0.01 then 0.002) pass."""
    ok = ("ok: two phases: the head first, then the last 2 blocks at a ~10x lower rate after a new compile, "
          "BatchNorm in inference mode")
    grading_models.check_two_phase_recipe(*_nb04_recipe())
    grading_models.check_two_phase_recipe(*_nb04_recipe(nested=False, sgd=True, ratio=0.2))
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == ["ok: the model ends in a 3-way classifier", ok]
    assert out.count(ok) == 2


def test_nb04_check_two_phase_recipe_fails_without_a_recompile_a_lower_rate_or_frozen_batchnorm():
    """04 Ex3 known wrong answers: no recompile, a recompile at the same rate, BatchNorm in training mode (in
    Keras 3 fit's training=True overrides base(x, training=False) once BatchNorm layers are trainable,
    keras-team/keras#20285)."""
    with pytest.raises(AssertionError, match="still uses phase 1's optimizer: after changing trainable, compile again"):
        grading_models.check_two_phase_recipe(*_nb04_recipe(recompile=False))
    with pytest.raises(AssertionError, match=r"phase 2 trains at 1 x phase 1's rate; fine-tune at about 10x lower"):
        grading_models.check_two_phase_recipe(*_nb04_recipe(ratio=1.0))
    with pytest.raises(AssertionError, match=r"BatchNorm layers use batch statistics in training .*training=False"):
        grading_models.check_two_phase_recipe(*_nb04_recipe(bn_trainable=True))


def test_nb04_check_two_phase_recipe_fails_on_the_wrong_layers_and_without_validation():
    """04 Ex3 known wrong answers: everything left frozen, every block unfrozen, no validation data."""
    with pytest.raises(AssertionError, match="every pretrained layer is frozen"):
        grading_models.check_two_phase_recipe(*_nb04_recipe(unfreeze=("nothing",)))
    with pytest.raises(AssertionError, match=r"should be those of the last 2 blocks .*: 2 others train"):
        grading_models.check_two_phase_recipe(*_nb04_recipe(unfreeze=("stem", "block1a", "block2a", "top")))
    with pytest.raises(AssertionError, match="phase 1 \\(the head\\) was trained without validation data"):
        grading_models.check_two_phase_recipe(*_nb04_recipe(validation=False))

