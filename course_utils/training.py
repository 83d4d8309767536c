"""Training: optimizers with per-layer rates (SGD, Adam), learning-rate schedules, the step loop, ``fit``.

Explained in notebooks ``01_why_finetune`` (training), ``03_learning_rate`` (base rate, the 10x rule,
per-layer rates, schedules) and ``04_freezing``. The papers (Maybury 2015, Chu et al. 2016) use Caffe's SGD
with momentum 0.9 and count *iterations*; Caffe's ``step`` policy multiplies the rate by ``gamma`` every
``stepsize`` iterations. Modern recipes use Adam and cosine decay with a linear warm-up; both are here.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from course_utils.data import ImageSet
from course_utils.pipelines import augment as augment_batch
from course_utils.pipelines import make_batches
from course_utils.quiet import keras
from course_utils.surgery import is_new_layer

Preprocess = Callable[[np.ndarray], np.ndarray]
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "cosine")


class _Multipliers:
    """Caffe's ``lr_mult``: a variable whose path starts with ``<layer name>/`` trains at the (scheduled)
    rate times ``multipliers[layer name]``; others at the rate. Multiplying the rate, not the gradient,
    keeps momentum and Adam's moments exact on every backend."""

    def _init_multipliers(self, multipliers: dict[str, float] | None) -> None:
        self.multipliers = dict(multipliers or {})
        self._factors: list[float] = []

    def build(self, variables):
        super().build(variables)
        self._factors = [self.multipliers.get(v.path.split("/")[0], 1.0) for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        factor = self._factors[self._get_variable_index(variable)] if self._factors else 1.0
        if factor != 1.0:
            learning_rate = keras.ops.multiply(learning_rate, factor)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict:
        return {**super().get_config(), "multipliers": self.multipliers}


@keras.saving.register_keras_serializable(package="course_utils")
class LayerwiseSGD(_Multipliers, keras.optimizers.SGD):
    """SGD with momentum and per-layer rate multipliers (notebook ``03_learning_rate``)."""

    def __init__(self, learning_rate=0.01, momentum: float = 0.9, multipliers: dict[str, float] | None = None,
                 **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        self._init_multipliers(multipliers)


@keras.saving.register_keras_serializable(package="course_utils")
class LayerwiseAdam(_Multipliers, keras.optimizers.Adam):
    """Adam with per-layer rate multipliers (notebook ``03_learning_rate``: SGD vs Adam)."""

    def __init__(self, learning_rate=0.001, multipliers: dict[str, float] | None = None, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self._init_multipliers(multipliers)


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule (notebook ``03_learning_rate``): ``constant``; ``step`` (Caffe, Maybury:
    ``lr * gamma ** floor(step / stepsize)``; ``stepsize`` None: a third of the steps); ``cosine`` (linear
    warm-up from 0 over ``warmup`` steps, then cosine decay to 0; ``warmup`` None: a tenth of the steps)."""

    kind: str = "constant"
    gamma: float = 0.1
    stepsize: int | None = None
    warmup: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.kind!r}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"step schedule gamma must be in (0, 1], got {self.gamma}")
        if (self.stepsize is not None and self.stepsize < 1) or (self.warmup is not None and self.warmup < 0):
            raise ValueError(f"stepsize must be >= 1 and warmup >= 0, got {self.stepsize}, {self.warmup}")

    def rate(self, lr: float, steps: int):
        """The rate for ``fit``: ``lr`` itself (constant) or a ``keras.optimizers.schedules`` object."""
        if self.kind == "constant":
            return float(lr)
        if self.kind == "step":
            stepsize = self.stepsize or max(1, steps // 3)
            return keras.optimizers.schedules.ExponentialDecay(float(lr), stepsize, self.gamma, staircase=True)
        warmup = max(0, steps // 10) if self.warmup is None else min(self.warmup, steps)
        return keras.optimizers.schedules.CosineDecay(0.0 if warmup else float(lr), max(1, steps - warmup),
                                                      warmup_target=float(lr) if warmup else None,
                                                      warmup_steps=warmup)


def make_optimizer(model: keras.Model, lr: float, backbone_lr: float | None = None, momentum: float = 0.9,
                   kind: str = "sgd", schedule: Schedule | None = None, steps: int = 1) -> keras.optimizers.Optimizer:
    """SGD (momentum) or Adam at ``lr`` for the new layers and ``backbone_lr`` (default: the same) for the
    pretrained ones; ``schedule`` (over ``steps``) scales every rate alike (notebook ``03_learning_rate``)."""
    if not lr > 0 or not math.isfinite(lr) or (backbone_lr is not None and not 0 <= backbone_lr < math.inf):
        raise ValueError(f"Learning rates must be positive and finite, got lr={lr}, backbone_lr={backbone_lr}.")
    if kind not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {kind!r}")
    rate = (schedule or Schedule()).rate(lr, steps)
    mults = None
    if backbone_lr is not None and backbone_lr != lr:
        mults = {layer.name: backbone_lr / lr for layer in model.layers
                 if layer.weights and not is_new_layer(layer.name)}
    if kind == "adam":
        return LayerwiseAdam(rate, multipliers=mults) if mults else keras.optimizers.Adam(rate)
    return LayerwiseSGD(rate, momentum, mults) if mults else keras.optimizers.SGD(rate, momentum=momentum)


def compile_classifier(model: keras.Model, lr: float, backbone_lr: float | None = None,
                       optimizer: keras.optimizers.Optimizer | None = None) -> keras.Model:
    """Compile with ``optimizer`` (default: ``make_optimizer``'s SGD), sparse categorical cross-entropy
    and accuracy (notebook ``03_learning_rate``)."""
    model.compile(optimizer=optimizer or make_optimizer(model, lr, backbone_lr),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def reset_optimizer(optimizer: keras.optimizers.Optimizer, lr: float | None = None) -> None:
    """Zero an optimizer's state (iteration count, momentum, Adam moments) as if it were new; set its rate
    to ``lr`` when given (a constant rate only). Sweeps reuse a compiled model this way instead of
    compiling again, which would trace the training step again (notebooks ``04``-``07``)."""
    for variable in optimizer.variables:
        if variable.name != "learning_rate":
            variable.assign(np.zeros(variable.shape, dtype=variable.dtype))
    if lr is not None:
        optimizer.learning_rate = float(lr)


def schedule(n_train: int, batch_size: int, steps: int | None, epochs: int | None) -> tuple[int, int]:
    """(epochs, steps_per_epoch) that give about ``steps`` updates, or ``epochs`` full passes."""
    if (steps is None) == (epochs is None):
        raise ValueError("Give exactly one of steps (iterations, as the papers count) or epochs.")
    per_epoch = max(1, math.ceil(n_train / batch_size))
    if epochs is not None:
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        return int(epochs), per_epoch
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    n_epochs = max(1, round(steps / per_epoch))
    return n_epochs, math.ceil(steps / n_epochs)


def batch_order(n: int, batch_size: int, steps: int, seed: int, stream: int = 7) -> np.ndarray:
    """``(steps, batch_size)`` indices: consecutive seeded permutations of ``range(n)`` cut into batches
    (``batch_size`` capped at ``n``). The cached and the full path of a run train on exactly these."""
    batch_size = max(1, min(int(batch_size), int(n)))
    rng = np.random.default_rng([int(seed), int(stream)])
    needed = int(steps) * batch_size
    perms = [rng.permutation(n) for _ in range(-(-needed // n))] if needed else [np.zeros(0, int)]
    return np.concatenate(perms)[:needed].reshape(int(steps), batch_size)


def fit_steps(model: keras.Model, x: np.ndarray, y: np.ndarray, order: np.ndarray,
              preprocess: Preprocess | None = None, augment_seed: int | None = None, every: int = 0,
              on_chunk: Callable[[int], dict] | None = None, first_step: int = 0) -> dict[str, list[float]]:
    """One ``train_on_batch`` per row of ``order`` on a compiled model (notebook ``04_freezing``).

    ``augment_seed``: each uint8 batch goes through ``pipelines.augment`` (seeded by step) before
    ``preprocess``. Returns the history: ``loss`` and ``accuracy`` per step, or, with ``every`` > 0, the
    mean over each chunk of ``every`` steps, with ``step`` (counted from ``first_step``) and whatever
    ``on_chunk(step)`` returns (e.g. ``val_loss``/``val_accuracy``). Stops after the first non-finite loss
    (a diverged run: its last ``loss`` is not finite)."""
    losses, accs, history = [], [], {"step": [], "loss": [], "accuracy": []}
    for i, idx in enumerate(order):
        batch = x[idx]
        if augment_seed is not None:
            batch = augment_batch(batch, (int(augment_seed), 11, first_step + i))
        if preprocess is not None:
            batch = np.asarray(preprocess(np.asarray(batch, "float32")), dtype="float32")
        loss, acc = (float(v) for v in np.ravel(model.train_on_batch(batch, y[idx]))[:2])
        losses.append(loss)
        accs.append(acc)
        size = every or 1
        if len(losses) % size == 0 or i == len(order) - 1:
            chunk = slice(-(len(losses) % size or size), None)
            history["step"].append(first_step + i + 1)
            history["loss"].append(float(np.mean(losses[chunk])))
            history["accuracy"].append(float(np.mean(accs[chunk])))
            for key, value in (on_chunk(first_step + i + 1) if on_chunk else {}).items():
                history.setdefault(key, []).append(float(value))
        if not math.isfinite(loss):  # diverged: stop here; evaluation.check_finite(history["loss"]) says so
            break
    return history


def train(model: keras.Model, train_set: ImageSet, preprocess: Preprocess | None, lr: float = 0.01,
          backbone_lr: float | None = None, steps: int | None = None, epochs: int | None = None,
          val_set: ImageSet | None = None, batch_size: int = 32, augment: bool = False, seed: int = 0,
          verbose: int = 0, callbacks: Sequence[keras.callbacks.Callback] = ()) -> keras.callbacks.History:
    """Compile and ``fit`` a classifier on an ``ImageSet`` the plain Keras way (notebook ``01_why_finetune``);
    ``history.history`` has loss/accuracy per epoch (and ``val_*`` with ``val_set``).

    ``backbone_lr`` sets a different rate for the pretrained layers (F. Yu: about 10x lower than the new
    head's). Freeze first (``surgery.freeze``): ``train`` compiles, so ``trainable`` flags are read here.
    """
    n_epochs, per_epoch = schedule(len(train_set.labels), batch_size, steps, epochs)
    compile_classifier(model, lr, backbone_lr)
    data = make_batches(train_set.images, train_set.labels, preprocess, batch_size=batch_size,
                        shuffle=True, augment=augment, seed=seed)
    data = data.repeat() if hasattr(data, "repeat") else data  # steps_per_epoch may exceed one pass
    val = None
    if val_set is not None:
        val = make_batches(val_set.images, val_set.labels, preprocess, batch_size=batch_size)
    return model.fit(data, epochs=n_epochs, steps_per_epoch=per_epoch, validation_data=val,
                     verbose=verbose, callbacks=list(callbacks), shuffle=False)  # the pipeline shuffles


def fit_arrays(model: keras.Model, x: np.ndarray, y: np.ndarray, lr: float = 0.01,
               backbone_lr: float | None = None, epochs: int | None = None, steps: int | None = None,
               batch_size: int = 32, verbose: int = 0) -> keras.callbacks.History:
    """Compile (SGD, as ``train``) and ``fit`` on in-memory arrays such as bottleneck features (``recipes``).

    ``steps`` gives about that many updates in whole passes (``schedule``). Seed first
    (``settings.seed_everything``): the shuffling follows the Keras seed.
    """
    batch_size = max(1, min(batch_size, len(y)))
    n_epochs, _ = schedule(len(y), batch_size, steps, epochs)
    compile_classifier(model, lr, backbone_lr)
    return model.fit(x, y, batch_size=batch_size, epochs=n_epochs, shuffle=True, verbose=verbose)


def relative_change(before: Sequence[np.ndarray], after: Sequence[np.ndarray]) -> float:
    """``||after - before|| / ||before||`` over all the arrays together: how far weights moved (0: not at
    all; notebook ``03_learning_rate`` shows rigidity at tiny rates, Li et al. 2020 what tuning changes)."""
    num = sum(float(np.sum((np.asarray(a, "float64") - np.asarray(b, "float64")) ** 2)) for a, b in zip(after, before))
    den = sum(float(np.sum(np.asarray(b, "float64") ** 2)) for b in before)
    return float(np.sqrt(num / den)) if den > 0 else float("nan")


class Timer:
    """``with Timer() as t: ...``; then ``t.seconds`` (notebook ``01_why_finetune``)."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
