"""Chu et al.'s advice: freeze or fine-tune, from the distance and the images per class (notebooks
``08_domain_distance`` and ``09_capstone``).

:data:`CHU_TABLE3` is Chu et al. (2016), Table 3, verbatim: "Best practices for adapting pre-trained
networks where all but the last layer are copied and we compare freezing (F(1-7)R(8)) against fine-tuning
(T(1-7)R(8))". Their Tune is T(1-7)R(8): every copied layer fine-tuned, "setting the learning rate to 0.2
times that of random initialization". ``recommend`` measures a dataset (``domain``), finds the cell and
reports it; ``verify`` trains both sides on the same test images and decides with the one noise rule,
``evaluation.compare``. What the course adds (partial depths, a 0.1x rate) is labelled "course extension".
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from course_utils import backbones, blocks, data, domain, evaluation, runs, training
from course_utils.runner import Runner

CHU_SOURCE = "Chu et al. (2016), Best Practices for Fine-tuning Visual Classifiers to New Domains, Table 3"
# Sec. 4: "a low amount of target data as 1-20 images per class, a medium amount as 21-99 images per class,
# and a large amount as 100 or more images per class". (name, largest images per class in the level)
DATA_LEVELS: tuple[tuple[str, int], ...] = (("low", 20), ("medium", 99), ("high", 10**9))
DATA_RANGES = {"low": "1-20", "medium": "21-99", "high": ">=100"}
LEVELS = ("low", "medium", "high")
# Table 3, verbatim: rows cosine distance L (0.0-0.2), M (0.2-0.4), H (0.4-1.0); columns images per class
# L (1-20), M (21-99), H (>= 100).
CHU_TABLE3: dict[tuple[str, str], str] = {
    ("low", "low"): "Freeze", ("low", "medium"): "Try Freeze or Tune", ("low", "high"): "Tune",
    ("medium", "low"): "Try Freeze or Tune", ("medium", "medium"): "Tune", ("medium", "high"): "Tune",
    ("high", "low"): "Try Freeze or Tune", ("high", "medium"): "Tune", ("high", "high"): "Tune",
}
CHU_ADVICE = {"Freeze": "freeze", "Try Freeze or Tune": "try both", "Tune": "tune"}
CHU_TUNE_FACTOR = 0.2  # "setting the learning rate to 0.2 times that of random initialization"
WIDE_MARGIN = 0.10  # Tune losing to Freeze by more than this is first suspected of being under-trained
VERIFY_RATES = (0.01, 0.001)  # the new classifier's rates verify chooses from (Tune's copied layers: 0.2x)
VERIFY_STEPS = (40, 120)  # the budgets verify chooses from (Tune: as many head-only steps first)
VERIFY_VAL_FRACTION = 0.2  # of the training images, held out to choose the rate, steps and schedule
CHU_TEXT = {
    "freeze": "Freeze (F(1-7)R(8)): copy every pretrained layer, keep them frozen and train only the new "
              "classifier. Chu et al.: fine-tuning helps \"even with very few examples ... The exception being "
              "if the dataset distance is small and there is only a small amount of training data. In this "
              "case, freeze the copied layers.\"",
    "try both": "Try Freeze or Tune: here Chu et al. found \"no consistent winner between fine-tuning and "
                "freezing. In these situations we recommend trying both\"; run --verify to compare them on "
                "your data.",
    "tune": "Tune (T(1-7)R(8)): copy every pretrained layer and fine-tune all of them, the copied layers at "
            "0.2x the new classifier's learning rate.",
}
# Sec. 4, on re-initialising more than the last layer: the exception for high distance and much data.
CHU_REINIT_NOTE = ("Chu et al.: when source and target differ a lot and many labelled images are available, "
                   "\"randomly initializing offers equivalent or marginal improvement over copying when all "
                   "layers are then fine-tuned and offers a stronger benefit when the lowest layers are "
                   "frozen\".")
COURSE_EXTENSION = {
    "label": "course extension (not in Chu et al.)",
    "text": "A middle ground the course adds: fine-tune only the top 2 blocks, the pretrained layers at 0.1x "
            "the new classifier's rate (notebooks 03_learning_rate and 04_freezing).",
    "train_last": 2, "backbone_lr_factor": 0.1,
}


def data_level(images_per_class: int) -> str:
    """``"low"`` (1-20), ``"medium"`` (21-99) or ``"high"`` (>= 100 images per class; Chu's Sec. 4)."""
    if isinstance(images_per_class, bool) or int(images_per_class) != images_per_class or images_per_class < 1:
        raise ValueError(f"images per class must be a positive integer, got {images_per_class!r}")
    return next(level for level, upper in DATA_LEVELS if images_per_class <= upper)


def chu_cell(distance: float, images_per_class: int) -> dict[str, str]:
    """The cell of Table 3: ``{"distance": level, "data": level}``; ``distance`` on Chu's scale
    (``domain.calibrated_distance``). Notebook 08_domain_distance."""
    return {"distance": domain.distance_level(distance), "data": data_level(images_per_class)}


def chu_advice(cell: dict[str, str]) -> str:
    """``"freeze"``, ``"try both"`` or ``"tune"``: Table 3's entry for ``cell``."""
    return CHU_ADVICE[CHU_TABLE3[(cell["distance"], cell["data"])]]


def advice_text(cell: dict[str, str]) -> str:
    """Chu's advice for the cell as a sentence, with his note on re-initialising for high / high."""
    text = CHU_TEXT[chu_advice(cell)]
    return f"{text} {CHU_REINIT_NOTE}" if (cell["distance"], cell["data"]) == ("high", "high") else text


@dataclass
class Recommendation:
    """What ``recommend`` found (the ``recommend --json`` file; notebooks 08 and 09)."""

    spec: str
    images_per_class: int
    cell: dict[str, str]        # {"distance": "low|medium|high", "data": "low|medium|high"}
    chu_advice: str             # "freeze", "try both" or "tune"
    advice: str
    chu_table3_entry: str       # Table 3 verbatim: "Freeze", "Try Freeze or Tune" or "Tune"
    calibrated_distance: float  # on Chu's scale (domain.calibrated_distance): what the cell uses
    measures: dict[str, float]  # Lite0: distance (raw), corrected, mmd, confidence, n_images, image_size
    backbone: str
    n_blocks: int
    class_counts: dict[str, int] = field(default_factory=dict)
    course_extension: dict[str, Any] = field(default_factory=lambda: dict(COURSE_EXTENSION))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; for "try both", the command that compares the two sides."""
        out = asdict(self)
        if self.chu_advice == "try both":
            out["verify_command"] = (f"python -m course_utils recommend --data {self.spec} --per-class "
                                     f"{self.images_per_class} --verify")
        return out

    def commands(self) -> list[str]:
        """``train`` commands for Chu's Freeze and Tune (the sides his cell names)."""
        base = f"python -m course_utils train --data {self.spec} --per-class {self.images_per_class}"
        freeze = f"{base} --method head"
        tune = f"{base} --method finetune --unfreeze {self.n_blocks} --lr 0.01 --backbone-lr {0.01 * CHU_TUNE_FACTOR:g}"
        return {"freeze": [freeze], "tune": [tune], "try both": [freeze, tune]}[self.chu_advice]

    def describe(self) -> str:
        """The lines the command line prints."""
        counts = list(self.class_counts.values()) or [self.images_per_class]
        m, c = self.measures, self.cell
        return "\n".join([
            f"data: {self.spec} ({len(counts)} classes); images per class: {self.images_per_class} "
            f"(the train split has {min(counts)}-{max(counts)})",
            f"distance from ImageNet: {self.calibrated_distance:.3f} on Chu's scale (Lite0 corrected distance "
            f"{m['corrected']:.3f}, raw {m['distance']:.3f}, placed between the anchors of domain.ANCHORS; "
            f"{m['n_images']} images at {m['image_size']} px, {self.backbone})",
            f"cross-checks: linear MMD {m['mmd']:.2f} (relative), ImageNet confidence {m['confidence']:.2f}",
            f"Chu's Table 3 cell: {c['distance']} distance ({domain.DISTANCE_RANGES[c['distance']]}) x "
            f"{c['data']} data ({DATA_RANGES[c['data']]} images per class) -> {self.chu_table3_entry}",
            f"advice: {self.advice}",
            *[f"recipe: {cmd}" for cmd in self.commands()],
            f"{self.course_extension['label']}: {self.course_extension['text']}",
        ])


def recommend(spec: str, per_class: int | None = None, backbone: str = domain.DEFAULT_BACKBONE,
              image_size: int = 224, sample_per_class: int = 20, seed: int = 0,
              model: Any = None) -> Recommendation:
    """Measure a dataset and look up Chu et al.'s Table 3 (notebooks 08_domain_distance, 09_capstone).

    Images per class: the median of the train split, or ``per_class`` when you will use fewer. The distance
    uses ``sample_per_class`` training images per class; the anchors were measured at 224 px.
    """
    if per_class is not None and (isinstance(per_class, bool) or int(per_class) != per_class or per_class < 1):
        raise ValueError(f"per_class must be a positive integer (images per class you will train on), "
                         f"got {per_class!r}")
    counts = data.class_counts(spec, seed=seed)
    n = int(np.median(list(counts.values())))
    n = min(n, int(per_class)) if per_class else n
    model = model or backbones.load_backbone(backbone, input_size=image_size)
    dist = domain.dataset_distance(spec, model, backbone, image_size, sample_per_class, seed)
    cell = chu_cell(dist.calibrated, n)
    measures = {**dist.measures(), "n_images": dist.n_images, "image_size": dist.image_size}
    return Recommendation(str(spec), n, cell, chu_advice(cell), advice_text(cell),
                          CHU_TABLE3[(cell["distance"], cell["data"])], dist.calibrated, measures, backbone,
                          len(blocks.block_names(model)), counts)


# ----------------------------------------------------------------------------------------------------
# Checking the advice by experiment, with the one noise rule


@dataclass
class Verification:
    """Freeze vs Tune on the same test images, each at the rate and steps validation chose, and what the noise
    rule says (notebook 08)."""

    chu_advice: str
    accuracy: dict[str, list[float]]  # test accuracy of each side's chosen setting, per seed
    comparison: evaluation.Comparison  # tune vs freeze
    per_class: int
    image_size: int
    seeds: list[int]
    chosen: dict[str, dict[str, Any]]  # {"freeze": {"lr": 0.01, "steps": 40, "schedule": "step"}, "tune": ...}
    validation: dict[str, list[dict[str, Any]]]  # per side, every setting tried: lr, steps, schedule, val_accuracy
    curves: dict[str, dict[str, list]] = field(default_factory=dict)  # the chosen runs' history, first seed

    @property
    def verdict(self) -> str:
        """``"held"``, ``"did not hold"`` or ``"within noise"`` (for "try both": which side won, if any)."""
        winner = self.comparison.verdict
        if winner == "within noise" or self.chu_advice == "try both":
            return winner
        return "held" if winner == f"{self.chu_advice} better" else "did not hold"

    @property
    def still_rising(self) -> list[str]:
        """Sides whose validation accuracy was best at the longest budget tried and still climbing there: not
        shown to have converged (raise the steps)."""
        out = []
        for side, tried in self.validation.items():
            at = {(t["lr"], t["steps"], t["schedule"]): t["val_accuracy"] for t in tried}
            lr, steps, kind = (self.chosen[side][k] for k in ("lr", "steps", "schedule"))
            shorter = [s for (r, s, k) in at if (r, k) == (lr, kind) and s < steps]
            if steps == max(s for _, s, _ in at) and shorter and at[(lr, steps, kind)] > at[(lr, max(shorter), kind)]:
                out.append(side)
        return out

    def describe(self) -> str:
        """The budget, one line per side (choice, validation, test), the rule's line, then the verdict."""
        lines = [f"verify: {self.per_class} images per class ({VERIFY_VAL_FRACTION:.0%} of them held out to choose the "
                 f"rate, steps and schedule), {self.image_size} px, {self.comparison.n_images} test images, seeds {self.seeds} "
                 f"(each seed resamples the training images; the test images are the same)"]
        for side, accs in self.accuracy.items():
            label = "Freeze F(1-7)R(8)" if side == "freeze" else f"Tune T(1-7)R(8) at {CHU_TUNE_FACTOR}x"
            pick = self.chosen[side]
            tried = ", ".join(f"{t['lr']:g}/{t['steps']}/{t['schedule']}: {t['val_accuracy']:.3f}"
                              for t in self.validation[side])
            lines.append(f"  {label}: chose lr {pick['lr']:g}, {pick['steps']} steps, {pick['schedule']} (validation "
                         f"accuracy by lr/steps/schedule: {tried}); test accuracy {np.mean(accs):.3f}")
        lines += [f"noise rule ({evaluation.NOISE_RULE}): {self.comparison}",
                  f"Chu's advice ({self.chu_advice}): {self.verdict}"]
        for side in self.still_rising:
            lines.append(f"caution: {side}'s validation accuracy was still rising at the longest budget tried; "
                         f"add a longer one (--verify-steps) before reading the verdict as converged.")
        if self.comparison.diff < -WIDE_MARGIN:
            lines.append(f"caution: Tune lost by more than {WIDE_MARGIN:.0%}; check its validation accuracy above "
                         f"for a rate that is too high or steps that are too few before reading this as evidence "
                         f"against Chu.")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the comparison, the verdict and the sides not shown to have converged."""
        out = asdict(self)
        out.update(comparison=self.comparison.to_dict(), verdict=self.verdict, still_rising=self.still_rising)
        return out


def verify_runs(spec: str, seeds: Sequence[int], per_class: int, image_size: int, steps: Sequence[int],
                rates: Sequence[float], schedules: Sequence[str], test_per_class: int | None, backbone: str
                ) -> dict[str, dict[tuple[float, int, str], list[runs.RunSpec]]]:
    """Chu's Freeze (frozen_head) and Tune (finetune_all at 0.2x, after as many head-only steps), per setting
    (rate, steps, schedule) and seed, with a validation split (notebook 08_domain_distance)."""
    freeze, tune = runs.parse_topology("frozen_head"), runs.parse_topology("finetune_all")
    out: dict[str, dict[tuple[float, int, str], list[runs.RunSpec]]] = {"freeze": {}, "tune": {}}
    for lr, n, kind in itertools.product(rates, steps, schedules):
        common = dict(backbone=backbone, image_size=image_size, per_class=per_class, test_per_class=test_per_class,
                      lr=lr, steps=n, schedule=kind, val_fraction=VERIFY_VAL_FRACTION)
        out["freeze"][(lr, n, kind)] = [runs.make_run(spec, freeze, s, **common) for s in seeds]
        out["tune"][(lr, n, kind)] = [runs.make_run(spec, tune, s, backbone_lr_factor=CHU_TUNE_FACTOR, head_steps=n,
                                                    **common) for s in seeds]
    return out


def _grid(values: float | Sequence[float], name: str, cast) -> list:
    """A setting or a list of them, checked: positive, at least one."""
    out = [cast(v) for v in (values if isinstance(values, (list, tuple, range)) else [values])]
    if not out or any(not v > 0 for v in out):
        raise ValueError(f"verify: {name} must be one or more positive numbers, got {values!r}")
    return sorted(set(out))


def verify(spec: str, recommendation: Recommendation, per_class: int | None = None, image_size: int = 128,
           seeds: Sequence[int] = (0, 1), test_per_class: int | None = 20,
           steps: int | Sequence[int] = VERIFY_STEPS, lr: float | Sequence[float] = VERIFY_RATES,
           schedule: str | Sequence[str] = ("step",), runner: Runner | None = None) -> Verification:
    """Train Chu's Freeze and Tune, choose each side's rate, steps and schedule (``training.SCHEDULES``; Caffe's
    step decay by default) on validation, and compare the chosen runs on the same test images with
    ``evaluation.compare``.

    Each seed resamples the ``per_class`` images (default: the recommendation's), a fifth of which are held out
    for validation; the test images are the same for every seed, side and setting, so the comparison is paired.
    A side is chosen by its mean validation accuracy over the seeds (ties: the smaller rate, then fewer steps,
    then the schedule listed first);
    ``still_rising`` flags a side that may need more steps (notebook 08_domain_distance).
    """
    per_class = int(per_class or recommendation.images_per_class)
    rates, budgets = _grid(lr, "lr", float), _grid(steps, "steps", int)
    schedules = [schedule] if isinstance(schedule, str) else list(dict.fromkeys(schedule))
    if not schedules or any(kind not in training.SCHEDULES for kind in schedules):
        raise ValueError(f"verify: schedule must be one or more of {training.SCHEDULES}, got {schedule!r}")
    runner = runner or Runner(recommendation.backbone, image_size=image_size)
    plan = verify_runs(runs.resolve_dataset(spec), [int(s) for s in seeds], per_class, image_size, budgets, rates,
                       schedules, test_per_class, recommendation.backbone)
    chosen, validation, accuracy, correct, curves = {}, {}, {}, {}, {}
    for side, settings in plan.items():
        reports = {key: [runner.run(run, history=max(1, key[1] // 5)) for run in specs] for key, specs in settings.items()}
        val = {key: -1.0 if any(r.get("diverged") for r in got) else float(np.mean([r.get("val_accuracy") or 0.0
                                                                                  for r in got]))
               for key, got in reports.items()}  # a setting that diverged for any seed is never chosen
        validation[side] = [{"lr": r, "steps": n, "schedule": k, "val_accuracy": v} for (r, n, k), v in val.items()]
        key = max(val, key=lambda k: (val[k], -k[0], -k[1], -schedules.index(k[2])))
        if any(r.get("diverged") for r in reports[key]):
            raise ValueError(f"verify: {side} diverged at every rate tried ({', '.join(f'{r:g}' for r in rates)}); "
                             f"try smaller rates with --verify-lr")
        chosen[side] = {"lr": key[0], "steps": key[1], "schedule": key[2]}
        labels = runner.split(settings[key][0]).test.labels
        correct[side] = [np.asarray(r["predictions"]) == labels for r in reports[key]]
        accuracy[side] = [float(r["accuracy"]) for r in reports[key]]
        curves[side] = reports[key][0].get("history", {})
    comparison = evaluation.compare(np.array(correct["tune"]), np.array(correct["freeze"]), names=("tune", "freeze"))
    return Verification(recommendation.chu_advice, accuracy, comparison, per_class, image_size,
                        [int(s) for s in seeds], chosen, validation, curves)
