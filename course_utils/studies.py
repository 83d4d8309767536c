"""The notebooks' studies, each a list of RunSpecs run by the one :class:`runner.Runner`.

Notebooks ``01_why_finetune`` and ``02`` (a head on features with its learning curve), ``03_learning_rate``
(``lr_sweep``), ``04_freezing`` (``freeze_depth_sweep``, ``batchnorm_mode_comparison``),
``05_bottleneck_features`` (``per_class_finetune_sweep``) and ``06_extension_layers`` (``extension_sweep``,
``extension_finetune_comparison``: Pittaras' FT3-ex). A study takes the notebook's model (a backbone, or a
backbone with a ``surgery.replace_head`` head), its split and preprocess; every run starts from the
pretrained weights with a new head seeded by its seed, and the model gets its pretrained weights back.
Budgets given in ``epochs`` become ``steps = epochs * ceil(n_train / batch_size)``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from course_utils import evaluation, surgery, training
from course_utils.blocks import block_names
from course_utils.data import Split, stratified_sample
from course_utils.quiet import keras
from course_utils.runner import Runner
from course_utils.runs import RunSpec, Topology, make_run
from course_utils.settings import seed_everything

Preprocess = Callable[[np.ndarray], np.ndarray]


def study_runner(model: keras.Model, preprocess: Preprocess) -> Runner:
    """A Runner on ``model``'s backbone: the model itself, or its part before the layers ``replace_head``
    added. It shares their layers, so the model ends with its pretrained weights back."""
    if any(surgery.is_new_layer(layer.name) for layer in model.layers):
        model = surgery.split_before_new_layers(model)[0]
    return Runner(model, weights="", image_size=int(model.inputs[0].shape[1]), preprocess=preprocess)


def per_epoch(split: Split, batch_size: int) -> int:
    """Steps in one pass over the training images."""
    return max(1, math.ceil(len(split.train.labels) / max(1, min(batch_size, len(split.train.labels)))))


def depth_topology(k: int, n_blocks: int, units: Sequence[int] = ()) -> Topology:
    """The topology that trains the last ``k`` blocks (0: frozen; ``n_blocks``: all) with ``units``."""
    if units:
        return Topology("extension", blocks=k, units=tuple(int(u) for u in units))
    if k == 0:
        return Topology("frozen_head")
    return Topology("finetune_all") if k >= n_blocks else Topology("finetune_last", blocks=k)


def _spec(split: Split, runner: Runner, topology: Topology, seed: int, **fields: Any) -> RunSpec:
    return make_run(split.spec, topology, seed, backbone=runner.name, weights=runner.weights,
                    image_size=runner.size, **fields)


def _factor(lr: float, backbone_lr: float | None) -> float | None:
    return None if backbone_lr is None else backbone_lr / lr


def _row(run: RunSpec, report: dict, k: int, blocks: list[str]) -> dict:
    """A study's row: the run's settings and the Runner's report."""
    return {"train_last": k, "first_trained": blocks[len(blocks) - k] if k else "(new layers only)",
            "trainable": report.get("trainable_params"), "non_trainable": report.get("non_trainable_params"),
            "accuracy": report["accuracy"], "train_accuracy": report.get("train_accuracy"),
            "seconds": report["seconds"], "path": report["path"], "bn": run.bn, "batch_size": run.batch_size,
            "lr": run.lr, "backbone_lr": None if run.backbone_lr_factor is None else run.lr * run.backbone_lr_factor,
            "seed": run.seed, "steps": run.steps, "head_steps": run.head_steps, "bn_drift": report.get("bn_drift", {}),
            "weight_change": report.get("weight_change", {}), "report": report}


def freeze_depth_sweep(model: keras.Model, split: Split, preprocess: Preprocess,
                       train_last: Sequence[int | None] = (0, 1, 2, 4, None), epochs: int = 3, lr: float = 0.01,
                       backbone_lr: float | None = None, batch_size: int = 32, bn: str = "inference",
                       head_epochs: int = 0, seed: int = 0) -> list[dict]:
    """Fine-tune the last ``k`` blocks for each ``k`` in ``train_last`` (0: frozen backbone, Chu's F(1-7)R(8);
    None: every block, T(1-7)R(8)) and evaluate on ``split.test`` (notebook ``04_freezing``).

    ``head_epochs`` > 0 first trains the new head alone that long ("train the head first, then
    unfreeze"). One row per run: ``train_last``, ``first_trained``, ``trainable``/``non_trainable``
    parameters, ``accuracy``, ``train_accuracy``, ``seconds``, ``path`` (cached/naive), ``bn``, ``lr``,
    ``backbone_lr``, ``seed``, ``steps``, ``bn_drift`` (per BatchNorm layer), ``weight_change`` (per block)
    and the Runner's ``report``.
    """
    runner = study_runner(model, preprocess)
    blocks = runner.blocks
    ks = [len(blocks) if k is None else int(k) for k in train_last]
    if any(not 0 <= k <= len(blocks) for k in ks):
        raise ValueError(f"train_last values must be between 0 and {len(blocks)} (or None for all), got {list(train_last)}")
    steps, head = epochs * per_epoch(split, batch_size), head_epochs * per_epoch(split, batch_size)
    specs = [_spec(split, runner, depth_topology(k, len(blocks)), seed, lr=lr, steps=steps, batch_size=batch_size,
                   backbone_lr_factor=_factor(lr, backbone_lr), bn=bn, head_steps=head) for k in ks]
    runner.prepare(specs)
    return [_row(spec, runner.run(spec, split, measure=True), k, blocks) for spec, k in zip(specs, ks)]


def batchnorm_mode_comparison(model: keras.Model, split: Split, preprocess: Preprocess, train_last: int = 2,
                              batch_sizes: Sequence[int] = (1, 32), modes: Sequence[str] = ("inference", "train"),
                              epochs: int = 3, lr: float = 0.01, backbone_lr: float | None = None,
                              reference_batch: int = 32, seeds: Sequence[int] = (0,)) -> list[dict]:
    """Fine-tune the last ``train_last`` blocks once per (batch size, BatchNorm mode, seed) and evaluate on
    ``split.test`` (notebook ``04_freezing``, the BatchNorm pitfall). Rates scale with the batch size
    (``lr * batch_size / reference_batch``, the linear scaling rule), so only the batch statistics differ.
    Rows as ``freeze_depth_sweep``'s; ``accuracy`` always uses the moving statistics."""
    runner = study_runner(model, preprocess)
    if not 0 < train_last < len(runner.blocks):
        raise ValueError(f"train_last must be between 1 and {len(runner.blocks) - 1}, got {train_last}")
    rows = []
    for batch_size in batch_sizes:
        scale = batch_size / reference_batch
        for mode in modes:
            for seed in seeds:
                spec = _spec(split, runner, depth_topology(train_last, len(runner.blocks)), seed, lr=lr * scale,
                             steps=epochs * per_epoch(split, batch_size), batch_size=batch_size,
                             backbone_lr_factor=_factor(lr, backbone_lr), bn=mode)
                rows.append(_row(spec, runner.run(spec, split, measure=True), train_last, runner.blocks))
    return rows


def extension_finetune_comparison(base: keras.Model, split: Split, preprocess: Preprocess,
                                  extensions: Mapping[str, Sequence[int]], train_last: int = 2, epochs: int = 3,
                                  lr: float = 0.01, backbone_lr: float | None = None, batch_size: int = 32,
                                  head_epochs: int = 10, seed: int = 0) -> dict[str, dict]:
    """Pittaras' FT3-ex: fine-tune the last ``train_last`` blocks with each extension (label -> units, ``()``
    for the plain head), the new layers first trained alone for ``head_epochs`` epochs (notebook
    ``06_extension_layers``). Returns ``{label: row}``, rows as ``freeze_depth_sweep``'s plus
    ``extension_units``."""
    if not extensions:
        raise ValueError("give at least one extension, e.g. {'plain head': (), '1 x 256': (256,)}")
    runner = study_runner(base, preprocess)
    if not 0 < train_last < len(runner.blocks):
        raise ValueError(f"train_last must be between 1 and {len(runner.blocks) - 1}, got {train_last}")
    rows = {}
    for label, units in extensions.items():
        spec = _spec(split, runner, depth_topology(train_last, len(runner.blocks), units), seed, lr=lr,
                     steps=epochs * per_epoch(split, batch_size), batch_size=batch_size,
                     backbone_lr_factor=_factor(lr, backbone_lr), head_steps=head_epochs * per_epoch(split, batch_size))
        row = _row(spec, runner.run(spec, split, measure=True), train_last, runner.blocks)
        rows[label] = {**row, "extension_units": [int(u) for u in units]}
    return rows


def per_class_finetune_sweep(model: keras.Model, split: Split, preprocess: Preprocess, per_class: Sequence[int],
                             seeds: Sequence[int], train_last: int = 2, steps: int = 60, lr: float = 0.01,
                             backbone_lr: float | None = None, batch_size: int = 16) -> list[list[float]]:
    """Test accuracy of fine-tuning the last ``train_last`` blocks + a new head on ``n`` images per class
    (``data.stratified_sample(split.train.labels, n, seed)``, the subsets ``features.probe_sweep`` uses),
    ``steps`` updates each, for each ``n`` and seed: ``accuracies[i][j]`` (notebook ``05_bottleneck_features``)."""
    runner = study_runner(model, preprocess)
    if not 0 <= train_last < len(runner.blocks):
        raise ValueError(f"train_last must be between 0 and {len(runner.blocks) - 1}, got {train_last}")
    out = []
    for n in per_class:
        accs = []
        for seed in seeds:
            subset = Split(split.train.take(stratified_sample(split.train.labels, int(n), seed)), split.test, split.spec)
            spec = _spec(split, runner, depth_topology(train_last, len(runner.blocks)), seed, per_class=int(n), lr=lr,
                         steps=steps, batch_size=batch_size, backbone_lr_factor=_factor(lr, backbone_lr))
            accs.append(runner.run(spec, subset)["accuracy"])
        out.append(accs)
    return out


# --------------------------------------------------------------------------------------------------
# Learning-rate sweeps (notebook 03_learning_rate)


class LRSweepResult:
    """What ``lr_sweep`` measured, per base learning rate (outer lists) and seed (inner lists).

    ``accuracy``: test accuracy (nan for a diverged run); ``val_accuracy``: on the split's validation images
    (None without them; ``best_rate`` chooses on it); ``final_loss``: last-epoch training loss (not
    finite when training diverged); ``weight_change``: ``training.relative_change`` of the trained pretrained
    weights; ``diverged``: final loss not finite or above twice a uniform guess's (``2 ln N``);
    ``histories``: per rate, the first seed's ``loss`` and ``accuracy`` per epoch; ``start_accuracy``: test
    accuracy of the starting point (pretrained backbone + untrained head); ``reports``: the Runner's.
    """

    def __init__(self, rates: Sequence[float], backbone_factor: float | None, train_last: int, num_classes: int,
                 start_accuracy: float) -> None:
        self.rates = [float(r) for r in rates]
        self.backbone_factor = backbone_factor
        self.train_last = int(train_last)
        self.num_classes = int(num_classes)
        self.start_accuracy = float(start_accuracy)
        self.accuracy: list[list[float]] = []
        self.val_accuracy: list[list[float | None]] = []
        self.final_loss: list[list[float]] = []
        self.weight_change: list[list[float]] = []
        self.diverged: list[list[bool]] = []
        self.histories: list[dict[str, list[float]]] = []
        self.reports: list[list[dict]] = []

    def add(self, reports: Sequence[dict]) -> None:
        """Record one rate's reports (one per seed)."""
        losses = [(r.get("history") or {}).get("loss") or [float("nan")] for r in reports]
        self.accuracy.append([float("nan") if r["accuracy"] is None else r["accuracy"] for r in reports])
        self.val_accuracy.append([r.get("val_accuracy") for r in reports])
        self.final_loss.append([float(loss[-1]) for loss in losses])
        self.weight_change.append([(r.get("weight_change") or {}).get("all", float("nan")) for r in reports])
        self.diverged.append([bool(r.get("diverged") or not np.isfinite(loss[-1])
                                   or loss[-1] > 2 * math.log(self.num_classes)) for r, loss in zip(reports, losses)])
        history = reports[0].get("history") or {}
        self.histories.append({k: list(history.get(k, [])) for k in ("loss", "accuracy")})
        self.reports.append(list(reports))

    def best_rate(self) -> float:
        """The rate with the highest mean validation accuracy (a diverged run counts as 0; ties: the smaller
        rate). Choosing on the test set would make its number optimistic, so a split without validation data
        is refused."""
        if all(v is None for rate in self.val_accuracy for v in rate):
            raise ValueError("no validation accuracy to choose a rate on: load the data with "
                             "data.load_dataset(..., val_fraction=0.2); the test set is for the final number")
        scores = [(np.mean([0.0 if d or v is None else v for v, d in zip(vals, div)]), -rate)
                  for rate, vals, div in zip(self.rates, self.val_accuracy, self.diverged)]
        return self.rates[max(range(len(scores)), key=scores.__getitem__)]

    def table(self) -> str:
        """One line per rate: mean validation accuracy (what ``best_rate`` chooses on), mean ± std test
        accuracy, final training loss, weight change, divergence."""
        factor = ("one rate for all layers" if not self.backbone_factor
                  else f"pretrained layers at lr x {self.backbone_factor:g}")
        lines = [f"{factor}; starting point (untrained head): test accuracy {self.start_accuracy:.2f}",
                 f"{'lr':>8}  {'val acc':>7}  {'test acc':>11}  {'final loss':>10}  {'weights moved':>13}  diverged"]
        for i, rate in enumerate(self.rates):
            acc, loss, moved = np.mean(self.accuracy[i]), np.mean(self.final_loss[i]), np.mean(self.weight_change[i])
            spread = f"{acc:.2f} ± {np.std(self.accuracy[i]):.2f}"
            known = [v for v in self.val_accuracy[i] if v is not None]
            val = f"{np.mean(known):.2f}" if known else "-"
            lines.append(f"{rate:>8g}  {val:>7}  {spread:>11}  {loss:>10.3g}  {moved * 100:>12.3g}%  "
                         f"{sum(self.diverged[i])}/{len(self.diverged[i])} seeds")
        return "\n".join(lines)


def lr_sweep(model: keras.Model, split: Split, preprocess: Preprocess, rates: Sequence[float], train_last: int = 2,
             epochs: int = 10, variants: Mapping[str, float | None] | None = None, seeds: Sequence[int] = (0,),
             batch_size: int = 32, optimizer: str = "sgd", schedule: training.Schedule | str = "constant") -> dict[str, LRSweepResult]:
    """Fine-tune the last ``train_last`` blocks + a new head once per base rate, variant and seed, and
    evaluate on ``split.test`` (notebook ``03_learning_rate``, after Maybury 2015, Figs. 4-5: too high
    diverges, too low barely moves). ``variants`` maps a label to a ``backbone_factor`` (pretrained layers at
    rate x factor; None: the same rate); default ``{"one rate": None}``. ``optimizer`` ("sgd" with momentum
    0.9, or "adam") and ``schedule`` (constant, step, cosine) apply to every run. One ``LRSweepResult`` per
    variant label."""
    variants = {"one rate": None} if variants is None else dict(variants)
    runner = study_runner(model, preprocess)
    if not 1 <= train_last < len(runner.blocks):
        raise ValueError(f"train_last must be between 1 and {len(runner.blocks) - 1}, got {train_last}")
    if not rates or any(float(r) <= 0 for r in rates):
        raise ValueError(f"rates must be positive learning rates, got {list(rates)}")
    if not variants or any(f is not None and f <= 0 for f in variants.values()):
        raise ValueError(f"variants must map labels to positive factors or None, got {variants}")
    topology, every = Topology("finetune_last", blocks=train_last), per_epoch(split, batch_size)
    common = dict(batch_size=batch_size, optimizer=optimizer, schedule=schedule)
    start = runner.run(_spec(split, runner, topology, seeds[0], lr=min(rates), steps=0, **common), split)
    results = {}
    for label, factor in variants.items():
        result = LRSweepResult(rates, factor, train_last, len(split.train.classes), start["accuracy"])
        for rate in result.rates:
            specs = [_spec(split, runner, topology, seed, lr=rate, steps=epochs * every, backbone_lr_factor=factor,
                           **common) for seed in seeds]
            result.add([runner.run(spec, split, history=every, measure=True) for spec in specs])
        results[label] = result
    return results


# --------------------------------------------------------------------------------------------------
# A new head on cached bottleneck features (notebooks 01_why_finetune, 02_replace_softmax, 06_extension_layers)


def _fit_head(train_features: np.ndarray, train_labels: np.ndarray, num_classes: int, units: Sequence[int],
              lr: float, steps: int, batch_size: int, dropout: float, seed: int, every: int = 0,
              val: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[keras.Model, dict]:
    """``surgery.head_model`` trained by ``training.fit_steps`` on features, as the Runner trains a head;
    with ``val`` (features, labels) the history has ``val_loss``/``val_accuracy`` every ``every`` steps."""
    seed_everything(seed)
    head = surgery.head_model(train_features.shape[1], num_classes, units, dropout, seed)
    training.compile_classifier(head, lr)
    order = training.batch_order(len(train_labels), batch_size, steps, seed)
    on_chunk = None if val is None else (lambda step: evaluation.validation_metrics(head, *val))
    history = training.fit_steps(head, train_features, train_labels, order, every=every, on_chunk=on_chunk)
    return head, history


def _budget(n: int, batch_size: int, epochs: int | None, steps: int | None) -> int:
    """``steps``, or ``epochs`` passes over ``n`` examples."""
    if (steps is None) == (epochs is None):
        raise ValueError("Give exactly one of steps (iterations, as the papers count) or epochs.")
    return int(steps) if steps is not None else int(epochs) * math.ceil(n / max(1, min(batch_size, n)))


def train_head_on_features(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                           test_labels: np.ndarray, classes: Sequence[str], extension_units: Sequence[int] = (),
                           epochs: int | None = None, steps: int | None = None, lr: float = 0.01,
                           batch_size: int = 32, dropout: float = 0.2, seed: int = 0) -> tuple[keras.Model, dict]:
    """Train the layers ``replace_head`` would add (extension layers + head) on bottleneck features and
    evaluate them: ``(head model, report)`` (notebooks ``02``, ``06_extension_layers``). Exactly a frozen
    backbone + the same layers trained on the images (no augmentation, BatchNorm in inference mode). The
    report is ``evaluation.classification_report``'s plus ``trainable_params``, ``train_accuracy``,
    ``extension_units`` and ``seed``."""
    steps = _budget(len(train_labels), batch_size, epochs, steps)
    head, history = _fit_head(train_features, train_labels, len(classes), extension_units, lr, steps, batch_size,
                              dropout, seed, every=max(1, steps))
    probs = evaluation.predict(head, test_features)
    report = evaluation.classification_report(test_labels, probs.argmax(axis=1), classes)
    report.update(trainable_params=surgery.count_params(head)["trainable"], train_accuracy=history["accuracy"][-1],
                  extension_units=[int(u) for u in extension_units], seed=int(seed))
    return head, report


def extension_sweep(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                    test_labels: np.ndarray, classes: Sequence[str], extensions: Mapping[str, Sequence[int]],
                    seeds: Sequence[int], epochs: int | None = None, steps: int | None = None, lr: float = 0.01,
                    batch_size: int = 32, dropout: float = 0.2) -> dict[str, list[dict]]:
    """``train_head_on_features`` for every extension (label -> units, ``()`` for the plain head) and seed at
    the same budget: ``{label: [report per seed]}`` (notebook ``06_extension_layers``, frozen backbone)."""
    return {label: [train_head_on_features(train_features, train_labels, test_features, test_labels, classes, units,
                                           epochs, steps, lr, batch_size, dropout, seed)[1] for seed in seeds]
            for label, units in extensions.items()}


def fit_head_with_history(train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray,
                          val_labels: np.ndarray, num_classes: int, lr: float = 0.01, epochs: int = 20,
                          batch_size: int = 32, dropout: float = 0.2,
                          seed: int = 0) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train a new head on bottleneck features, evaluating on ``val_features`` after every epoch:
    ``(head model, history)`` with ``loss``, ``accuracy``, ``val_loss`` and ``val_accuracy`` per epoch, the
    format of ``plots.learning_curves`` (notebook ``01_why_finetune``). ``surgery.copy_new_layers`` moves the
    trained head into the full model."""
    every = _budget(len(train_labels), batch_size, 1, None)
    head, history = _fit_head(train_features, train_labels, num_classes, (), lr, every * int(epochs), batch_size,
                              dropout, seed, every, (val_features, val_labels))
    return head, {k: v for k, v in history.items() if k != "step"}
