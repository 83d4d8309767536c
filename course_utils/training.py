"""Training and evaluation: SGD with a base learning rate, a lower rate for the pretrained part, steps or epochs.

Explained in notebooks ``01_why_finetune`` (training), ``03_learning_rate`` (base rate, the 10x rule,
per-layer rates) and ``04_freezing``. The papers (Maybury 2015, Chu et al. 2016) use Caffe's SGD with
momentum 0.9 and count *iterations*, so ``train`` accepts ``steps`` as well as ``epochs``.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from course_utils import evaluation
from course_utils.data import ImageSet, make_batches
from course_utils.quiet import keras
from course_utils.surgery import is_new_layer

Preprocess = Callable[[np.ndarray], np.ndarray]


@keras.saving.register_keras_serializable(package="course_utils")
class LayerwiseSGD(keras.optimizers.SGD):
    """SGD whose learning rate is multiplied per variable: Caffe's ``lr_mult`` (notebook ``03_learning_rate``).

    ``multipliers`` maps a layer name to a factor; a variable whose path starts with ``<layer name>/``
    gets ``learning_rate * factor``. Other variables use the base rate. Multiplying the rate (not the
    gradient) keeps momentum exact, on every Keras backend.
    """

    def __init__(self, learning_rate: float = 0.01, momentum: float = 0.9,
                 multipliers: dict[str, float] | None = None, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
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


def make_optimizer(model: keras.Model, lr: float, backbone_lr: float | None = None,
                   momentum: float = 0.9) -> keras.optimizers.Optimizer:
    """SGD at ``lr`` for the new layers and ``backbone_lr`` (default: the same) for the pretrained ones."""
    if not lr > 0 or not math.isfinite(lr) or (backbone_lr is not None and not 0 <= backbone_lr < math.inf):
        raise ValueError(f"Learning rates must be positive and finite, got lr={lr}, backbone_lr={backbone_lr}.")
    if backbone_lr is None or backbone_lr == lr:
        return keras.optimizers.SGD(learning_rate=lr, momentum=momentum)
    factor = backbone_lr / lr
    mults = {layer.name: factor for layer in model.layers if layer.weights and not is_new_layer(layer.name)}
    return LayerwiseSGD(learning_rate=lr, momentum=momentum, multipliers=mults)


def compile_classifier(model: keras.Model, lr: float, backbone_lr: float | None = None) -> keras.Model:
    """Compile with SGD, sparse categorical cross-entropy and accuracy."""
    model.compile(optimizer=make_optimizer(model, lr, backbone_lr),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


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


def train(model: keras.Model, train_set: ImageSet, preprocess: Preprocess, lr: float = 0.01,
          backbone_lr: float | None = None, steps: int | None = None, epochs: int | None = None,
          val_set: ImageSet | None = None, batch_size: int = 32, augment: bool = False, seed: int = 0,
          verbose: int = 0, callbacks: Sequence[keras.callbacks.Callback] = ()) -> keras.callbacks.History:
    """Compile and ``fit`` a classifier on an ``ImageSet``; ``history.history`` has loss/accuracy per epoch.

    ``backbone_lr`` sets a different rate for the pretrained layers (F. Yu: about 10x lower than the new
    head's). Freeze first (``surgery.freeze``): ``train`` compiles, so ``trainable`` flags are read here.
    """
    n_epochs, per_epoch = schedule(len(train_set.labels), batch_size, steps, epochs)
    compile_classifier(model, lr, backbone_lr)
    data = make_batches(train_set.images, train_set.labels, preprocess, batch_size=batch_size,
                        shuffle=True, augment=augment, seed=seed)
    data = _repeat(data)
    val = None
    if val_set is not None:
        val = make_batches(val_set.images, val_set.labels, preprocess, batch_size=batch_size)
    return model.fit(data, epochs=n_epochs, steps_per_epoch=per_epoch, validation_data=val,
                     verbose=verbose, callbacks=list(callbacks), shuffle=False)  # the pipeline shuffles


def _repeat(data):
    """Repeat a tf.data pipeline so ``steps_per_epoch`` may exceed one pass; PyDatasets loop by themselves."""
    return data.repeat() if hasattr(data, "repeat") else data


def predict_proba(model: keras.Model, images: np.ndarray, preprocess: Preprocess,
                  batch_size: int = 64) -> np.ndarray:
    """Class probabilities for uint8 images, batch by batch."""
    return evaluation.predict(model, images, preprocess, batch_size=batch_size)


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, per-class accuracy (recall) and the confusion matrix, as plain Python for JSON."""
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y_true, y_pred, labels=range(len(classes)))
    totals = cm.sum(axis=1)
    per_class = {c: (float(cm[i, i] / totals[i]) if totals[i] else float("nan"))
                 for i, c in enumerate(classes)}
    return {"accuracy": float(np.mean(np.asarray(y_true) == np.asarray(y_pred))),
            "per_class_accuracy": per_class, "confusion_matrix": cm.tolist(),
            "classes": list(classes), "n_test": int(len(y_true))}


def evaluate(model: keras.Model, test_set: ImageSet, preprocess: Preprocess, batch_size: int = 64) -> dict:
    """``classification_report`` of ``model`` on ``test_set``; :class:`DivergedError` when its outputs are not
    finite (a diverged model has no accuracy)."""
    probs = predict_proba(model, test_set.images, preprocess, batch_size)
    check_finite(probs, "the model's outputs on the test images")
    return classification_report(test_set.labels, probs.argmax(axis=1), test_set.classes)


class DivergedError(ValueError):
    """Training diverged: the loss or the outputs became NaN or infinite (notebook ``03_learning_rate``)."""


def check_finite(values, what: str) -> None:
    """Raise :class:`DivergedError` naming ``what`` and where it first stopped being finite.

    ``values``: per-step or per-epoch losses (a list) or an output array. Used by ``recipes.run``
    (``python -m course_utils train``) and the sweep engine (``experiments.Engine``)."""
    array = np.asarray(values, dtype="float64").ravel()
    bad = np.flatnonzero(~np.isfinite(array))
    if len(bad):
        where = f" (at {bad[0] + 1} of {len(array)})" if np.ndim(values) == 1 and len(array) > 1 else ""
        raise DivergedError(f"training diverged: {what} became {array[bad[0]]}{where}; "
                            "lower the learning rate (e.g. 10x)")


def diverged_report(classes: Sequence[str], n_test: int, reason: str) -> dict:
    """The report of a diverged run: ``diverged`` true and no accuracy (None, so it stays strict JSON)."""
    return {"diverged": True, "reason": str(reason), "accuracy": None, "per_class_accuracy": None,
            "confusion_matrix": None, "classes": list(classes), "n_test": int(n_test)}


class Timer:
    """``with Timer() as t: ...``; then ``t.seconds``."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


# --------------------------------------------------------------------------------------------------
# Cached activations and sweeps (notebooks 04_freezing, 05_bottleneck_features, 06_extension_layers)


def activations(part: keras.Model, data: ImageSet | np.ndarray, preprocess: Preprocess | None = None,
                batch_size: int = 64) -> np.ndarray:
    """Outputs of ``part`` (e.g. a prefix from ``surgery.split_at_block``) for an ``ImageSet`` (preprocessed
    with ``preprocess``) or for an array of earlier activations, as float32 numpy (notebook ``04_freezing``)."""
    if isinstance(data, ImageSet):
        if preprocess is None:
            raise ValueError("pass the backbone's preprocess function to compute activations of images")
        return evaluation.predict(part, data.images, preprocess, batch_size=batch_size)
    return evaluation.predict(part, np.asarray(data), batch_size=batch_size)


def _reset_optimizer(model: keras.Model) -> None:
    """Zero a compiled model's optimizer state (step count, momentum) so that the next ``fit`` starts afresh
    without recompiling, i.e. without tracing the training step again (sweeps in notebooks 05 and 06)."""
    optimizer = model.optimizer
    keep = {id(getattr(optimizer, "_learning_rate", None))}
    for var in optimizer.variables:
        if id(var) not in keep and var.name != "learning_rate":
            var.assign(keras.ops.zeros(var.shape, dtype=var.dtype))


def fit_arrays(model: keras.Model, x: np.ndarray, y: np.ndarray, lr: float = 0.01,
               backbone_lr: float | None = None, epochs: int | None = None, steps: int | None = None,
               batch_size: int = 32, verbose: int = 0) -> keras.callbacks.History:
    """Compile (SGD, as ``train``) and fit on in-memory arrays: cached activations or features.

    ``steps`` gives about that many updates in whole passes (``schedule``), so tiny training sets still get
    the same number of updates as large ones (notebooks ``04``–``06``). Seed first
    (``settings.seed_everything``): the shuffling follows the Keras seed.
    """
    batch_size = max(1, min(batch_size, len(y)))
    n_epochs, _ = schedule(len(y), batch_size, steps, epochs)
    compile_classifier(model, lr, backbone_lr)
    return model.fit(x, y, batch_size=batch_size, epochs=n_epochs, shuffle=True, verbose=verbose)


def _prefix_cache(model: keras.Model, split, preprocess: Preprocess, deepest: int,
                  max_cache_mb: float) -> tuple[keras.Model | None, np.ndarray | None, np.ndarray | None]:
    """(suffix, train activations, test activations) entering the first of the last ``deepest`` blocks,
    or Nones when the cache would exceed ``max_cache_mb`` (shared by the notebook-04 sweeps)."""
    from course_utils import surgery
    from course_utils.backbones import block_names

    blocks = block_names(model)
    prefix, suffix = surgery.split_at_block(model, blocks[len(blocks) - max(deepest, 1)])
    per_image_mb = float(np.prod(prefix.output.shape[1:])) * 4 / 2**20
    if per_image_mb * (len(split.train.labels) + len(split.test.labels)) > max_cache_mb:
        return None, None, None
    return suffix, activations(prefix, split.train, preprocess), activations(prefix, split.test, preprocess)


def _finetune_run(model: keras.Model, split, preprocess: Preprocess, k: int, cache: tuple, epochs: int,
                  lr: float, backbone_lr: float, batch_size: int, bn: str, seed: int, verbose: int,
                  reuse_compiled: bool = False) -> dict:
    """Train the last ``k`` blocks from the current weights (cached path when ``cache`` covers them); a row.

    ``reuse_compiled``: the cached suffix is already compiled for these trainable layers and rates; only its
    optimizer state is reset (no new trace of the training step)."""
    from course_utils import surgery
    from course_utils.backbones import block_names
    from course_utils.settings import seed_everything

    blocks = block_names(model)
    suffix, x_train, x_test, cache_k = cache
    seed_everything(seed)
    counts = surgery.freeze(model, train_last=k, bn=bn)
    before = surgery.batchnorm_moving_stats(model)
    cached = suffix is not None and k <= cache_k
    with Timer() as timer:
        if cached and reuse_compiled and getattr(suffix, "optimizer", None) is not None:
            _reset_optimizer(suffix)
            history = suffix.fit(x_train, split.train.labels, batch_size=max(1, min(batch_size, len(x_train))),
                                 epochs=epochs, shuffle=True, verbose=verbose)
        elif cached:
            history = fit_arrays(suffix, x_train, split.train.labels, lr, backbone_lr, epochs=epochs,
                                 batch_size=batch_size, verbose=verbose)
        else:
            history = train(model, split.train, preprocess, lr=lr, backbone_lr=backbone_lr, epochs=epochs,
                            batch_size=batch_size, seed=seed, verbose=verbose)
    if cached:
        probs = evaluation.predict(suffix, x_test)
    else:
        probs = predict_proba(model, split.test.images, preprocess)
    report = classification_report(split.test.labels, probs.argmax(axis=1), split.test.classes)
    return {
        "train_last": k, "first_trained": blocks[len(blocks) - k] if k else "(new layers only)",
        "trainable": counts["trainable"], "non_trainable": counts["non_trainable"],
        "accuracy": report["accuracy"], "train_accuracy": float(history.history["accuracy"][-1]),
        "seconds": round(timer.seconds, 2), "path": "cached" if cached else "images", "bn": bn,
        "batch_size": batch_size, "lr": lr, "backbone_lr": backbone_lr, "seed": seed,
        "bn_drift": surgery.batchnorm_drift(before, surgery.batchnorm_moving_stats(model)),
    }


def _warm_up_new_layers(model: keras.Model, x, y: np.ndarray, preprocess: Preprocess | None, lr: float,
                        epochs: int, batch_size: int, seed: int) -> None:
    """Train only the layers ``replace_head`` added, on the features of ``x`` (images or cached activations
    entering ``model``): "train the head first, then unfreeze"."""
    from course_utils import surgery
    from course_utils.settings import seed_everything

    seed_everything(seed)
    features_part, new_part = surgery.split_before_new_layers(model)
    fit_arrays(new_part, activations(features_part, x, preprocess), y, lr, epochs=epochs, batch_size=batch_size)


def freeze_depth_sweep(model: keras.Model, split, preprocess: Preprocess,
                       train_last: Sequence[int | None] = (0, 1, 2, 4, None), epochs: int = 3,
                       lr: float = 0.01, backbone_lr: float | None = None, batch_size: int = 32,
                       bn: str = "inference", head_epochs: int = 0, seed: int = 0,
                       max_cache_mb: float = 1024.0, verbose: int = 0) -> list[dict]:
    """Fine-tune ``model`` (from ``surgery.replace_head``) once per entry of ``train_last`` and evaluate
    each on ``split.test`` (notebook ``04_freezing``: Maybury's "last layers" vs all, Chu's F vs T).

    ``train_last=k`` trains the last ``k`` blocks plus the new layers (``surgery.freeze``); ``0`` is the
    frozen network with a new head (Chu's F(1-7)R(8)), ``None`` every block (T(1-7)R(8)). Every run starts
    from the same weights: the pretrained backbone and a new head that, when ``head_epochs`` > 0, was first
    trained alone for that many epochs on the frozen features (the "head first, then unfreeze" recipe).
    Each run then trains ``epochs`` epochs at ``lr`` for the new layers and ``backbone_lr`` (default: ``lr``)
    for the pretrained ones, with BatchNorm mode ``bn``.

    Speed: the frozen blocks before the deepest partial run are computed once per image and the trained
    part learns from those cached activations (exactly equivalent: nothing in a frozen prefix changes while
    training when there is no augmentation); runs that train every block go through the images. The cache
    is skipped when it would exceed ``max_cache_mb``.

    Returns one row per run: ``train_last``, ``first_trained`` (block), ``trainable`` and ``non_trainable``
    parameter counts, test ``accuracy``, last-epoch ``train_accuracy`` (measured while training, so with
    dropout and, for ``bn="train"``, batch statistics), training ``seconds``, ``path`` ("cached" or
    "images"), ``bn``, ``batch_size``, ``lr``, ``backbone_lr``, ``seed`` and ``bn_drift``
    (``surgery.batchnorm_drift`` per layer). ``model`` is left with the starting weights (pretrained
    backbone, warmed-up head) and a frozen backbone, ready for another sweep.
    """
    from course_utils import surgery
    from course_utils.backbones import block_names

    n_blocks = len(block_names(model))
    ks = [n_blocks if k is None else int(k) for k in train_last]
    if any(k < 0 or k > n_blocks for k in ks):
        raise ValueError(f"train_last values must be between 0 and {n_blocks} (or None for all), got {list(train_last)}")
    backbone_lr = lr if backbone_lr is None else backbone_lr
    surgery.freeze(model)
    partial = [k for k in ks if k < n_blocks]
    cache_k = max(partial) if partial else -1
    suffix, x_train, x_test = (_prefix_cache(model, split, preprocess, cache_k, max_cache_mb) if partial
                               else (None, None, None))
    if head_epochs:
        _warm_up_new_layers(suffix if suffix is not None else model, x_train if suffix is not None else split.train,
                            split.train.labels, preprocess, lr, head_epochs, batch_size, seed)
    start = model.get_weights()
    rows = []
    for k in ks:
        model.set_weights(start)
        rows.append(_finetune_run(model, split, preprocess, k, (suffix, x_train, x_test, cache_k), epochs, lr,
                                  backbone_lr, batch_size, bn, seed, verbose))
    model.set_weights(start)
    surgery.freeze(model)
    return rows


def batchnorm_mode_comparison(model: keras.Model, split, preprocess: Preprocess, train_last: int = 2,
                              batch_sizes: Sequence[int] = (1, 32), modes: Sequence[str] = ("inference", "train"),
                              epochs: int = 3, lr: float = 0.01, backbone_lr: float | None = None,
                              reference_batch: int = 32, seeds: Sequence[int] = (0,), verbose: int = 0) -> list[dict]:
    """Fine-tune the last ``train_last`` blocks once per (batch size, BatchNorm mode, seed), all from ``model``'s
    current weights, and evaluate on ``split.test`` (notebook ``04_freezing``, the BatchNorm pitfall).

    The learning rates scale with the batch size (``lr * batch_size / reference_batch``, the linear
    scaling rule), so every run moves the weights about as far per epoch and only the batch statistics
    differ. ``bn="train"`` normalises each batch with its own mean and variance while training and updates
    the moving statistics; ``bn="inference"`` keeps the ImageNet statistics. The seeds change the batch order
    and dropout. Rows as ``freeze_depth_sweep``'s, plus ``steps`` (``train_accuracy`` is measured in the
    training mode, i.e. with batch statistics for ``bn="train"``; ``accuracy`` always uses the moving
    statistics). ``model`` is left as it was. The frozen blocks run once per image (cached activations).
    """
    import math

    from course_utils import surgery
    from course_utils.backbones import block_names

    if not 0 < train_last < len(block_names(model)):
        raise ValueError(f"train_last must be between 1 and {len(block_names(model)) - 1}, got {train_last}")
    backbone_lr = lr if backbone_lr is None else backbone_lr
    surgery.freeze(model)
    suffix, x_train, x_test = _prefix_cache(model, split, preprocess, train_last, float("inf"))
    start = model.get_weights()
    rows = []
    for batch_size in batch_sizes:
        scale = batch_size / reference_batch
        for mode in modes:
            for i, seed in enumerate(seeds):  # the seeds of one (batch size, mode) share one compiled step
                model.set_weights(start)
                row = _finetune_run(model, split, preprocess, train_last, (suffix, x_train, x_test, train_last),
                                    epochs, lr * scale, backbone_lr * scale, batch_size, mode, seed, verbose,
                                    reuse_compiled=i > 0)
                row["steps"] = epochs * math.ceil(len(split.train.labels) / batch_size)
                rows.append(row)
    model.set_weights(start)
    surgery.freeze(model)
    return rows


def extension_finetune_comparison(base: keras.Model, split, preprocess: Preprocess,
                                  extensions: dict[str, Sequence[int]], train_last: int = 2, epochs: int = 3,
                                  lr: float = 0.01, backbone_lr: float | None = None, batch_size: int = 32,
                                  head_epochs: int = 10, seed: int = 0, verbose: int = 0) -> dict[str, dict]:
    """Fine-tune the last ``train_last`` blocks of ``base`` once per entry of ``extensions`` (label -> extension
    units, ``()`` for the plain head), each with its own new layers (``surgery.replace_head``), and evaluate on
    ``split.test`` (notebook ``06_extension_layers``: Pittaras et al.'s FT3-ex on a budget).

    Each run follows ``freeze_depth_sweep``'s protocol (new layers first for ``head_epochs`` epochs on the
    frozen features, then ``epochs`` epochs with the blocks, BatchNorm in inference mode) and starts from the
    pretrained weights; the frozen blocks are computed once per image for all runs. Returns one row per label,
    as ``freeze_depth_sweep``'s plus ``extension_units``. ``base`` is left with its pretrained weights.
    """
    from course_utils import surgery
    from course_utils.backbones import block_names

    if not extensions:
        raise ValueError("give at least one extension, e.g. {'plain head': (), '1 x 256': (256,)}")
    num_classes = len(split.train.classes)
    pretrained = base.get_weights()
    backbone_lr = lr if backbone_lr is None else backbone_lr
    shared = None
    rows = {}
    try:
        for label, units in extensions.items():
            model = surgery.replace_head(base, num_classes, extension_units=units, seed=seed)
            n_blocks = len(block_names(model))
            if not 0 < train_last < n_blocks:
                raise ValueError(f"train_last must be between 1 and {n_blocks - 1}, got {train_last}")
            surgery.freeze(model)
            if shared is None:
                _, x_train, x_test = shared = _prefix_cache(model, split, preprocess, train_last, float("inf"))
            _, suffix = surgery.split_at_block(model, block_names(model)[n_blocks - train_last])
            if head_epochs:
                _warm_up_new_layers(suffix, x_train, split.train.labels, None, lr, head_epochs, batch_size, seed)
            row = _finetune_run(model, split, preprocess, train_last, (suffix, x_train, x_test, train_last), epochs,
                                lr, backbone_lr, batch_size, "inference", seed, verbose)
            rows[label] = {**row, "extension_units": [int(u) for u in units]}
            base.set_weights(pretrained)
    finally:
        base.set_weights(pretrained)
    return rows


def per_class_finetune_sweep(model: keras.Model, split, preprocess: Preprocess, per_class: Sequence[int],
                             seeds: Sequence[int], train_last: int = 2, steps: int = 60, lr: float = 0.01,
                             backbone_lr: float | None = None, batch_size: int = 16) -> list[list[float]]:
    """Test accuracy of fine-tuning the last ``train_last`` blocks + the new head on ``n`` images per class,
    for each ``n`` in ``per_class`` and each seed (notebook ``05_bottleneck_features``).

    The ``n`` images are ``data.stratified_sample(split.train.labels, n, seed)``, the same ones
    ``features.probe_sweep`` uses, so probes and fine-tuning see the same images. Every run starts from
    ``model``'s weights and makes ``steps`` SGD updates of ``batch_size`` images (so small sets are not
    under-trained), on cached activations of the frozen blocks (exact: no augmentation, BatchNorm in
    inference mode); the training step is compiled once for all runs.
    Returns ``accuracies[i][j]`` for ``per_class[i]`` and ``seeds[j]``, the format of
    ``plots.sweep_curve``.
    """
    from course_utils import surgery
    from course_utils.backbones import block_names
    from course_utils.data import stratified_sample
    from course_utils.settings import seed_everything

    blocks = block_names(model)
    if not 0 <= train_last < len(blocks):
        raise ValueError(f"train_last must be between 0 and {len(blocks) - 1}, got {train_last}")
    start = model.get_weights()
    surgery.freeze(model)
    prefix, suffix = surgery.split_at_block(model, blocks[len(blocks) - max(train_last, 1)])
    x_pool = activations(prefix, split.train, preprocess)
    x_test = activations(prefix, split.test, preprocess)
    y_pool = split.train.labels
    surgery.freeze(model, train_last=train_last)
    compile_classifier(suffix, lr, backbone_lr)  # once: every run has the same trainable layers
    results = []
    for n in per_class:
        accs = []
        for seed in seeds:
            idx = stratified_sample(y_pool, int(n), seed)
            model.set_weights(start)
            _reset_optimizer(suffix)
            seed_everything(seed)
            batch = max(1, min(batch_size, len(idx)))
            # exactly `steps` batches in one pass: consecutive seeded permutations of the n images, so tiny sets
            # pay the per-epoch overhead of fit() once instead of dozens of times
            rng = np.random.default_rng([int(seed), 5])
            order = np.concatenate([rng.permutation(idx) for _ in range(-(-steps * batch // len(idx)))])
            order = order[:steps * batch]
            suffix.fit(x_pool[order], y_pool[order], batch_size=batch, epochs=1, shuffle=False, verbose=0)
            probs = evaluation.predict(suffix, x_test)
            accs.append(float(np.mean(probs.argmax(axis=1) == split.test.labels)))
        results.append(accs)
    model.set_weights(start)
    surgery.freeze(model)
    return results


def train_head_on_features(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                           test_labels: np.ndarray, classes: Sequence[str], extension_units: Sequence[int] = (),
                           epochs: int | None = None, steps: int | None = None, lr: float = 0.01,
                           batch_size: int = 32, dropout: float = 0.2, seed: int = 0) -> tuple[keras.Model, dict]:
    """Train the layers ``replace_head`` would add (optional extension layers + head) on cached bottleneck
    features and evaluate them: ``(head model, report)`` (notebook ``06_extension_layers``).

    Exactly equivalent to training a frozen backbone + the same layers on the images (no augmentation,
    BatchNorm in inference mode), at a tiny fraction of the cost. The report is ``classification_report``'s
    plus ``trainable_params``, ``train_accuracy``, ``extension_units`` and ``seed``.
    """
    from course_utils import surgery
    from course_utils.settings import seed_everything

    seed_everything(seed)
    head = surgery.head_model(train_features.shape[1], len(classes), extension_units, dropout, seed)
    history = fit_arrays(head, train_features, train_labels, lr, epochs=epochs, steps=steps, batch_size=batch_size)
    probs = evaluation.predict(head, test_features)
    report = classification_report(test_labels, probs.argmax(axis=1), classes)
    report.update(trainable_params=surgery.count_params(head)["trainable"],
                  train_accuracy=float(history.history["accuracy"][-1]),
                  extension_units=[int(u) for u in extension_units], seed=int(seed))
    return head, report


def extension_sweep(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                    test_labels: np.ndarray, classes: Sequence[str], extensions: dict[str, Sequence[int]],
                    seeds: Sequence[int], epochs: int | None = None, steps: int | None = None, lr: float = 0.01,
                    batch_size: int = 32, dropout: float = 0.2) -> dict[str, list[dict]]:
    """``train_head_on_features`` for every extension (label -> units, ``()`` for the plain head) and seed,
    at the same budget: ``{label: [report per seed]}`` (notebook ``06_extension_layers``).

    Each configuration is compiled once; for each seed it gets the initial weights ``surgery.head_model``
    draws with that seed and a fresh optimizer, and the seed sets the batch order. Reports as
    ``train_head_on_features``'s.
    """
    from course_utils import surgery
    from course_utils.settings import seed_everything

    out: dict[str, list[dict]] = {}
    batch = max(1, min(batch_size, len(train_labels)))
    n_epochs, _ = schedule(len(train_labels), batch, steps, epochs)
    for label, units in extensions.items():
        model = None
        out[label] = []
        for seed in seeds:
            fresh = surgery.head_model(train_features.shape[1], len(classes), units, dropout, seed)
            if model is None:
                model = fresh
                compile_classifier(model, lr)
            else:
                model.set_weights(fresh.get_weights())
                _reset_optimizer(model)
            seed_everything(seed)
            history = model.fit(train_features, train_labels, batch_size=batch, epochs=n_epochs, shuffle=True,
                                verbose=0)
            probs = evaluation.predict(model, test_features)
            report = classification_report(test_labels, probs.argmax(axis=1), classes)
            report.update(trainable_params=surgery.count_params(model)["trainable"],
                          train_accuracy=float(history.history["accuracy"][-1]),
                          extension_units=[int(u) for u in units], seed=int(seed))
            out[label].append(report)
    return out


# --------------------------------------------------------------------------------------------------
# Learning curves of a new head, learning-rate sweeps (notebooks 01_why_finetune, 03_learning_rate)


def fit_head_with_history(train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray,
                          val_labels: np.ndarray, num_classes: int, lr: float = 0.01, epochs: int = 20,
                          batch_size: int = 32, dropout: float = 0.2,
                          seed: int = 0) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train the head ``surgery.replace_head`` would add on cached bottleneck features, evaluating on
    ``val_features`` after every epoch: ``(head model, history)`` with ``loss``, ``accuracy``, ``val_loss``
    and ``val_accuracy`` per epoch, the format of ``plots.learning_curves`` (notebook ``01_why_finetune``).

    Exactly a frozen pretrained backbone + new head trained on the images without augmentation, at a tiny
    fraction of the cost; ``surgery.copy_new_layers`` moves the trained head into the full model.
    """
    from course_utils import surgery
    from course_utils.settings import seed_everything

    seed_everything(seed)
    head = surgery.head_model(train_features.shape[1], num_classes, dropout=dropout, seed=seed)
    compile_classifier(head, lr)
    history = head.fit(train_features, train_labels, batch_size=max(1, min(batch_size, len(train_labels))),
                       epochs=int(epochs), shuffle=True, validation_data=(val_features, val_labels), verbose=0)
    return head, {k: [float(v) for v in values] for k, values in history.history.items()}


def _pretrained_trainable(model: keras.Model) -> list:
    """The trainable variables of the pretrained (not new) layers."""
    return [v for layer in model.layers if not is_new_layer(layer.name) for v in layer.trainable_weights]


def relative_change(before: Sequence[np.ndarray], after: Sequence[np.ndarray]) -> float:
    """``||after - before|| / ||before||`` over all the arrays together: how far weights moved from where they
    started (0: not at all; notebook ``03_learning_rate`` uses it to show rigidity at tiny learning rates)."""
    num = sum(float(np.sum((np.asarray(a, "float64") - np.asarray(b, "float64")) ** 2)) for a, b in zip(after, before))
    den = sum(float(np.sum(np.asarray(b, "float64") ** 2)) for b in before)
    return float(np.sqrt(num / den)) if den > 0 else float("nan")


class LRSweepResult:
    """What ``lr_sweep`` measured, per base learning rate (outer lists) and seed (inner lists).

    ``accuracy``: test accuracy; ``final_loss``: last-epoch training loss (nan or huge when training diverged);
    ``weight_change``: ``relative_change`` of the pretrained trainable weights; ``diverged``: final loss not
    finite or above twice the loss of a uniform guess (``2 ln N``); ``histories``: per rate, the first seed's
    training ``loss`` and ``accuracy`` per epoch; ``start_accuracy``: test accuracy of the starting point
    (pretrained backbone + untrained head).
    """

    def __init__(self, rates: Sequence[float], backbone_factor: float | None, train_last: int, num_classes: int,
                 start_accuracy: float) -> None:
        self.rates = [float(r) for r in rates]
        self.backbone_factor = backbone_factor
        self.train_last = int(train_last)
        self.num_classes = int(num_classes)
        self.start_accuracy = float(start_accuracy)
        self.accuracy: list[list[float]] = []
        self.final_loss: list[list[float]] = []
        self.weight_change: list[list[float]] = []
        self.diverged: list[list[bool]] = []
        self.histories: list[dict[str, list[float]]] = []

    def best_rate(self) -> float:
        """The rate with the highest mean test accuracy."""
        return self.rates[int(np.argmax([np.mean(a) for a in self.accuracy]))]

    def table(self) -> str:
        """One line per rate: mean ± std test accuracy, final training loss, weight change, divergence."""
        factor = ("one rate for all layers" if not self.backbone_factor
                  else f"pretrained layers at lr x {self.backbone_factor:g}")
        lines = [f"{factor}; starting point (untrained head): test accuracy {self.start_accuracy:.2f}",
                 f"{'lr':>8}  {'test acc':>11}  {'final loss':>10}  {'weights moved':>13}  diverged"]
        for i, rate in enumerate(self.rates):
            acc, loss, moved = np.mean(self.accuracy[i]), np.mean(self.final_loss[i]), np.mean(self.weight_change[i])
            spread = f"{acc:.2f} ± {np.std(self.accuracy[i]):.2f}"
            lines.append(f"{rate:>8g}  {spread:>11}  {loss:>10.3g}  {moved * 100:>12.3g}%  "
                         f"{sum(self.diverged[i])}/{len(self.diverged[i])} seeds")
        return "\n".join(lines)


def lr_sweep(model: keras.Model, split, preprocess: Preprocess, rates: Sequence[float], train_last: int = 2,
             epochs: int = 10, variants: Mapping[str, float | None] | None = None, seeds: Sequence[int] = (0,),
             batch_size: int = 32) -> dict[str, LRSweepResult]:
    """Fine-tune the last ``train_last`` blocks + the new head of ``model`` (from ``surgery.replace_head``)
    once per base learning rate in ``rates``, variant and seed, and evaluate on ``split.test`` (notebook
    ``03_learning_rate``, after Maybury 2015, Figs. 4-5: too high diverges, too low barely moves).

    ``variants`` maps a label to a ``backbone_factor``: the new layers train at the rate, the pretrained
    ones at the rate times the factor (None: the same rate). Default: ``{"one rate": None}``. Every run
    starts from the same weights (``model``'s: pretrained backbone, untrained head) and trains ``epochs``
    epochs of SGD with momentum 0.9; the test set is used once, after training. The frozen blocks are
    computed once per image for all runs (``surgery.split_at_block``) and only the trained part runs each
    step: exact, since nothing frozen changes without augmentation and with BatchNorm in inference mode.
    ``model`` gets its starting weights back at the end. Returns one ``LRSweepResult`` per variant label.
    """
    from course_utils import surgery
    from course_utils.backbones import block_names
    from course_utils.settings import seed_everything

    variants = {"one rate": None} if variants is None else dict(variants)
    blocks = block_names(model)
    if not 1 <= train_last < len(blocks):
        raise ValueError(f"train_last must be between 1 and {len(blocks) - 1}, got {train_last}")
    if not rates or any(float(r) <= 0 for r in rates):
        raise ValueError(f"rates must be positive learning rates, got {list(rates)}")
    if not variants or any(f is not None and f <= 0 for f in variants.values()):
        raise ValueError(f"variants must map labels to positive factors or None, got {variants}")
    start = model.get_weights()
    surgery.freeze(model)
    prefix, suffix = surgery.split_at_block(model, blocks[len(blocks) - train_last])
    x_train, x_test = activations(prefix, split.train, preprocess), activations(prefix, split.test, preprocess)
    y_train, y_test = split.train.labels, split.test.labels
    num_classes = len(split.train.classes)
    start_probs = evaluation.predict(suffix, x_test)
    start_accuracy = float(np.mean(start_probs.argmax(axis=1) == y_test))
    batch = max(1, min(batch_size, len(y_train)))
    results = {}
    for label, factor in variants.items():
        result = LRSweepResult(rates, factor, train_last, num_classes, start_accuracy)
        compiled = False
        for rate in result.rates:
            accs, losses, moved, diverged = [], [], [], []
            for j, seed in enumerate(seeds):
                model.set_weights(start)
                seed_everything(seed)
                surgery.freeze(model, train_last=train_last)
                before = [np.array(v) for v in _pretrained_trainable(model)]
                if not compiled:
                    compile_classifier(suffix, rate, rate * factor if factor else None)
                    compiled = True
                else:  # same optimizer, fresh state: what compiling again would give, without re-tracing
                    for var in suffix.optimizer.variables:
                        var.assign(keras.ops.zeros(var.shape, dtype=var.dtype))
                    suffix.optimizer.learning_rate = rate
                with np.errstate(all="ignore"):
                    history = suffix.fit(x_train, y_train, batch_size=batch, epochs=int(epochs), shuffle=True,
                                         verbose=0).history
                    probs = np.nan_to_num(evaluation.predict(suffix, x_test, batch_size=128), nan=0.0)
                    change = relative_change(before, [np.array(v) for v in _pretrained_trainable(model)])
                final = float(history["loss"][-1])
                accs.append(float(np.mean(probs.argmax(axis=1) == y_test)))
                losses.append(final)
                moved.append(change)
                diverged.append(bool(not np.isfinite(final) or final > 2 * math.log(num_classes)))
                if j == 0:
                    result.histories.append({k: [float(v) for v in values] for k, values in history.items()})
            result.accuracy.append(accs)
            result.final_loss.append(losses)
            result.weight_change.append(moved)
            result.diverged.append(diverged)
        results[label] = result
    model.set_weights(start)
    surgery.freeze(model)
    return results
