"""Checks of the Keras models and optimizers students build (notebooks ``02``-``06``, ``09``): which layers
train, the head, BatchNorm, learning rates per layer, optimizers and schedules, the two-phase recipe. They
judge a model by its structure and behaviour, not by which helper built it, so a plain-Keras answer passes.
Messages and the ``ok`` line come from ``grading``; ``release.grade`` re-injects the check cells that call them.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable

import numpy as np

from course_utils import backbones, blocks, evaluation, grading, surgery
from course_utils.quiet import keras


def check_model_output(model, num_classes: int) -> None:
    """``model`` is a Keras model that ends in a ``num_classes``-way softmax (notebook ``02_replace_softmax``)."""
    grading.check_defined(model, "the model")
    if not isinstance(model, keras.Model):
        grading.fail(f"expected a keras.Model, got {type(model).__name__}")
    width = model.outputs[0].shape[-1]
    if width != num_classes:
        grading.fail(f"the model outputs {width} values; it should output one probability per class ({num_classes}).")
    grading.ok(f"the model ends in a {num_classes}-way classifier")


def check_trainable_params(model, expected: int, tolerance: float = 0.0) -> None:
    """The model's trainable parameter count is ``expected`` (within ``tolerance`` as a fraction; notebook
    ``04_freezing``)."""
    grading.check_defined(model, "the model")
    got = surgery.count_params(model)["trainable"]
    if abs(got - expected) > tolerance * expected:
        grading.fail(f"the model has {got:,} trainable parameters; expected {expected:,}. "
              "Check which layers you froze (layer.trainable) and that you compiled after freezing.")
    grading.ok(f"{got:,} trainable parameters")


def check_frozen(model, frozen: Iterable[str] = (), trainable: Iterable[str] = ()) -> None:
    """Layers in ``frozen`` have no trainable weights; layers in ``trainable`` have some (notebook
    ``04_freezing``)."""
    grading.check_defined(model, "the model")
    for name in frozen:
        if model.get_layer(name).trainable_weights:
            grading.fail(f"layer {name!r} is still trainable; it should be frozen.")
    for name in trainable:
        if not model.get_layer(name).trainable_weights:
            grading.fail(f"layer {name!r} is frozen; it should be trainable.")
    grading.ok("frozen and trainable layers as expected")


def check_batchnorm_inference(model) -> None:
    """Every BatchNormalization layer is frozen, so it runs in inference mode while fine-tuning (notebook
    ``04_freezing``)."""
    grading.check_defined(model, "the model")
    training = [layer.name for layer in model.layers
                if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    if training:
        grading.fail(f"{len(training)} BatchNormalization layers would use batch statistics (e.g. {training[0]!r}); "
              "set their trainable to False (surgery.freeze(..., bn='inference')).")
    grading.ok("all BatchNormalization layers stay in inference mode")


def _optimizer(model_or_optimizer):
    """The optimizer itself, or a compiled model's."""
    if not isinstance(model_or_optimizer, keras.Model):
        return model_or_optimizer
    if getattr(model_or_optimizer, "optimizer", None) is None:
        grading.fail("the model is not compiled yet: call compile() (or training.train) first.")
    return model_or_optimizer.optimizer


def learning_rate_of(model_or_optimizer) -> float:
    """The base learning rate of a compiled model or an optimizer (notebook ``03_learning_rate``)."""
    lr = _optimizer(model_or_optimizer).learning_rate
    return float(keras.ops.convert_to_numpy(lr() if callable(lr) else lr))


def check_learning_rate(model_or_optimizer, low: float, high: float) -> None:
    """The base learning rate lies in [low, high] (notebook ``03_learning_rate``)."""
    grading.check_defined(model_or_optimizer, "the model or optimizer")
    lr = learning_rate_of(model_or_optimizer)
    if not low <= lr <= high:
        grading.fail(f"the learning rate is {lr:g}; it should be between {low:g} and {high:g}.")
    grading.ok(f"learning rate {lr:g}")


def check_layerwise_rates(model_or_optimizer, model, lr: float, backbone_lr: float, rel_tol: float = 0.01) -> None:
    """The optimizer trains the new layers (``surgery.is_new_layer``) at ``lr`` and every pretrained layer of
    ``model`` that has weights at ``backbone_lr`` (notebook ``03_learning_rate``: discriminative rates, e.g.
    F. Yu's backbone 10x lower than the head). ``model_or_optimizer`` is a compiled model or an optimizer
    such as ``training.LayerwiseSGD``.
    """
    grading.check_defined(model_or_optimizer, "the optimizer")
    grading.check_defined(model, "the model")
    opt = _optimizer(model_or_optimizer)
    base = learning_rate_of(opt)
    if abs(base - lr) > rel_tol * lr:
        grading.fail(f"the base learning rate (the new head's) is {base:g}; it should be {lr:g}.")
    multipliers = getattr(opt, "multipliers", None)
    if multipliers is None:
        grading.fail(f"{type(opt).__name__} uses one rate for every layer; build it with "
              "training.make_optimizer(model, lr, backbone_lr=...) to give the pretrained layers their own rate.")
    pretrained = 0
    for layer in model.layers:
        if not layer.weights:
            continue
        want = lr if surgery.is_new_layer(layer.name) else backbone_lr
        got = base * float(multipliers.get(layer.name, 1.0))
        if abs(got - want) > rel_tol * want:
            kind = "new" if surgery.is_new_layer(layer.name) else "pretrained"
            grading.fail(f"{kind} layer {layer.name!r} trains at {got:g}; it should train at {want:g}.")
        pretrained += not surgery.is_new_layer(layer.name)
    grading.ok(f"new layers at {lr:g}, {pretrained} pretrained layers at {backbone_lr:g}")


def check_ft3_ex(model: Any, num_classes: int, units: Iterable[int], train_last: int) -> None:
    """Pittaras' FT3-ex: extension layers of ``units`` and a ``num_classes``-way head on the pooled features,
    the last ``train_last`` blocks trainable, BatchNorm in inference mode (notebook 06_extension_layers).
    Judged by behaviour and structure (trainable count, output, BatchNorm), so a plain-Keras model passes."""
    check_model_output(model, num_classes)
    size = int(model.inputs[0].shape[1])
    reference = surgery.replace_head(backbones.load_backbone(weights=None, input_size=size), num_classes,
                                     extension_units=tuple(int(u) for u in units))
    want = surgery.freeze(reference, train_last=train_last)["trainable"]
    got = surgery.count_params(model)["trainable"]
    if got != want:
        grading.fail(f"the model has {got:,} trainable parameters; FT3-ex with extension {list(units)} and the last "
              f"{train_last} blocks fine-tuned has a different count. Check the extension's width and which "
              "blocks you unfroze (and that the ImageNet classifier is gone).")
    check_batchnorm_inference(model)
    grading.ok(f"FT3-ex: extension {list(units)}, last {train_last} blocks trainable")


def check_optimizer(model_or_optimizer, kind: str, momentum: float | None = None) -> None:
    """The optimizer (or a compiled model's) is ``kind`` ("sgd" or "adam": any subclass of Keras' SGD or Adam
    counts, e.g. ``training.LayerwiseSGD``), with SGD's ``momentum`` when given (notebook ``03_learning_rate``)."""
    grading.check_defined(model_or_optimizer, "the optimizer")
    opt = _optimizer(model_or_optimizer)
    wanted = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam}.get(kind)
    if wanted is None:
        raise ValueError(f"kind must be 'sgd' or 'adam', got {kind!r}")
    if not isinstance(opt, wanted):
        grading.fail(f"the optimizer is {type(opt).__name__}; it should be keras.optimizers.{wanted.__name__} "
              f"(or training.make_optimizer(..., kind={kind!r})).")
    if momentum is not None and abs(float(opt.get_config().get("momentum", 0.0)) - momentum) > 1e-6:
        grading.fail(f"SGD's momentum is {opt.get_config().get('momentum', 0.0):g}; it should be {momentum:g}.")
    grading.ok(f"{wanted.__name__}" + (f" with momentum {momentum:g}" if momentum is not None else ""))


def check_step_decay(model_or_optimizer, lr: float, gamma: float, stepsize: int, rel_tol: float = 1e-3) -> None:
    """The optimizer's rate follows Caffe's ``step`` policy, ``lr * gamma ** floor(step / stepsize)``, judged
    by its values in the middle of the first three steps (so ``ExponentialDecay(staircase=True)``,
    ``PiecewiseConstantDecay`` and ``training.Schedule("step")`` all pass; a smooth decay, a cosine or a
    constant rate fail). Notebook ``03_learning_rate`` (Maybury's Caffe solver)."""
    grading.check_defined(model_or_optimizer, "the optimizer")
    opt = _optimizer(model_or_optimizer)
    rate = opt.get_config()["learning_rate"]
    if not isinstance(rate, dict):
        grading.fail("the learning rate is constant; give the optimizer a keras.optimizers.schedules schedule "
              "that divides it by 1/gamma every stepsize steps.")
    schedule = keras.optimizers.schedules.deserialize(rate)
    for step in (0, stepsize // 2, stepsize + stepsize // 2, 2 * stepsize + stepsize // 2):
        want = lr * gamma ** (step // stepsize)
        got = float(keras.ops.convert_to_numpy(schedule(step)))
        if abs(got - want) > rel_tol * want:
            grading.fail(f"at step {step} the rate is {got:.3g}; Caffe's step policy gives {want:.3g} there "
                  f"(lr x gamma^floor(step / stepsize)). Is the decay a staircase, and every {stepsize} steps?")
    grading.ok(f"step decay from {lr:g}, x {gamma:g} every {stepsize} steps")


def _layers_deep(model) -> list:
    """Every layer of ``model``, nested models' layers included (plain Keras calls a backbone as one layer)."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(_layers_deep(layer))
    return found


def _batchnorm_moved(model, batch: np.ndarray) -> list[str]:
    """BatchNorm layers whose moving statistics one training-mode call changes (restored afterwards)."""
    norms = [layer for layer in _layers_deep(model) if isinstance(layer, keras.layers.BatchNormalization)]
    before = [[keras.ops.convert_to_numpy(v) for v in (n.moving_mean, n.moving_variance)] for n in norms]
    with warnings.catch_warnings():  # a model built from `backbone.inputs` (a list) warns on a tensor
        warnings.filterwarnings("ignore", message="The structure of `inputs`")
        model(batch, training=True)
    moved = [n.name for n, (m, v) in zip(norms, before)
             if not (np.array_equal(keras.ops.convert_to_numpy(n.moving_mean), m)
                     and np.array_equal(keras.ops.convert_to_numpy(n.moving_variance), v))]
    for n, (m, v) in zip(norms, before):
        n.moving_mean.assign(m)
        n.moving_variance.assign(v)
    return moved


def check_frozen_new_head(model, num_classes: int, not_sharing_with=None, compiled: bool = True) -> None:
    """``model`` is a frozen pretrained backbone under a new ``num_classes``-way softmax that alone trains,
    whichever way it was built (plain Keras: a cut or ``include_top=False``, ``base_model.trainable = False``,
    ``Dense(N, activation="softmax")`` on ``base_model(x, training=False)``; or ``surgery.replace_head`` +
    ``surgery.freeze``), notebook ``02_replace_softmax``. It checks that the model takes images and outputs
    probabilities (rows >= 0 summing to 1), that the only layer with trainable weights is one Dense layer with
    ``num_classes`` units over frozen weights, that a training-mode call leaves every BatchNorm statistic
    alone, that it shares no layer with ``not_sharing_with`` (the exercise loads its own backbone: models
    built from the same layers share weights and ``trainable`` flags) and, with ``compiled``, that it is compiled.
    """
    check_model_output(model, num_classes)
    if not_sharing_with is not None:
        theirs = {id(layer) for layer in _layers_deep(not_sharing_with) if layer.weights}
        shared = [layer.name for layer in _layers_deep(model) if id(layer) in theirs]
        if shared:
            grading.fail(f"your model reuses {len(shared)} layers of an earlier model (e.g. {shared[0]!r}), so it shares their "
                  "weights and trainable flags. Load a fresh backbone inside the exercise cell "
                  "(backbones.load_backbone) and build on that.")
    training = [layer for layer in _layers_deep(model) if layer.trainable_weights and not isinstance(layer, keras.Model)]
    if len(training) != 1 or not isinstance(training[0], keras.layers.Dense) or training[0].units != num_classes:
        names = [layer.name for layer in training if not isinstance(layer, keras.layers.Dense)] or [None]
        grading.fail(f"{len(training)} layers would train (e.g. {names[0]!r}); only the new {num_classes}-way Dense head "
              "should. Freeze the backbone (base_model.trainable = False, or surgery.freeze) and keep the head trainable.")
    if len(model.inputs[0].shape) != 4 or None in tuple(model.inputs[0].shape[1:]):
        grading.fail(f"the model takes inputs of shape {tuple(model.inputs[0].shape)}; it should take images of a fixed "
              "size, keras.Input(shape=(size, size, 3)).")
    if not surgery.count_params(model)["non_trainable"]:
        grading.fail("the model has no frozen weights: where is the pretrained backbone?")
    batch = np.random.default_rng(0).uniform(-1, 1, (2,) + tuple(model.inputs[0].shape[1:])).astype("float32")
    probs = evaluation.predict(model, batch)
    if probs.min() < 0 or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-4):
        grading.fail("the outputs are not probabilities (they do not sum to 1): give the head activation=\"softmax\".")
    moved = _batchnorm_moved(model, batch)
    if moved:
        grading.fail(f"in training mode {len(moved)} BatchNorm layers update their statistics (e.g. {moved[0]!r}): call the "
              "backbone with training=False, or freeze its BatchNorm layers.")
    if compiled and getattr(model, "optimizer", None) is None:
        grading.fail("the model is not compiled: call compile() after freezing.")
    grading.ok(f"a frozen backbone under a new {num_classes}-way softmax head; only the head trains")


def _weights_equal(layer, reference_layer) -> bool:
    mine = [keras.ops.convert_to_numpy(v) for v in layer.weights]
    theirs = [keras.ops.convert_to_numpy(v) for v in reference_layer.weights]
    return len(mine) == len(theirs) and all(np.array_equal(a, b) for a, b in zip(mine, theirs))


def _check_phases(model, head_optimizer, head_history, tune_history) -> None:
    """Both phases ran ``fit`` with ``validation_data``; phase 2 has its own optimizer at ~1/10 of the rate."""
    for history, phase in ((head_history, "phase 1 (the head)"), (tune_history, "phase 2 (fine-tuning)")):
        grading.check_defined(history, f"the History of {phase}")
        logs = dict(getattr(history, "history", history))
        if not logs.get("loss"):
            grading.fail(f"the History of {phase} is empty: store what model.fit(...) returns.")
        if not any(key.startswith("val_") for key in logs):
            grading.fail(f"{phase} was trained without validation data: pass validation_data=(x_val, y_val) to fit.")
    if not isinstance(head_optimizer, keras.optimizers.Optimizer) or int(head_optimizer.iterations) == 0:
        grading.fail("store the optimizer phase 1 trained with (the one you gave the first compile) in the variable "
              "the exercise names; it should have taken steps.")
    final = _optimizer(model)
    if final is head_optimizer:
        grading.fail("phase 2 still uses phase 1's optimizer: after changing trainable, compile again (Keras reads "
              "trainable when it compiles) with a new optimizer at a lower rate.")
    if int(final.iterations) == 0:
        grading.fail("the optimizer of the second compile never took a step: fit again after compiling.")
    ratio = learning_rate_of(final) / learning_rate_of(head_optimizer)
    if not 1 / 30 <= ratio <= 1 / 3:
        grading.fail(f"phase 2 trains at {ratio:.2g} x phase 1's rate; fine-tune at about 10x lower "
              "(e.g. Adam 1e-3 for the head, then 1e-4).")


def check_two_phase_recipe(model, head_optimizer, head_history, tune_history, reference, num_classes: int,
                           train_last: int = 2) -> None:
    """The two-phase recipe, however it was written (notebook ``04_freezing``, plain Keras): a new
    ``num_classes``-way softmax on the pretrained network; phase 1 trained the head alone with
    ``validation_data``; phase 2 unfroze the last ``train_last`` blocks, compiled again with a new optimizer at
    about a tenth of phase 1's rate, and trained with ``validation_data``; BatchNorm stayed in inference mode.

    ``reference``: a freshly loaded copy of the same pretrained backbone. Judged by structure and behaviour:
    which pretrained layers have trainable weights, that exactly those moved away from the pretrained values
    (everything else, BatchNorm statistics included, is unchanged) and that a training-mode call leaves every
    BatchNorm statistic alone. Not which helper built the model.
    """
    check_model_output(model, num_classes)
    grading.check_defined(reference, "the reference backbone")
    _check_phases(model, head_optimizer, head_history, tune_history)
    ours = {layer.name: layer for layer in _layers_deep(model) if layer.weights and not isinstance(layer, keras.Model)}
    pretrained = [layer for layer in _layers_deep(reference) if layer.weights and layer.name in ours]
    if not pretrained:
        grading.fail("none of the model's layers comes from the pretrained backbone: build on the loaded backbone.")
    top = set(blocks.block_names(reference)[-train_last:])
    plain = [layer for layer in pretrained if not isinstance(layer, keras.layers.BatchNormalization)]
    unfrozen = {layer.name for layer in plain if ours[layer.name].trainable_weights}
    wanted = {layer.name for layer in plain if blocks.block_of(layer.name) in top}
    if not unfrozen:
        grading.fail("every pretrained layer is frozen: in phase 2 set trainable = True on the last blocks' layers "
              "(after base.trainable = True), then compile again.")
    if unfrozen != wanted:
        extra, missing = sorted(unfrozen - wanted), sorted(wanted - unfrozen)
        grading.fail(f"the trainable pretrained layers should be those of the last {train_last} blocks ({sorted(top)}): "
              f"{len(extra)} others train (e.g. {extra[:1]}), {len(missing)} of theirs are frozen (e.g. {missing[:1]}).")
    still = sorted(name for name in wanted if _weights_equal(ours[name], reference.get_layer(name)))
    if still:
        grading.fail(f"{len(still)} unfrozen layers never changed (e.g. {still[0]!r}): compile again after setting "
              "trainable, then fit.")
    changed = [layer.name for layer in pretrained if layer.name not in wanted
               and not isinstance(layer, keras.layers.BatchNormalization) and not _weights_equal(ours[layer.name], layer)]
    if changed:
        grading.fail(f"{len(changed)} frozen pretrained layers changed (e.g. {changed[0]!r}): freeze the backbone "
              "(base.trainable = False) before phase 1.")
    norms = [layer for layer in pretrained if isinstance(layer, keras.layers.BatchNormalization)]
    drifted = [n.name for n in norms if not all(np.array_equal(keras.ops.convert_to_numpy(getattr(ours[n.name], stat)),
                                                               keras.ops.convert_to_numpy(getattr(n, stat)))
                                                for stat in ("moving_mean", "moving_variance"))]
    batch = np.random.default_rng(0).uniform(0, 255, (2,) + tuple(model.inputs[0].shape[1:])).astype("float32")
    moved = drifted or _batchnorm_moved(model, batch)
    if moved:
        grading.fail(f"{len(moved)} BatchNorm layers use batch statistics in training (e.g. {moved[0]!r}): call the "
              "backbone with training=False (base(x, training=False)), or keep its BatchNorm layers frozen.")
    grading.ok(f"two phases: the head first, then the last {train_last} blocks at a ~10x lower rate after a new "
        "compile, BatchNorm in inference mode")

