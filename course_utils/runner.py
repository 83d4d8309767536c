"""The one Runner: builds the model of a :class:`runs.RunSpec`, trains it, evaluates it (notebook ``07_experiments``).

Every study (``studies``), sweep (``experiments.run_sweep``, ``python -m course_utils sweep``) and the
benchmark run through :meth:`Runner.run`. It picks one of two paths and they give the same numbers:

- **cached**: when a prefix of the network is frozen and acts the same while training (no augmentation, no
  dropout in it, its BatchNorm in inference mode), the prefix's activations come from the
  :class:`activations.ActivationCache` (one forward pass per image for all runs) and only the rest of the
  network trains on them;
- **naive** (``cache=False``, or no frozen prefix): the whole network, images in, every step.

Both train on the same batches (``training.batch_order``) with the same initial weights. With ``cache=True``
a compiled trained part is also reused across runs of the same shape (fresh weights copied in,
``training.reset_optimizer``), so the training step is traced once; ``cache=False`` compiles every run
afresh, as a plain Keras script would (the baseline of ``benchmarks/cache_speedup.py``). ``reinit_top`` re-initialises its blocks (BatchNorm included) and trains them
at the full rate with their BatchNorm in training mode: no pretrained statistics are left to protect.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import numpy as np

from course_utils import backbones, data, evaluation, surgery, training
from course_utils.blocks import block_names, layer_blocks
from course_utils.activations import ActivationCache
from course_utils.features import fit_probe
from course_utils.quiet import keras
from course_utils.runs import RunSpec
from course_utils.settings import seed_everything

_TRAINING_DEPENDENT = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
                       "GaussianNoise", "GaussianDropout", "AlphaDropout")


class Runner:
    """Runs RunSpecs on one backbone, keeping its pristine weights and an :class:`ActivationCache`.

    ``backbone``: a name (loaded with ``backbones.load_backbone``) or a loaded Keras model (then pass its
    ``preprocess``). ``cache=False`` forces the naive path; ``disk_cache=False`` keeps activations in memory
    only. ``passes`` counts the forward passes made for cached activations (issue 12).
    """

    def __init__(self, backbone: str | keras.Model = "efficientnet_lite0", weights: str = "imagenet",
                 image_size: int = 224, cache: bool = True, disk_cache: bool = True,
                 preprocess: Callable | None = None) -> None:
        if isinstance(backbone, keras.Model):
            if preprocess is None:
                raise ValueError("pass preprocess= with a loaded model (e.g. backbones.get_preprocess(name))")
            self.base, self.name = backbone, backbone.name
        else:
            self.base, self.name = backbones.load_backbone(backbone, weights=weights, input_size=image_size), backbone
            preprocess = backbones.get_preprocess(backbone)
        self.weights, self.size, self.cache = str(weights), int(image_size), cache
        self.preprocess = preprocess
        self.blocks = block_names(self.base)
        self._owner = layer_blocks(self.base)
        self._initial = {layer.name: [np.array(v) for v in layer.variables]
                         for layer in self.base.layers if layer.variables}
        self._dirty: set[str] = set()
        self.activations = ActivationCache(self.base, preprocess, self.name, self.weights, self.size, disk=disk_cache)
        self._compiled: dict[tuple, keras.Model] = {}
        self._splits: dict[tuple, data.Split] = {}
        self.fallbacks: dict[str, int] = {}  # why runs took the naive path, and how many

    @property
    def passes(self) -> int:
        """Forward passes over images made to fill the activation cache."""
        return self.activations.passes

    # ---- data and weights
    def reset_weights(self) -> None:
        """Put the pretrained values back into the layers runs changed (they train shared layers in place)."""
        for name in sorted(self._dirty):
            for variable, value in zip(self.base.get_layer(name).variables, self._initial[name]):
                variable.assign(value)
        self._dirty.clear()

    def split(self, run: RunSpec) -> data.Split:
        """The run's data (``data.load_dataset``), loaded once per (dataset, sample, seed)."""
        key = (run.dataset, run.per_class, run.test_per_class, run.test_fraction, run.val_fraction, run.seed)
        if key not in self._splits:
            self._splits = {key: data.load_dataset(
                run.dataset, image_size=self.size, per_class=run.per_class, seed=run.seed,
                test_fraction=run.test_fraction, test_per_class=run.test_per_class, val_fraction=run.val_fraction)}
        return self._splits[key]

    # ---- which path
    def train_last(self, run: RunSpec) -> int:
        """How many of the last blocks train (0: only the new layers)."""
        kind, blocks = run.topology.kind, run.topology.blocks
        if kind == "finetune_all":
            return len(self.blocks)
        if kind in {"finetune_last", "reinit_top", "extension"}:
            if blocks >= len(self.blocks):
                raise ValueError(f"{run.topology.label}: blocks={blocks} but {self.name} has only "
                                 f"{len(self.blocks)} blocks; use finetune_all to train every block")
            return blocks
        return 0

    def plan(self, run: RunSpec) -> tuple[str | None, str]:
        """(boundary layer or None, why): whether ``run`` can train on cached activations."""
        if not self.cache:
            return None, "cache off (--no-cache): naive path"
        if run.augment:
            return None, "augmentation changes the images every step, so the prefix must run every time"
        at = surgery.boundary(self.base, self.train_last(run))
        if at is None:
            return None, "no frozen prefix (every block trains)"
        deepest = surgery.boundary(self.base, 0) if run.head_steps else at  # the warm-up trains on features
        names = [layer.name for layer in self.base.layers]
        moving = [layer.name for layer in self.base.layers[: names.index(deepest) + 1]
                  if type(layer).__name__ in _TRAINING_DEPENDENT]
        if moving:
            return None, f"the frozen prefix has layers that act differently while training ({moving[0]})"
        return at, f"cached activations of {at!r}"

    def prepare(self, runs: Iterable[RunSpec]) -> dict[str, int]:
        """Register the boundaries ``runs`` need (filled together, one forward pass per image); how many runs
        take each path, e.g. ``{"cached": 20, "naive": 4}``."""
        paths = {"cached": 0, "naive": 0}
        for run in runs:
            at, why = self.plan(run)
            if at is not None:
                self.activations.register(at)
                if run.head_steps:
                    self.activations.register(surgery.boundary(self.base, 0))
            else:
                self.fallbacks[why] = self.fallbacks.get(why, 0) + 1
            paths["naive" if at is None else "cached"] += 1
        return paths

    # ---- one run
    def run(self, run: RunSpec, split: data.Split | None = None, history: int = 0, measure: bool = False) -> dict:
        """Train and evaluate ``run`` (on ``split``, default: the run's own data): a report with accuracy,
        per_class_accuracy, confusion_matrix, classes, n_test, predictions, test_ids and test_labels (per test
        image, for ``evaluation.compare`` through ``results.correct``), n_train, n_val, val_accuracy (with a validation split), train_loss,
        train_accuracy, seconds and path; ``history`` > 0 adds the learning curve every that many steps,
        ``measure`` adds ``bn_drift`` and per-block ``weight_change`` (notebooks ``03``, ``04``)."""
        self.reset_weights()
        split = split or self.split(run)
        start = time.perf_counter()
        try:
            if run.topology.uses_training:
                out = self._train(run, split, history, measure)
            else:
                out = self._probe(run, split)
            predicted = out.pop("predicted")
            report = evaluation.classification_report(split.test.labels, predicted, split.test.classes)
            report["predictions"] = [int(p) for p in predicted]
        except evaluation.DivergedError as err:  # stored as diverged, never as an accuracy
            report = evaluation.diverged_report(split.test.classes, len(split.test.labels), str(err))
            out = {"path": "diverged", **({"history": err.history} if history and hasattr(err, "history") else {})}
        finally:
            self.reset_weights()
        val = getattr(split, "val", None)
        report.update(out, test_ids=list(split.test.ids), test_labels=[int(y) for y in split.test.labels],
                      n_train=int(len(split.train.labels)),
                      n_val=0 if val is None else int(len(val.labels)), seconds=round(time.perf_counter() - start, 3))
        return report

    def _inputs(self, at: str | None, image_set) -> np.ndarray:
        """What the trained part takes: the cached activations at ``at``, or the images (``at`` None)."""
        return image_set.images if at is None else self.activations.get(image_set, at)

    def _probe(self, run: RunSpec, split) -> dict:
        at = surgery.boundary(self.base, 0)
        if self.cache:
            train, test = (self.activations.get(s, at) for s in (split.train, split.test))
            path = "cached"
        else:
            extractor = keras.Model(self.base.inputs, self.base.get_layer(at).output)
            train, test = (evaluation.predict(extractor, s.images, self.preprocess) for s in (split.train, split.test))
            path = "naive"
        options = {} if run.topology.C is None else {"C": run.topology.C}  # else fit_probe's default C
        predicted = fit_probe(train, split.train.labels, run.topology.kind, seed=run.seed, **options).predict(test)
        return {"predicted": predicted, "path": path}

    def build(self, run: RunSpec, num_classes: int) -> keras.Model:
        """The flat model of ``run``: a new head seeded by ``run.seed``, re-initialised blocks for reinit_top."""
        seed_everything(run.seed)
        flat = surgery.replace_head(self.base, num_classes, extension_units=run.topology.units, seed=run.seed)
        k = self.train_last(run)
        trained = set(self.blocks[len(self.blocks) - k:]) if k else set()
        self._dirty |= {name for name, block in self._owner.items() if block in trained and name in self._initial}
        if run.topology.kind == "reinit_top":
            surgery.reinitialize(flat, sorted(trained), seed=run.seed)
        return flat

    def _unfreeze(self, run: RunSpec, flat: keras.Model) -> None:
        """``surgery.freeze`` as the run says; reinit_top's re-initialised BatchNorm layers train too."""
        k = self.train_last(run)
        surgery.freeze(flat, train_last=k, bn=run.bn)
        if run.topology.kind == "reinit_top":
            reinit = set(self.blocks[len(self.blocks) - k:])
            for layer in flat.layers:
                if self._owner.get(layer.name) in reinit and isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = True

    def _compiled_part(self, run: RunSpec, flat: keras.Model, at: str | None, phase: str, steps: int) -> keras.Model:
        """The compiled model that trains in ``phase`` ("head" warm-up or "main"), from ``at`` on.

        Runs of the same shape share one: its new layers take ``flat``'s fresh values (dropout seed state
        included) and its optimizer is reset, which is exactly the state of a freshly compiled copy."""
        head = phase == "head"
        schedule = run.schedule if not head and run.schedule.kind != "constant" else None
        factor = None if head else run.backbone_lr_factor
        key = (phase, at, run.topology.kind, run.topology.blocks, run.topology.units, int(flat.output.shape[-1]),
               run.bn, run.optimizer, factor, schedule and (schedule, run.lr, steps))
        model = self._compiled.get(key) if self.cache else None  # naive: compile afresh, as plain Keras would
        if model is None:
            model = surgery.cut(flat, at)[1] if at is not None else keras.Model(flat.inputs, flat.outputs)
            backbone_lr = None if factor is None else run.lr * factor
            training.compile_classifier(model, run.lr, optimizer=training.make_optimizer(
                model, run.lr, backbone_lr, kind=run.optimizer, schedule=schedule, steps=max(1, steps)))
            self._compiled[key] = model
            return model
        surgery.copy_new_layers(flat, model, state=True)
        training.reset_optimizer(model.optimizer, None if schedule else run.lr)
        return model

    def _phase(self, run: RunSpec, model: keras.Model, at: str | None, split, steps: int, stream: int,
               history: int, first_step: int) -> dict:
        """Train ``model`` (inputs at ``at``) for ``steps`` batches of ``training.batch_order``; its history."""
        preprocess = self.preprocess if at is None else None
        val = getattr(split, "val", None)
        on_chunk = None
        if history and val is not None:
            x_val = self._inputs(at, val)

            def on_chunk(step: int) -> dict:
                return evaluation.validation_metrics(model, x_val, val.labels, preprocess)

        order = training.batch_order(len(split.train.labels), run.batch_size, steps, run.seed, stream)
        out = training.fit_steps(model, self._inputs(at, split.train), split.train.labels, order, preprocess,
                                 run.seed if run.augment else None, history, on_chunk, first_step)
        try:
            evaluation.check_finite(out["loss"], f"the training loss at lr={run.lr:g}")
        except evaluation.DivergedError as err:
            err.history = out  # the curve up to the divergence, for the report
            raise
        return out

    def _train(self, run: RunSpec, split, history: int, measure: bool) -> dict:
        at, _ = self.plan(run)
        head_at = surgery.boundary(self.base, 0) if at is not None and run.head_steps else None
        for boundary in {at, head_at} - {None}:  # before any surgery: one pass over pristine weights
            self.activations.register(boundary)
        for image_set in (split.train, split.test, getattr(split, "val", None)):
            if at is not None and image_set is not None:
                self._inputs(at, image_set)
        flat = self.build(run, len(split.train.classes))
        curves = []
        if run.head_steps:  # "train the head first": only the new layers, on the frozen features
            surgery.freeze(flat)
            head = self._compiled_part(run, flat, head_at, "head", run.head_steps)
            curves.append(self._phase(run, head, head_at, split, run.head_steps, 8, history, 0))
            surgery.copy_new_layers(head, flat, state=True)  # the warmed-up head (a reused model has its own)
        self._unfreeze(run, flat)
        before = self._snapshot() if measure else None
        model = self._compiled_part(run, flat, at, "main", run.steps)
        curves.append(self._phase(run, model, at, split, run.steps, 7, history, run.head_steps))
        preprocess = self.preprocess if at is None else None
        probs = evaluation.predict(model, self._inputs(at, split.test), preprocess)
        evaluation.check_finite(probs, "the outputs on the test images")
        out = {"predicted": probs.argmax(axis=1), "path": "naive" if at is None else "cached",
               **{f"{k}_params": v for k, v in surgery.count_params(flat).items() if k != "total"},
               "train_loss": curves[-1]["loss"][-1] if curves[-1]["loss"] else None,
               "train_accuracy": curves[-1]["accuracy"][-1] if curves[-1]["accuracy"] else None}
        if getattr(split, "val", None) is not None:
            x_val = self._inputs(at, split.val)
            out["val_accuracy"] = evaluation.validation_metrics(model, x_val, split.val.labels, preprocess)["val_accuracy"]
        if history:
            out["history"] = {k: sum((c.get(k, []) for c in curves), []) for k in curves[-1]}
            out["history"]["unfreeze_step"] = run.head_steps
        if measure:
            out.update(self._measure(before))
        return out

    def _snapshot(self) -> dict[str, Any]:
        """BatchNorm moving statistics and the trainable pretrained weights per block, before training."""
        weights: dict[str, list[np.ndarray]] = {}
        for layer in self.base.layers:
            if layer.trainable_weights and layer.name in self._initial:
                weights.setdefault(self._owner[layer.name], []).extend(np.array(v) for v in layer.trainable_weights)
        return {"bn": surgery.batchnorm_moving_stats(self.base), "weights": weights}

    def _measure(self, before: dict[str, Any]) -> dict:
        """``bn_drift`` per BatchNorm layer and ``weight_change`` (``training.relative_change``) per block."""
        after: dict[str, list[np.ndarray]] = {}
        for layer in self.base.layers:
            if layer.trainable_weights and layer.name in self._initial:
                after.setdefault(self._owner[layer.name], []).extend(np.array(v) for v in layer.trainable_weights)
        change = {block: training.relative_change(values, after.get(block, values))
                  for block, values in before["weights"].items()}
        everything = [block for block in before["weights"] if block in after]
        change["all"] = training.relative_change(sum((before["weights"][b] for b in everything), []),
                                                 sum((after[b] for b in everything), []))
        return {"bn_drift": surgery.batchnorm_drift(before["bn"], surgery.batchnorm_moving_stats(self.base)),
                "weight_change": change}
