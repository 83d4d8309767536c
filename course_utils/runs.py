"""What a run is: topologies, configs and the grid of runs they expand to (notebook ``07_experiments``).

A config (YAML or JSON, see ``configs/``) names a dataset, a backbone, an image size, seeds and the grid
axes (``AXES``). Its ``experiments`` section lists one-factor-at-a-time sub-grids (Maybury's figures vary one
thing at a time); every grid point becomes a :class:`RunSpec` whose identity is a hash of its fields, so
overlapping points run once and a restarted sweep skips what is done. ``runner.Runner`` runs a RunSpec.

Topologies (``TOPOLOGY_KINDS``, in Chu et al.'s notation: F frozen, T fine-tuned, R re-initialised and
trained): ``frozen_head`` F(1-7)R(8); ``finetune_all`` T(1-7)R(8), pretrained layers at
``lr * backbone_lr_factor``; ``finetune_last`` (Maybury's "last two layers": ``blocks: 2``); ``reinit_top``
(Chu's R(6-8): re-initialised blocks train at the full rate, their BatchNorm included); ``extension``
(Pittaras' extra Dense layers; with ``blocks`` > 0 the last blocks train too: FT3-ex); ``svm`` / ``logreg``
(linear probes on the bottleneck features, F. Yu's baseline).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from course_utils import checks, settings
from course_utils.training import OPTIMIZERS, Schedule

TOPOLOGY_KINDS = {
    "frozen_head": "F(1-7)R(8): frozen backbone, new head",
    "finetune_all": "T(1-7)R(8): fine-tune every layer",
    "finetune_last": "fine-tune only the last `blocks` blocks",
    "reinit_top": "re-initialise the last `blocks` blocks and train them at the full rate (Chu's R(6-8))",
    "extension": "`units` Dense layers + head (Pittaras); also trains the last `blocks` blocks if > 0",
    "svm": "bottleneck features + LinearSVC",
    "logreg": "bottleneck features + logistic regression",
}
PROBES = ("svm", "logreg")
TOPOLOGY_KEYS = {"kind", "name", "blocks", "units", "C"}
AXES = ("per_class", "lr", "steps", "backbone_lr_factor", "topologies", "optimizer", "schedule", "bn",
        "head_steps", "augment", "batch_size")
CONFIG_KEYS = {
    "name": "a short name; the default results file is <cache>/results/<name>.jsonl",
    "description": "free text", "paper": "which paper result the config reproduces (free text)",
    "dataset": "dataset spec: a folder, tfds:NAME, sklearn:digits, or 'auto' (COURSE_DATA / settings)",
    "backbone": "efficientnet_lite0 or a keras.applications name", "weights": "'imagenet' or a weights file",
    "image_size": "input size in pixels", "test_per_class": "test images per class (null: all)",
    "test_fraction": "test share when the dataset has no test split",
    "val_fraction": "share of the training images held out for validation (0: none)",
    "seeds": "list of seeds (training sample, initial weights, batch order; never the test set)",
    "batch_size": "grid axis: images per training step", "augment": "grid axis: random flips/crops (no cache)",
    "per_class": "grid axis: training images per class", "lr": "grid axis: base learning rate (new layers)",
    "steps": "grid axis: training iterations",
    "backbone_lr_factor": "grid axis: pretrained layers train at lr * factor (Li et al., F. Yu)",
    "topologies": "grid axis: list of topologies (names or mappings with kind/blocks/units/C/name)",
    "optimizer": "grid axis: sgd (momentum 0.9, as Caffe) or adam",
    "schedule": "grid axis: constant, step (Caffe: {kind: step, gamma, stepsize}) or cosine ({kind: cosine, warmup})",
    "bn": "grid axis: BatchNorm of trained pretrained blocks: inference (frozen statistics) or train",
    "head_steps": "grid axis: train the new head alone this many steps before unfreezing (0: no warm-up)",
    "experiments": "named sub-grids overriding grid axes, e.g. {samples: {per_class: [5, 10, 20]}}",
}
DEFAULTS: dict[str, Any] = {
    "name": "sweep", "dataset": "auto", "backbone": "efficientnet_lite0", "weights": "imagenet",
    "image_size": 224, "test_per_class": None, "test_fraction": 0.2, "val_fraction": 0.0, "batch_size": 32,
    "seeds": [0], "augment": False, "per_class": [None], "lr": [0.01], "steps": [100],
    "backbone_lr_factor": [0.1], "topologies": ["frozen_head"], "optimizer": ["sgd"], "schedule": ["constant"],
    "bn": ["inference"], "head_steps": [0], "experiments": {},
}


@dataclass(frozen=True)
class Topology:
    """Which layers train: one of ``TOPOLOGY_KINDS`` (notebook ``07_experiments``)."""

    kind: str
    name: str = ""
    blocks: int = 0
    units: tuple[int, ...] = ()
    C: float | str | None = None

    @property
    def label(self) -> str:
        """The name plots and tables use."""
        return self.name or self.kind

    @property
    def uses_training(self) -> bool:
        """False for the linear probes, which have no learning rate and no iterations."""
        return self.kind not in PROBES

    @property
    def tunes_pretrained(self) -> bool:
        """True when pretrained weights train (so ``backbone_lr_factor``, ``bn`` and a head warm-up matter);
        ``reinit_top`` trains re-initialised blocks, not pretrained ones."""
        return self.kind in {"finetune_all", "finetune_last"} or (self.kind == "extension" and self.blocks > 0)


def parse_topology(item: str | Mapping[str, Any], where: str = "<dict>") -> Topology:
    """A topology from a name (``"frozen_head"``) or a mapping (``{kind: finetune_last, blocks: 2}``)."""
    if isinstance(item, Topology):
        return item
    if not isinstance(item, (str, Mapping)):
        raise checks.UsageError(f"{where}: a topology is a name or a mapping with kind/blocks/units/C/name, "
                                f"got {item!r}")
    entry = {"kind": item} if isinstance(item, str) else dict(item)
    unknown = set(entry) - TOPOLOGY_KEYS
    if unknown:
        raise ValueError(f"unknown topology keys {sorted(unknown)}; allowed: {sorted(TOPOLOGY_KEYS)}")
    kind = entry.get("kind")
    if kind not in TOPOLOGY_KINDS:
        raise ValueError(f"unknown topology kind {kind!r}; choose one of: "
                         + "; ".join(f"{k} ({v})" for k, v in TOPOLOGY_KINDS.items()))
    blocks = checks.as_int(entry.get("blocks", 2 if kind in {"finetune_last", "reinit_top"} else 0),
                           f"topology {kind} blocks", where, low=0)
    if kind in {"finetune_last", "reinit_top"} and blocks < 1:
        raise ValueError(f"topology {kind} needs blocks >= 1, got {blocks}")
    units = tuple(checks.as_list(entry.get("units", [1024] if kind == "extension" else []),
                                 f"topology {kind} units", where, lambda v, k, w: checks.as_int(v, k, w, low=1)))
    if kind == "extension" and not units:
        raise ValueError(f"extension topology needs positive units, got {list(units)}")
    c = entry.get("C")
    if c is not None and c != "cv":
        c = checks.as_float(c, f"topology {kind} C", where, low=0.0, low_open=True)
    name = "" if entry.get("name") in (None, "") else checks.as_text(entry["name"], f"topology {kind} name", where)
    return Topology(kind, name, blocks, units, c)


def parse_schedule(item: str | Mapping[str, Any] | Schedule, where: str = "<dict>") -> Schedule:
    """A schedule from a name (``"step"``) or a mapping (``{kind: step, gamma: 0.1, stepsize: 1000}``)."""
    if isinstance(item, Schedule):
        return item
    entry = {"kind": item} if isinstance(item, str) else item
    if not isinstance(entry, Mapping) or set(entry) - {"kind", "gamma", "stepsize", "warmup"}:
        raise checks.UsageError(f"{where}: a schedule is constant, step or cosine, or a mapping with "
                                f"kind/gamma/stepsize/warmup, got {item!r}")
    return Schedule(**dict(entry))


@dataclass(frozen=True)
class RunSpec:
    """One run: data, model, what trains and how; ``identity`` hashes every field (notebook ``07``)."""

    dataset: str
    backbone: str
    weights: str
    image_size: int
    per_class: int | None
    test_per_class: int | None
    test_fraction: float
    topology: Topology
    lr: float | None
    steps: int | None
    backbone_lr_factor: float | None
    batch_size: int | None
    augment: bool
    seed: int
    val_fraction: float = 0.0
    bn: str = "inference"
    head_steps: int = 0
    optimizer: str = "sgd"
    schedule: Schedule = field(default_factory=Schedule)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (topology and schedule as mappings)."""
        out = asdict(self)
        out["topology"] = {**asdict(self.topology), "units": list(self.topology.units)}
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RunSpec":
        """The RunSpec of ``to_dict`` (e.g. a stored row's ``run``)."""
        out = dict(values)
        out["topology"] = parse_topology(out["topology"])
        out["schedule"] = parse_schedule(out.get("schedule", "constant"))
        return cls(**out)

    @property
    def identity(self) -> str:
        """A short hash of the full run config."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def make_run(dataset: str, topology: Topology, seed: int, *, backbone: str = "efficientnet_lite0",
             weights: str = "imagenet", image_size: int = 224, per_class: int | None = None,
             test_per_class: int | None = None, test_fraction: float = 0.2, val_fraction: float = 0.0,
             lr: float = 0.01, steps: int = 100, backbone_lr_factor: float | None = None, batch_size: int = 32,
             augment: bool = False, bn: str = "inference", head_steps: int = 0, optimizer: str = "sgd",
             schedule: Schedule | str = "constant") -> RunSpec:
    """A checked RunSpec; fields the topology ignores are normalised (no lr for a probe, no factor,
    BatchNorm mode or head warm-up unless pretrained layers train), so equal runs have one identity."""
    trains, tunes = topology.uses_training, topology.tunes_pretrained
    if trains and (not lr > 0 or steps < 0 or batch_size < 1 or head_steps < 0):
        raise ValueError(f"need lr > 0, steps >= 0, batch_size >= 1 and head_steps >= 0; got lr={lr}, "
                         f"steps={steps}, batch_size={batch_size}, head_steps={head_steps}")
    if bn not in {"inference", "train"} or optimizer not in OPTIMIZERS:
        raise ValueError(f"bn must be inference or train and optimizer one of {OPTIMIZERS}; got {bn!r}, {optimizer!r}")
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be >= 1 (or null for all), got {per_class}")
    return RunSpec(
        dataset=dataset, backbone=backbone, weights=str(weights), image_size=int(image_size),
        per_class=None if per_class is None else int(per_class), test_per_class=test_per_class,
        test_fraction=float(test_fraction), topology=topology, lr=float(lr) if trains else None,
        steps=int(steps) if trains else None,
        backbone_lr_factor=float(backbone_lr_factor) if tunes and backbone_lr_factor is not None else None,
        batch_size=int(batch_size) if trains else None, augment=bool(augment) and trains, seed=int(seed),
        val_fraction=float(val_fraction), bn=bn if tunes else "inference",
        head_steps=int(head_steps) if tunes else 0, optimizer=optimizer if trains else "sgd",
        schedule=parse_schedule(schedule) if trains else Schedule())


# --------------------------------------------------------------------------------------------------
# Configs


@dataclass
class SweepConfig:
    """A parsed experiment config (``load_config``); ``grids`` maps experiment names to axis values."""

    name: str
    dataset: str
    backbone: str
    weights: str
    image_size: int
    test_per_class: int | None
    test_fraction: float
    seeds: list[int]
    grids: dict[str, dict[str, list]]
    val_fraction: float = 0.0
    description: str = ""
    source: str = ""


def _axis_value(axis: str, value: Any, key: str, where: str) -> Any:
    """One value of a grid axis, typed and range-checked (the key and the file named when it is not)."""
    if axis == "per_class":
        return checks.as_int(value, key, where, low=1, allow_none=True)
    if axis in {"steps", "head_steps"}:
        return checks.as_int(value, key, where, low=1 if axis == "steps" else 0)
    if axis == "batch_size":
        return checks.as_int(value, key, where, low=1)
    if axis == "lr":
        return checks.as_float(value, key, where, low=0.0, high=checks.LR_MAX, low_open=True)
    if axis == "backbone_lr_factor":
        return checks.as_float(value, key, where, low=0.0, high=checks.LR_MAX)
    if axis == "augment":
        return checks.as_bool(value, key, where)
    if axis in {"optimizer", "bn"}:
        allowed = OPTIMIZERS if axis == "optimizer" else ("inference", "train")
        if value not in allowed:
            raise checks.UsageError(f"{where}: {key} must be one of {list(allowed)}, got {value!r}")
        return value
    if axis == "schedule":
        return parse_schedule(value, where)
    return parse_topology(value, where)


def _grid(raw: Mapping[str, Any], base: Mapping[str, list], where: str) -> dict[str, list]:
    if not isinstance(raw, Mapping):
        raise checks.UsageError(f"{where}: an experiment is a mapping of grid axes ({', '.join(AXES)}), got {raw!r}")
    unknown = set(raw) - set(AXES)
    if unknown:
        raise ValueError(f"{where}: unknown grid keys {sorted(unknown)}; an experiment may set {list(AXES)}")
    grid = {}
    for axis in AXES:
        value = raw.get(axis, base[axis])
        if axis == "schedule" and isinstance(value, Mapping):
            value = [value]  # one mapping is one schedule, not a list of keys
        grid[axis] = checks.as_list(value, axis, where, lambda v, key, w, axis=axis: _axis_value(axis, v, key, w))
        if not grid[axis]:
            raise ValueError(f"{where}: grid axis {axis!r} is empty")
    return grid


def load_config(source: str | os.PathLike | Mapping[str, Any], data: str | None = None) -> SweepConfig:
    """Read and check a YAML/JSON config (or a dict); ``data`` overrides its dataset (``--data``)."""
    raw, where = checks.read_mapping(source, "config", CONFIG_KEYS, "see configs/ for examples")
    unknown = set(raw) - set(CONFIG_KEYS)
    if unknown:
        allowed = "\n".join(f"  {k}: {v}" for k, v in CONFIG_KEYS.items())
        raise ValueError(f"{where}: unknown config keys {sorted(unknown)}. Allowed keys:\n{allowed}")
    cfg = {**DEFAULTS, **raw}
    base = _grid({axis: cfg[axis] for axis in AXES}, cfg, where)
    experiments = cfg["experiments"] or {}
    if not isinstance(experiments, Mapping):
        raise ValueError(f"{where}: experiments must map names to sub-grids, got {type(experiments).__name__}")
    grids = {str(k): _grid(v or {}, base, f"{where} experiment {k!r}") for k, v in experiments.items()}
    low, high = checks.IMAGE_SIZE
    return SweepConfig(
        name=checks.as_name(cfg["name"], "name", where),
        dataset=data or checks.as_text(cfg["dataset"], "dataset", where),
        backbone=checks.as_text(cfg["backbone"], "backbone", where),
        weights=checks.as_text(cfg["weights"], "weights", where),
        image_size=checks.as_int(cfg["image_size"], "image_size", where, low=low, high=high),
        test_per_class=checks.as_int(cfg["test_per_class"], "test_per_class", where, low=1, allow_none=True),
        test_fraction=checks.as_float(cfg["test_fraction"], "test_fraction", where, low=0.0, high=0.9, low_open=True),
        val_fraction=checks.as_float(cfg["val_fraction"], "val_fraction", where, low=0.0, high=0.9),
        seeds=checks.as_list(cfg["seeds"], "seeds", where,
                             lambda v, key, w: checks.as_int(v, key, w, low=0, high=checks.SEED_MAX)),
        grids=grids or {"grid": base}, description=str(cfg.get("description") or ""), source=where)


def resolve_dataset(spec: str) -> str:
    """``auto`` -> the settings' dataset; a folder -> its absolute path (so run identities are stable)."""
    if spec == "auto":
        spec = settings.get_settings().data
    if ":" in spec.split("/")[0] and not Path(spec).exists():
        return spec
    return str(Path(spec).expanduser().resolve())


def experiment_runs(config: SweepConfig) -> dict[str, list[RunSpec]]:
    """The runs of each experiment of ``config`` (a run may belong to several experiments)."""
    dataset = resolve_dataset(config.dataset)
    fixed = dict(backbone=config.backbone, weights=config.weights, image_size=config.image_size,
                 test_per_class=config.test_per_class, test_fraction=config.test_fraction,
                 val_fraction=config.val_fraction)
    out: dict[str, list[RunSpec]] = {}
    for name, grid in config.grids.items():
        runs: dict[str, RunSpec] = {}
        for seed, values in itertools.product(config.seeds, itertools.product(*(grid[a] for a in AXES))):
            point = dict(zip(AXES, values))
            topology = point.pop("topologies")
            run = make_run(dataset, topology, seed, **fixed, **point)
            runs.setdefault(run.identity, run)
        out[name] = list(runs.values())
    return out


def expand(config: SweepConfig) -> list[RunSpec]:
    """Every distinct run of the config, grouped by (seed, per_class) so data loads once per group."""
    unique: dict[str, RunSpec] = {}
    for runs in experiment_runs(config).values():
        for run in runs:
            unique.setdefault(run.identity, run)
    return sorted(unique.values(), key=lambda r: (r.seed, r.per_class or 0))
