"""Check functions for the exercises' check cells (notebooks ``02``–``09``).

Each check raises ``AssertionError`` with a hint when the answer is wrong or missing, and prints a short
"ok" line when it is right. Checks look at what can be checked robustly (parameter counts, which layers are
frozen, the learning rate used, an accuracy range), never at exact floats.

Check cells call these functions; ``pytest --nbval-lax`` then fails on a wrong answer, so instructors can
grade a folder of notebooks with one command (see the README's instructor section).
"""

from __future__ import annotations

from typing import Any, Iterable


def _fail(message: str) -> None:
    raise AssertionError(message)


def _ok(message: str) -> None:
    print(f"ok: {message}")


def check_defined(value: Any, what: str) -> None:
    """The exercise must produce a value (not ``None``, not ``...``)."""
    if value is None or value is Ellipsis:
        _fail(f"{what} is not set yet: replace the placeholder with your answer.")


def check_model_output(model, num_classes: int) -> None:
    """``model`` is a Keras model that ends in a ``num_classes``-way softmax."""
    from course_utils.quiet import keras  # lazy: importing this module must not load TensorFlow

    check_defined(model, "the model")
    if not isinstance(model, keras.Model):
        _fail(f"expected a keras.Model, got {type(model).__name__}")
    width = model.outputs[0].shape[-1]
    if width != num_classes:
        _fail(f"the model outputs {width} values; it should output one probability per class ({num_classes}).")
    _ok(f"the model ends in a {num_classes}-way classifier")


def check_trainable_params(model, expected: int, tolerance: float = 0.0) -> None:
    """The model's trainable parameter count is ``expected`` (within ``tolerance`` as a fraction)."""
    from course_utils.surgery import count_params

    check_defined(model, "the model")
    got = count_params(model)["trainable"]
    if abs(got - expected) > tolerance * expected:
        _fail(f"the model has {got:,} trainable parameters; expected {expected:,}. "
              "Check which layers you froze (layer.trainable) and that you compiled after freezing.")
    _ok(f"{got:,} trainable parameters")


def check_frozen(model, frozen: Iterable[str] = (), trainable: Iterable[str] = ()) -> None:
    """Layers in ``frozen`` have no trainable weights; layers in ``trainable`` have some."""
    check_defined(model, "the model")
    for name in frozen:
        if model.get_layer(name).trainable_weights:
            _fail(f"layer {name!r} is still trainable; it should be frozen.")
    for name in trainable:
        if not model.get_layer(name).trainable_weights:
            _fail(f"layer {name!r} is frozen; it should be trainable.")
    _ok("frozen and trainable layers as expected")


def check_batchnorm_inference(model) -> None:
    """Every BatchNormalization layer is frozen, so it runs in inference mode while fine-tuning."""
    from course_utils.quiet import keras  # lazy: importing this module must not load TensorFlow

    check_defined(model, "the model")
    training = [layer.name for layer in model.layers
                if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    if training:
        _fail(f"{len(training)} BatchNormalization layers would use batch statistics (e.g. {training[0]!r}); "
              "set their trainable to False (surgery.freeze(..., bn='inference')).")
    _ok("all BatchNormalization layers stay in inference mode")


def learning_rate_of(model_or_optimizer) -> float:
    """The base learning rate of a compiled model or an optimizer."""
    from course_utils.quiet import keras  # lazy: importing this module must not load TensorFlow

    opt = getattr(model_or_optimizer, "optimizer", model_or_optimizer)
    if opt is None:
        _fail("the model is not compiled yet: call compile() (or training.train) first.")
    lr = opt.learning_rate
    return float(keras.ops.convert_to_numpy(lr() if callable(lr) else lr))


def check_learning_rate(model_or_optimizer, low: float, high: float) -> None:
    """The base learning rate lies in [low, high]."""
    check_defined(model_or_optimizer, "the model or optimizer")
    lr = learning_rate_of(model_or_optimizer)
    if not low <= lr <= high:
        _fail(f"the learning rate is {lr:g}; it should be between {low:g} and {high:g}.")
    _ok(f"learning rate {lr:g}")


def check_in_range(value: float | None, low: float, high: float, what: str = "accuracy") -> None:
    """A measured number (accuracy, distance, ...) lies in [low, high]."""
    check_defined(value, what)
    value = float(value)
    if not low <= value <= high:
        _fail(f"{what} is {value:.3f}; expected between {low:.3f} and {high:.3f}.")
    _ok(f"{what} {value:.3f} within [{low:.3f}, {high:.3f}]")


def check_equal(value: Any, expected: Any, what: str) -> None:
    """An exact, discrete answer (a count, a class name, a choice)."""
    check_defined(value, what)
    if value != expected:
        _fail(f"{what} is {value!r}; expected {expected!r}.")
    _ok(f"{what} = {value!r}")


def check_greater(a: float | None, b: float | None, what: str, margin: float = 0.0) -> None:
    """``a`` exceeds ``b`` by at least ``margin`` (e.g. accuracy with vs without a technique)."""
    check_defined(a, what)
    check_defined(b, what)
    if not float(a) > float(b) + margin:
        _fail(f"{what}: {float(a):.3f} should exceed {float(b):.3f} by more than {margin:.3f}.")
    _ok(f"{what}: {float(a):.3f} > {float(b):.3f}")


def check_in_set(value: Any, allowed: Iterable[Any], what: str) -> None:
    """A discrete answer that may be any of several right ones (e.g. "tabby" or "tiger cat" for a cat photo;
    notebook ``02_replace_softmax``)."""
    check_defined(value, what)
    allowed = list(allowed)
    if value not in allowed:
        _fail(f"{what} is {value!r}; expected one of {allowed!r}.")
    _ok(f"{what} = {value!r}")


def check_layerwise_rates(model_or_optimizer, model, lr: float, backbone_lr: float, rel_tol: float = 0.01) -> None:
    """The optimizer trains the new layers (``surgery.is_new_layer``) at ``lr`` and every pretrained layer of
    ``model`` that has weights at ``backbone_lr`` (notebook ``03_learning_rate``: discriminative rates, e.g.
    F. Yu's backbone 10x lower than the head). ``model_or_optimizer`` is a compiled model or an optimizer
    such as ``training.LayerwiseSGD``.
    """
    from course_utils.surgery import is_new_layer

    check_defined(model_or_optimizer, "the optimizer")
    check_defined(model, "the model")
    opt = getattr(model_or_optimizer, "optimizer", model_or_optimizer)
    base = learning_rate_of(opt)
    if abs(base - lr) > rel_tol * lr:
        _fail(f"the base learning rate (the new head's) is {base:g}; it should be {lr:g}.")
    multipliers = getattr(opt, "multipliers", None)
    if multipliers is None:
        _fail(f"{type(opt).__name__} uses one rate for every layer; build it with "
              "training.make_optimizer(model, lr, backbone_lr=...) to give the pretrained layers their own rate.")
    pretrained = 0
    for layer in model.layers:
        if not layer.weights:
            continue
        want = lr if is_new_layer(layer.name) else backbone_lr
        got = base * float(multipliers.get(layer.name, 1.0))
        if abs(got - want) > rel_tol * want:
            kind = "new" if is_new_layer(layer.name) else "pretrained"
            _fail(f"{kind} layer {layer.name!r} trains at {got:g}; it should train at {want:g}.")
        pretrained += not is_new_layer(layer.name)
    _ok(f"new layers at {lr:g}, {pretrained} pretrained layers at {backbone_lr:g}")
