"""Experiment sweeps: configs, the cached frozen-prefix path and the append-only results store.

Explained in notebook ``07_experiments``; ``python -m course_utils sweep CONFIG`` runs the same code.

A config (YAML or JSON, see ``configs/``) names a dataset, a backbone, an image size, seeds and the grid
axes ``per_class``, ``lr``, ``steps``, ``backbone_lr_factor`` and ``topologies``. Its ``experiments``
section lists one-factor-at-a-time sub-grids (Maybury's figures vary one thing at a time); every grid
point becomes a :class:`RunSpec` whose identity is a hash of its full config, so overlapping points run
once and a restarted sweep skips what is done.

Topologies (Chu et al.'s notation: F frozen, T fine-tuned, R re-initialised and trained):

========================  ===========================================================================
``frozen_head``           F(1-7)R(8): frozen backbone, new softmax head
``finetune_all``          T(1-7)R(8): every layer trains, pretrained ones at ``lr * backbone_lr_factor``
``finetune_last``         train only the last ``blocks`` blocks (Maybury's "last two layers": 2)
``reinit_top``            re-initialise the last ``blocks`` blocks and train them (Chu's R(6-8))
``extension``             ``units`` extra Dense ReLU layers + head (Pittaras); the backbone is frozen
                          unless ``blocks`` > 0 (then its last ``blocks`` blocks train too)
``svm``                   bottleneck features + LinearSVC (F. Yu's baseline), no lr / steps
========================  ===========================================================================

Speed: when a prefix of the network is frozen and nothing in it behaves differently while training
(no augmentation, no dropout, BatchNorm in inference mode), the prefix's activations are computed once
per image (and cached on disk by ``course_utils.cache``, keyed like ``features.cache_key``; a damaged file
is deleted and recomputed) and only the rest of the network is trained on them, with the same initial
weights and the same batches as the naive path. ``cache=False`` (``--no-cache``) runs the naive path, for
comparison. A run whose loss or outputs become NaN or infinite is stored as ``diverged`` with no accuracy.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from course_utils import checks, evaluation, settings

CONFIG_KEYS = {
    "name": "a short name; the default results file is <cache>/results/<name>.jsonl",
    "description": "free text",
    "paper": "which paper result the config reproduces (free text)",
    "dataset": "dataset spec: a folder, tfds:NAME, sklearn:digits, or 'auto' (COURSE_DATA / settings)",
    "backbone": "efficientnet_lite0 or a keras.applications name",
    "weights": "'imagenet' or a weights file",
    "image_size": "input size in pixels",
    "test_per_class": "test images per class (null: all)",
    "test_fraction": "test share when the dataset has no test split",
    "batch_size": "images per training step",
    "seeds": "list of seeds (data sample, initial weights, batch order)",
    "augment": "random flips while training (disables the cache)",
    "per_class": "grid axis: training images per class",
    "lr": "grid axis: base learning rate (new layers)",
    "steps": "grid axis: training iterations",
    "backbone_lr_factor": "grid axis: pretrained layers train at lr * factor (Li et al., F. Yu)",
    "topologies": "grid axis: list of topologies (names or mappings with kind/blocks/units/C/name)",
    "experiments": "named sub-grids overriding grid axes, e.g. {samples: {per_class: [5, 10, 20]}}",
}
AXES = ("per_class", "lr", "steps", "backbone_lr_factor", "topologies")
TOPOLOGY_KINDS = {
    "frozen_head": "F(1-7)R(8): frozen backbone, new head",
    "finetune_all": "T(1-7)R(8): fine-tune every layer",
    "finetune_last": "fine-tune only the last `blocks` blocks",
    "reinit_top": "re-initialise the last `blocks` blocks and train them (Chu's R(6-8))",
    "extension": "`units` Dense layers + head (Pittaras); also trains the last `blocks` blocks if > 0",
    "svm": "bottleneck features + LinearSVC",
}
TOPOLOGY_KEYS = {"kind", "name", "blocks", "units", "C"}
DEFAULTS: dict[str, Any] = {
    "name": "sweep", "dataset": "auto", "backbone": "efficientnet_lite0", "weights": "imagenet",
    "image_size": 224, "test_per_class": None, "test_fraction": 0.2, "batch_size": 32, "seeds": [0],
    "augment": False, "per_class": [None], "lr": [0.01], "steps": [100], "backbone_lr_factor": [0.1],
    "topologies": ["frozen_head"], "experiments": {},
}
STORE_VERSION = 1


# --------------------------------------------------------------------------------------------------
# Configs


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
        """False for the SVM probe, which has no learning rate and no iterations."""
        return self.kind != "svm"

    @property
    def tunes_pretrained(self) -> bool:
        """True when pretrained weights train (so ``backbone_lr_factor`` matters)."""
        return self.kind in {"finetune_all", "finetune_last"} or (self.kind == "extension" and self.blocks > 0)


def parse_topology(item: str | Mapping[str, Any], where: str = "<dict>") -> Topology:
    """A topology from a name (``"frozen_head"``) or a mapping (``{kind: finetune_last, blocks: 2}``);
    ``where`` (the config file) is named in error messages."""
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
                                 f"topology {kind} units", where, _positive_int))
    if kind == "extension" and not units:
        raise ValueError(f"extension topology needs positive units, got {list(units)}")
    c = entry.get("C")
    if c is not None and c != "cv":
        c = checks.as_float(c, f"topology {kind} C", where, low=0.0, low_open=True)
    name = "" if entry.get("name") is None else checks.as_text(entry["name"], f"topology {kind} name", where)
    return Topology(kind, name, blocks, units, c)


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
    batch_size: int
    seeds: list[int]
    augment: bool
    grids: dict[str, dict[str, list]]
    description: str = ""
    source: str = ""


def _positive_int(value: Any, key: str, where: str) -> int:
    return checks.as_int(value, key, where, low=1)


def _axis_value(axis: str, value: Any, key: str, where: str) -> Any:
    """One value of a grid axis, typed and range-checked (the key and the file named when it is not)."""
    if axis == "per_class":
        return checks.as_int(value, key, where, low=1, allow_none=True)
    if axis == "steps":
        return checks.as_int(value, key, where, low=1)
    if axis == "lr":
        return checks.as_float(value, key, where, low=0.0, high=checks.LR_MAX, low_open=True)
    if axis == "backbone_lr_factor":
        return checks.as_float(value, key, where, low=0.0, high=checks.LR_MAX)
    return value if isinstance(value, Topology) else parse_topology(value, where)


def _grid(raw: Mapping[str, Any], base: Mapping[str, list], where: str) -> dict[str, list]:
    if not isinstance(raw, Mapping):
        raise checks.UsageError(f"{where}: an experiment is a mapping of grid axes ({', '.join(AXES)}), got {raw!r}")
    unknown = set(raw) - set(AXES)
    if unknown:
        raise ValueError(f"{where}: unknown grid keys {sorted(unknown)}; an experiment may set {list(AXES)}")
    grid = {}
    for axis in AXES:
        grid[axis] = checks.as_list(raw.get(axis, base[axis]), axis, where,
                                    lambda v, key, w, axis=axis: _axis_value(axis, v, key, w))
        if not grid[axis]:
            raise ValueError(f"{where}: grid axis {axis!r} is empty")
    return grid


def _parse_text(text: str, path: Path) -> Any:
    """YAML or JSON text; a syntax error names the file, the line and the column."""
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise checks.UsageError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column "
                                    f"{err.colno}); fix it there") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise checks.UsageError(f"{path}: not valid YAML ({problem}{at}); check the indentation, colons "
                                "and quotes there") from None


def _read_raw(source: str | os.PathLike | Mapping[str, Any]) -> tuple[dict, str]:
    if isinstance(source, Mapping):
        return dict(source), "<dict>"
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no config file {path} (see configs/ for examples)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise checks.UsageError(f"{path}: not a text file (not UTF-8); a config is YAML or JSON") from None
    raw = _parse_text(text, path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a config is a mapping of keys ({', '.join(CONFIG_KEYS)})")
    return raw, str(path)


def load_config(source: str | os.PathLike | Mapping[str, Any], data: str | None = None) -> SweepConfig:
    """Read and check a YAML/JSON config (or a dict); ``data`` overrides its dataset (``--data``)."""
    raw, where = _read_raw(source)
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
    return SweepConfig(grids=grids or {"grid": base}, description=str(cfg.get("description") or ""), source=where,
                       **_settings(cfg, data, where))


def _settings(cfg: Mapping[str, Any], data: str | None, where: str) -> dict[str, Any]:
    """The config's non-grid values, typed and range-checked (``checks``; the key and file named)."""
    low, high = checks.IMAGE_SIZE
    return dict(
        name=checks.as_name(cfg["name"], "name", where),
        dataset=data or checks.as_text(cfg["dataset"], "dataset", where),
        backbone=checks.as_text(cfg["backbone"], "backbone", where),
        weights=checks.as_text(cfg["weights"], "weights", where),
        image_size=checks.as_int(cfg["image_size"], "image_size", where, low=low, high=high),
        test_per_class=checks.as_int(cfg["test_per_class"], "test_per_class", where, low=1, allow_none=True),
        test_fraction=checks.as_float(cfg["test_fraction"], "test_fraction", where, low=0.0, high=0.9, low_open=True),
        batch_size=checks.as_int(cfg["batch_size"], "batch_size", where, low=1),
        seeds=checks.as_list(cfg["seeds"], "seeds", where,
                             lambda v, key, w: checks.as_int(v, key, w, low=0, high=checks.SEED_MAX)),
        augment=checks.as_bool(cfg["augment"], "augment", where))


def resolve_dataset(spec: str) -> str:
    """``auto`` -> the settings' dataset; a folder -> its absolute path (so run identities are stable)."""
    if spec == "auto":
        spec = settings.get_settings().data
    if ":" in spec.split("/")[0] and not Path(spec).exists():
        return spec
    return str(Path(spec).expanduser().resolve())


# --------------------------------------------------------------------------------------------------
# Runs


@dataclass(frozen=True)
class RunSpec:
    """One grid point; ``identity`` hashes every field, so equal configs are the same run."""

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

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (the topology as a mapping)."""
        out = asdict(self)
        out["topology"] = {**asdict(self.topology), "units": list(self.topology.units)}
        return out

    @property
    def identity(self) -> str:
        """A short hash of the full run config."""
        blob = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _make_run(config: SweepConfig, dataset: str, per_class, lr, steps, factor, topology: Topology,
              seed: int) -> RunSpec:
    trains = topology.uses_training
    return RunSpec(
        dataset=dataset, backbone=config.backbone, weights=config.weights, image_size=config.image_size,
        per_class=None if per_class is None else int(per_class), test_per_class=config.test_per_class,
        test_fraction=config.test_fraction, topology=topology, lr=float(lr) if trains else None,
        steps=int(steps) if trains else None,
        backbone_lr_factor=float(factor) if topology.tunes_pretrained else None,
        batch_size=config.batch_size if trains else None, augment=config.augment and trains, seed=int(seed))


def _check_run(run: RunSpec) -> None:
    if run.lr is not None and run.lr <= 0:
        raise ValueError(f"learning rates must be positive, got lr={run.lr}")
    if run.steps is not None and run.steps < 1:
        raise ValueError(f"steps must be >= 1, got {run.steps}")
    if run.per_class is not None and run.per_class < 1:
        raise ValueError(f"per_class must be >= 1 (or null for all), got {run.per_class}")


def experiment_runs(config: SweepConfig) -> dict[str, list[RunSpec]]:
    """The runs of each experiment of ``config`` (a run may belong to several experiments)."""
    dataset = resolve_dataset(config.dataset)
    out: dict[str, list[RunSpec]] = {}
    for name, grid in config.grids.items():
        runs: dict[str, RunSpec] = {}
        for seed, per_class, topology, lr, steps, factor in itertools.product(
                config.seeds, grid["per_class"], grid["topologies"], grid["lr"], grid["steps"],
                grid["backbone_lr_factor"]):
            run = _make_run(config, dataset, per_class, lr, steps, factor, topology, seed)
            _check_run(run)
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


# --------------------------------------------------------------------------------------------------
# Results store


class ResultStore:
    """Append-only JSONL file, one line per finished run (notebook ``07_experiments``).

    Each line is written with one ``os.write`` on an ``O_APPEND`` descriptor and ``fsync``-ed, so a sweep
    killed at any moment leaves at most one incomplete last line; ``rows`` ignores it with a warning and
    ``repair`` (called before appending) cuts it off. Rows are deduplicated by run identity.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def _lines(self) -> tuple[list[dict], int | None]:
        """Parsed rows and, when the file ends in an incomplete line, the byte offset where it starts."""
        if not self.path.exists():
            return [], None
        data = self.path.read_bytes()
        rows, offset, tail = [], 0, None
        for raw in data.splitlines(keepends=True):
            complete = raw.endswith(b"\n")
            try:
                row = json.loads(raw)
            except ValueError:
                row = None
            if complete and isinstance(row, dict) and "id" in row:
                rows.append(row)
            elif not complete:
                tail = offset
            else:
                warnings.warn(f"{self.path}: skipping a malformed line at byte {offset}", stacklevel=3)
            offset += len(raw)
        return rows, tail

    def rows(self) -> list[dict]:
        """Finished runs, first occurrence of each identity; warns about an incomplete last line."""
        rows, tail = self._lines()
        if tail is not None:
            warnings.warn(f"{self.path}: ignoring an incomplete last line (a sweep was interrupted "
                          "while writing it); the run will be redone", stacklevel=2)
        seen: dict[str, dict] = {}
        for row in rows:
            seen.setdefault(row["id"], row)
        return list(seen.values())

    def done(self) -> set[str]:
        """Identities of finished runs."""
        return {row["id"] for row in self.rows()}

    def repair(self) -> bool:
        """Cut off an incomplete last line (never touches complete rows); True when it did."""
        _, tail = self._lines()
        if tail is None:
            return False
        with open(self.path, "r+b") as handle:
            handle.truncate(tail)
            os.fsync(handle.fileno())
        return True

    def append(self, row: Mapping[str, Any]) -> None:
        """Write one complete line atomically (single write on an O_APPEND descriptor, then fsync)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(checks.strict_json(row), sort_keys=True, allow_nan=False) + "\n").encode()  # strict JSON
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(f"short write to {self.path} ({written} of {len(line)} bytes)")
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock so two sweeps never write the same store at once (released on exit or kill)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no locking
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ValueError(f"another sweep is writing {self.path}; wait for it or use --out") from None
            yield


def load_results(path: str | os.PathLike) -> list[dict]:
    """The rows of a results file (empty when it does not exist)."""
    return ResultStore(path).rows()


def default_results_path(config: SweepConfig) -> Path:
    """``<cache>/results/<config name>.jsonl`` (``settings.cache_dir``); the name must be a plain name."""
    return settings.cache_dir("results") / f"{checks.as_name(config.name, 'name', config.source or '<config>')}.jsonl"


# --------------------------------------------------------------------------------------------------
# The engine: one backbone, cached prefix activations, naive and cached training


_TRAINING_DEPENDENT = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
                       "GaussianNoise", "GaussianDropout", "AlphaDropout")


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """``(steps, batch_size)`` indices: consecutive seeded permutations cut into full batches.

    Both paths train on exactly these batches, in this order (``train_on_batch``, no Keras shuffling).
    """
    rng = np.random.default_rng([int(seed), 7])
    needed = steps * batch_size
    perms = [rng.permutation(n) for _ in range(-(-needed // n))]
    return np.concatenate(perms)[:needed].reshape(steps, batch_size)


def _batch(x: np.ndarray, idx: np.ndarray, preprocess=None, flip_seed: Sequence[int] | None = None) -> np.ndarray:
    """Rows ``idx`` of ``x``; optionally flipped left-right (seeded) and preprocessed."""
    batch = x[idx]
    if flip_seed is not None:
        flip = np.random.default_rng(list(flip_seed)).random(len(idx)) < 0.5
        batch = batch.astype("float32")
        batch[flip] = batch[flip, :, ::-1]
    if preprocess is not None:
        batch = np.asarray(preprocess(batch.astype("float32")), dtype="float32")
    return batch


def train_steps(model, x: np.ndarray, y: np.ndarray, order: np.ndarray, preprocess=None,
                augment: bool = False, seed: int = 0) -> list[float]:
    """One ``train_on_batch`` per row of ``order`` (a compiled model); returns the losses."""
    losses = []
    for step, idx in enumerate(order):
        flip_seed = (seed, 11, step) if augment else None
        loss = model.train_on_batch(_batch(x, idx, preprocess, flip_seed), y[idx])
        losses.append(float(np.ravel(loss)[0]))
    return losses


def extractor(model, layers: Sequence[str]):
    """A model giving the outputs of ``layers`` of ``model`` (one pass for all of them)."""
    from course_utils.quiet import keras  # lazy: importing this module must not load TensorFlow

    return keras.Model(model.input, [model.get_layer(name).output for name in layers])


def keras_prefix(model, boundary: str):
    """The frozen part: ``model``'s input to the output of layer ``boundary``."""
    from course_utils.quiet import keras  # lazy: importing this module must not load TensorFlow

    return keras.Model(model.input, model.get_layer(boundary).output, name=f"upto_{boundary}")


def keras_suffix(model, boundary: str):
    """The trained part: from layer ``boundary``'s output to ``model``'s output, sharing its layers and weights."""
    from course_utils.quiet import keras  # lazy: importing this module must not load TensorFlow

    return keras.Model(model.get_layer(boundary).output, model.output, name=f"after_{boundary}")


@dataclass
class SweepResult:
    """What ``run_sweep`` did."""

    path: Path
    planned: int
    skipped: int
    ran: int
    seconds: float
    cache: bool
    rows: list[dict] = field(default_factory=list)
    engine: Engine | None = None

    def __str__(self) -> str:
        return (f"{self.ran} runs in {self.seconds:.1f} s ({self.skipped} of {self.planned} already done), "
                f"cache {'on' if self.cache else 'off'}; results in {self.path}")


class Engine:
    """Runs ``RunSpec``s on one backbone; keeps its pristine weights and the prefix activations.

    Used by ``run_sweep`` and notebook ``07_experiments``. ``cache=False`` is the naive path: every run
    trains the whole network (frozen layers included in every forward pass) on the images.
    """

    def __init__(self, backbone: str, weights: str, image_size: int, cache: bool = True,
                 disk_cache: bool = True) -> None:
        from course_utils import backbones

        self.name, self.weights, self.size = backbone, weights, image_size
        self.cache, self.disk_cache = cache, disk_cache
        self.base = backbones.load_backbone(backbone, weights=weights, input_size=image_size)
        self.preprocess = backbones.get_preprocess(backbone)
        self.blocks = backbones.block_names(self.base)
        self._initial = {layer.name: layer.get_weights() for layer in self.base.layers if layer.weights}
        self._dirty: set[str] = set(self._initial)  # layers a run may have changed since the last reset
        self._memory: dict[str, dict[str, np.ndarray]] = {}
        self._boundaries: set[str] = set()
        self._extractors: dict[tuple, Any] = {}
        self._compiled: dict[tuple, Any] = {}  # compiled suffixes, one per topology and boundary
        self._splits: dict[tuple, Any] = {}
        self.fallbacks: dict[str, int] = {}  # why runs took the naive path, and how many

    # ---- data and weights
    def reset_weights(self) -> None:
        """Put the pretrained weights back into the layers runs changed (they train shared layers in place)."""
        for name in sorted(self._dirty):
            self.base.get_layer(name).set_weights(self._initial[name])
        self._dirty.clear()

    def split(self, run: RunSpec):
        """The run's data (``data.load_dataset``), loaded once per (dataset, per_class, seed)."""
        from course_utils import data

        key = (run.dataset, run.per_class, run.test_per_class, run.test_fraction, run.seed)
        if key not in self._splits:
            self._splits = {key: data.load_dataset(
                run.dataset, image_size=self.size, per_class=run.per_class, seed=run.seed,
                test_fraction=run.test_fraction, test_per_class=run.test_per_class)}
        return self._splits[key]

    # ---- where the frozen prefix ends
    def train_last(self, topology: Topology) -> int:
        """How many of the last blocks train (0: only the new layers)."""
        if topology.kind == "finetune_all":
            return len(self.blocks)
        if topology.kind in {"finetune_last", "reinit_top", "extension"}:
            if topology.blocks >= len(self.blocks):
                raise ValueError(f"{topology.label}: blocks={topology.blocks} but {self.name} has only "
                                 f"{len(self.blocks)} blocks ({self.blocks[0]} ... {self.blocks[-1]}); "
                                 "use finetune_all to train every block")
            return topology.blocks
        return 0

    def boundary(self, train_last: int) -> str | None:
        """The layer whose output feeds the trained part, or None when nothing before it is frozen."""
        from course_utils import backbones

        if train_last == 0:
            return backbones.feature_layer(self.base)
        if train_last >= len(self.blocks):
            return None
        blocks = backbones.layer_blocks(self.base)
        first_block = self.blocks[len(self.blocks) - train_last]
        first = next(layer for layer in self.base.layers if blocks.get(layer.name) == first_block)
        tensor = first.input
        for layer in self.base.layers:
            try:
                if layer.output is tensor:
                    return layer.name
            except (AttributeError, ValueError):  # layers with several outputs
                continue
        return None

    def cache_plan(self, run: RunSpec) -> tuple[str | None, str]:
        """(boundary layer or None, why): whether ``run`` can train on cached prefix activations."""
        if not self.cache:
            return None, "cache off (--no-cache): naive path"
        if run.augment:
            return None, "augmentation changes the images every step, so the prefix must run every time"
        boundary = self.boundary(self.train_last(run.topology))
        if boundary is None:
            return None, "no frozen prefix (every block trains)"
        names = [layer.name for layer in self.base.layers]
        prefix = self.base.layers[: names.index(boundary) + 1]
        moving = [layer.name for layer in prefix if type(layer).__name__ in _TRAINING_DEPENDENT]
        if moving:
            return None, f"the frozen prefix has layers that act differently while training ({moving[0]})"
        return boundary, f"cached activations of {boundary!r}"

    def prepare(self, runs: Iterable[RunSpec]) -> dict[str, int]:
        """Register the boundaries ``runs`` need (computed together, one forward pass per image).

        Returns how many runs take each path, e.g. ``{"cached": 20, "naive": 4}``.
        """
        paths = {"cached": 0, "naive": 0}
        for run in runs:
            boundary, why = self.cache_plan(run)
            if boundary is not None:
                self._boundaries.add(boundary)
            else:
                self.fallbacks[why] = self.fallbacks.get(why, 0) + 1
            paths["cached" if boundary is not None else "naive"] += 1
        return paths

    # ---- activations
    def _disk_entry(self, boundary: str, ids: Sequence[str]) -> tuple[Path, str]:
        """(cache file, key) of ``boundary``'s activations for these images (``course_utils.cache``)."""
        from course_utils.features import cache_key
        from course_utils.settings import cache_dir

        key = cache_key(self.name, str(self.weights), [f"activations:{boundary}"], self.size, ids)
        return cache_dir("features") / f"{self.name}-{boundary}-{key}.npz", key

    def activations(self, images, boundary: str) -> np.ndarray:
        """``boundary``'s output for every image of an ``ImageSet``: from memory, disk, or computed.

        The disk cache verifies itself: a damaged file is reported, deleted and computed again."""
        from course_utils import cache as array_cache

        self._boundaries.add(boundary)
        memory = self._memory.setdefault(boundary, {})
        if not all(i in memory for i in images.ids):
            entry = self._disk_entry(boundary, images.ids) if self.disk_cache else None
            stored = array_cache.load(*entry) if entry is not None else None
            if stored is not None and len(stored) == len(images.ids):
                memory.update(zip(images.ids, stored))
            else:
                self._compute(images)
                if entry is not None:
                    array_cache.save(entry[0], np.stack([memory[i] for i in images.ids]), entry[1])
        return np.stack([memory[i] for i in images.ids])

    def _compute(self, images) -> None:
        """One forward pass of the images not yet in memory, filling every registered boundary."""
        names = sorted(self._boundaries)
        memories = [self._memory.setdefault(b, {}) for b in names]
        todo = [i for i, image_id in enumerate(images.ids) if any(image_id not in m for m in memories)]
        if not todo:
            return
        self.reset_weights()
        if tuple(names) not in self._extractors:  # one compiled extractor per set of boundaries
            self._extractors = {tuple(names): extractor(self.base, names)}
        outputs = evaluation.predict_all(self._extractors[tuple(names)], images.images[todo], self.preprocess)
        for memory, values in zip(memories, outputs):
            memory.update(zip((images.ids[i] for i in todo), values))

    # ---- one run
    def run(self, run: RunSpec) -> dict:
        """Train and evaluate one run: a report (accuracy, per-class accuracy, confusion matrix, path)."""
        from course_utils import training

        self.reset_weights()
        split = self.split(run)
        start = time.perf_counter()
        try:
            if run.topology.kind == "svm":
                predictions, path = self._run_svm(run, split)
            else:
                predictions, path = self._run_network(run, split)
            report = training.classification_report(split.test.labels, predictions, split.test.classes)
        except training.DivergedError as err:  # stored as diverged, never as an accuracy
            report, path = training.diverged_report(split.test.classes, len(split.test.labels), str(err)), "diverged"
        finally:
            self.reset_weights()
        report.update(n_train=int(len(split.train.labels)), seconds=round(time.perf_counter() - start, 3), path=path)
        return report

    def _run_svm(self, run: RunSpec, split) -> tuple[np.ndarray, str]:
        from course_utils import features

        boundary, _ = self.cache_plan(run)
        if boundary is not None:
            train, test = (self.activations(s, boundary) for s in (split.train, split.test))
        else:
            train, test = (features.extract_features(s, self.name, weights=self.weights, model=self.base,
                                                     cache=False) for s in (split.train, split.test))
        options = {} if run.topology.C is None else {"C": run.topology.C}  # else fit_probe's default C
        probe = features.fit_probe(train, split.train.labels, "svm", seed=run.seed, **options)
        return probe.predict(test), "naive" if boundary is None else "cached"

    def build(self, run: RunSpec, num_classes: int):
        """The flat model of ``run``: a new seeded head, frozen and re-initialised as its topology says."""
        from course_utils import surgery
        from course_utils.settings import seed_everything

        seed_everything(run.seed)
        flat = surgery.replace_head(self.base, num_classes, extension_units=run.topology.units, seed=run.seed)
        train_last = self.train_last(run.topology)
        surgery.freeze(flat, train_last=train_last)
        if run.topology.kind == "reinit_top":
            surgery.reinitialize(flat, self.blocks[len(self.blocks) - train_last:], seed=run.seed)
        self._mark_dirty(train_last)
        return flat

    def _suffix(self, run: RunSpec, flat, boundary: str, backbone_lr: float | None):
        """The compiled model after ``boundary``, in the state a fresh ``flat`` would start from.

        Compiling traces the train step (about a second); runs of the same topology reuse one compiled
        suffix: its new layers take ``flat``'s fresh weights (and dropout seed), its optimizer is zeroed and
        set to ``run.lr``, which is exactly the state of a freshly compiled copy.
        """
        from course_utils import training

        factor = None if backbone_lr is None else backbone_lr / run.lr
        key = (boundary, run.topology.kind, run.topology.blocks, run.topology.units, factor,
               int(flat.output.shape[-1]))
        model = self._compiled.get(key)
        if model is None:
            model = keras_suffix(flat, boundary)
            training.compile_classifier(model, run.lr, backbone_lr)
            self._compiled[key] = model
            return model
        for layer in model.layers:
            if layer.name not in self._initial and layer.variables:  # new layers: copy the fresh ones
                for mine, fresh in zip(layer.variables, flat.get_layer(layer.name).variables):
                    mine.assign(fresh)
        _reset_optimizer(model.optimizer, run.lr)
        return model

    def _mark_dirty(self, train_last: int) -> None:
        """Remember the backbone layers of the last ``train_last`` blocks: training or re-init changes them."""
        from course_utils import backbones

        trained = set(self.blocks[len(self.blocks) - train_last:]) if train_last else set()
        self._dirty |= {name for name, block in backbones.layer_blocks(self.base).items()
                        if block in trained and name in self._initial}

    def _run_network(self, run: RunSpec, split) -> tuple[np.ndarray, str]:
        from course_utils import training

        boundary, _ = self.cache_plan(run)
        if boundary is not None:  # before any surgery: activations need the pristine weights
            x_train, x_test = (self.activations(s, boundary) for s in (split.train, split.test))
        flat = self.build(run, len(split.train.classes))
        backbone_lr = run.lr * run.backbone_lr_factor if run.backbone_lr_factor is not None else None
        order = batch_order(len(split.train.labels), run.batch_size, run.steps, run.seed)
        if boundary is None:
            model, x_train, x_test, preprocess = flat, split.train.images, split.test.images, self.preprocess
            training.compile_classifier(model, run.lr, backbone_lr)
        else:
            model, preprocess = self._suffix(run, flat, boundary, backbone_lr), None
        losses = train_steps(model, x_train, split.train.labels, order, preprocess, run.augment, run.seed)
        training.check_finite(losses, f"the training loss at lr={run.lr:g}")
        if boundary is None:
            probs, path = training.predict_proba(flat, x_test, self.preprocess), "naive"
        else:
            probs, path = evaluation.predict(model, x_test), "cached"
        training.check_finite(probs, "the outputs on the test images")
        return probs.argmax(axis=1), path


def _reset_optimizer(optimizer, lr: float) -> None:
    """Zero an optimizer's state (iterations, momentum) and set its learning rate, as if newly made."""
    for variable in optimizer.variables:
        variable.assign(np.zeros(variable.shape, dtype=variable.dtype))
    optimizer.learning_rate = lr


# --------------------------------------------------------------------------------------------------
# Sweeps


def make_row(config: SweepConfig, run: RunSpec, report: Mapping[str, Any]) -> dict:
    """The stored line of a finished run: identity, sweep name, run config, report, backend, time."""
    from course_utils.quiet import keras  # lazy: importing this module must not load TensorFlow

    return {"id": run.identity, "sweep": config.name, "run": run.to_dict(), "version": STORE_VERSION,
            "backend": keras.backend.backend(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **report}


def run_sweep(config: str | os.PathLike | Mapping | SweepConfig, data: str | None = None,
              out: str | os.PathLike | None = None, cache: bool = True, progress: bool = True,
              engine: Engine | None = None, runs: Sequence[RunSpec] | None = None) -> SweepResult:
    """Run every run of ``config`` not yet in the results store ``out`` (notebook ``07_experiments``).

    ``data`` overrides the config's dataset; ``cache=False`` runs the naive path (``--no-cache``);
    ``runs`` restricts the sweep to some of the config's runs; ``engine`` reuses a loaded backbone. Each
    finished run is appended to the store at once, so a killed sweep resumes where it stopped.
    """
    cfg = config if isinstance(config, SweepConfig) else load_config(config, data)
    if data and isinstance(config, SweepConfig):
        cfg = replace(cfg, dataset=data)
    store = ResultStore(out or default_results_path(cfg))
    start = time.perf_counter()
    with store.lock():
        if store.repair():
            warnings.warn(f"{store.path}: removed an incomplete last line left by an interrupted sweep")
        runs, done = (expand(cfg) if runs is None else list(runs)), store.done()
        pending = [run for run in runs if run.identity not in done]
        engine = _engine_for(cfg, cache, engine) if pending else engine
        if pending:
            paths = engine.prepare(pending)
            print(f"sweep {cfg.name}: {len(pending)} runs to do ({len(runs) - len(pending)} already in "
                  f"{store.path}); {paths['cached']} on cached activations, {paths['naive']} naive")
            for why, count in engine.fallbacks.items():
                print(f"  naive path for {count} runs: {why}")
            engine.fallbacks.clear()
        rows = []
        for run in settings.progress_bar(pending, desc=f"sweep {cfg.name}", unit="run", disable=not progress):
            row = make_row(cfg, run, engine.run(run))
            store.append(row)
            rows.append(row)
    return SweepResult(store.path, len(runs), len(runs) - len(pending), len(pending),
                       time.perf_counter() - start, cache, rows, engine)


def _engine_for(cfg: SweepConfig, cache: bool, engine: Engine | None) -> Engine:
    if engine is not None and (engine.name, engine.weights, engine.size, engine.cache) == (
            cfg.backbone, cfg.weights, cfg.image_size, cache):
        return engine
    return Engine(cfg.backbone, cfg.weights, cfg.image_size, cache=cache)


def describe_plan(config: SweepConfig, out: str | os.PathLike | None = None) -> str:
    """How many runs each experiment has and how many are already in the store."""
    store = ResultStore(out or default_results_path(config))
    done = store.done()
    lines = [f"sweep {config.name!r} on {resolve_dataset(config.dataset)} ({config.backbone}, "
             f"{config.image_size} px, seeds {config.seeds}); results: {store.path}"]
    for name, runs in experiment_runs(config).items():
        finished = sum(run.identity in done for run in runs)
        lines.append(f"  {name}: {len(runs)} runs ({finished} done)")
    total = expand(config)
    lines.append(f"  in all: {len(total)} distinct runs ({sum(r.identity in done for r in total)} done)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Reading results (notebook 07_experiments, docs/findings.md)


def topology_label(row: Mapping[str, Any]) -> str:
    """The topology's name in plots and tables."""
    topo = row["run"]["topology"]
    return topo.get("name") or topo["kind"]


def select(rows: Iterable[Mapping], runs: Iterable[RunSpec] | None = None, **fixed: Any) -> list[dict]:
    """Rows whose identity is among ``runs`` (when given) and whose run fields equal ``fixed``.

    ``topology=`` matches the topology label (``"frozen_head"``, or the name given in the config).
    """
    ids = None if runs is None else {run.identity for run in runs}
    out = []
    for row in rows:
        if ids is not None and row["id"] not in ids:
            continue
        fields = {**row["run"], "topology": topology_label(row)}
        if all(fields.get(k) == v for k, v in fixed.items()):
            out.append(dict(row))
    return out


def _sort_key(value: Any) -> tuple:
    """Numbers in numeric order, then strings, then None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (2, 0.0, "") if value is None else (1, 0.0, str(value))


def _value(row: Mapping[str, Any], metric: str = "accuracy") -> float:
    """``row[metric]`` as a float; NaN for a diverged run (stored as null: it has no accuracy)."""
    value = row.get(metric)
    return float("nan") if value is None else float(value)


def curve(rows: Iterable[Mapping], x: str, metric: str = "accuracy") -> tuple[list, list[list[float]]]:
    """(sorted x values, the seeds' ``metric`` at each x) for ``plots.sweep_curve``; diverged runs are NaN."""
    groups: dict[Any, list[float]] = {}
    for row in rows:
        groups.setdefault(row["run"][x], []).append(_value(row, metric))
    xs = sorted(groups, key=_sort_key)
    return xs, [groups[v] for v in xs]


def curves(rows: Iterable[Mapping], x: str, by: str = "topology") -> tuple[list, dict[str, list[list[float]]]]:
    """``curve`` for each value of ``by`` (default: topology label), on the union of x values."""
    rows = list(rows)
    labels = sorted({topology_label(r) if by == "topology" else str(r["run"][by]) for r in rows})
    xs = sorted({r["run"][x] for r in rows}, key=_sort_key)
    out = {}
    for label in labels:
        mine = [r for r in rows if (topology_label(r) if by == "topology" else str(r["run"][by])) == label]
        got = dict(zip(*curve(mine, x)))
        out[label] = [got.get(v, [float("nan")]) for v in xs]
    return xs, out


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, standard deviation (population, as the plots draw it) and count."""
    arr = np.asarray(list(values), dtype=float)
    if not len(arr):
        return float("nan"), float("nan"), 0
    return float(arr.mean()), float(arr.std()), int(len(arr))


def summarize(rows: Iterable[Mapping], by: Sequence[str] = ("topology", "per_class")) -> list[dict]:
    """Mean ± std of accuracy over seeds for each combination of the ``by`` fields."""
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        fields = {**row["run"], "topology": topology_label(row)}
        groups.setdefault(tuple(fields.get(k) for k in by), []).append(_value(row))
    table = []
    for key in sorted(groups, key=lambda k: tuple(_sort_key(v) for v in k)):
        mean, std, n = mean_std(groups[key])
        table.append({**dict(zip(by, key)), "mean": mean, "std": std, "n": n})
    return table


def best(table: Sequence[Mapping], key: str = "mean") -> dict:
    """The row of ``summarize``'s table with the highest ``key`` (default: mean accuracy)."""
    if not table:
        raise ValueError("the table is empty: no results matched (check select()'s filters)")
    return dict(max(table, key=lambda row: row[key]))


def describe_curve(xs: Sequence, seeds: Sequence[Sequence[float]], x: str) -> str:
    """One line: mean ± std at each x, and where the best mean is (notebook ``07_experiments``)."""
    stats = [mean_std(values) for values in seeds]
    points = ", ".join(f"{v}: {m:.3f} ± {s:.3f}" for v, (m, s, _) in zip(xs, stats))
    top = int(np.nanargmax([m for m, _, _ in stats])) if stats else 0
    return f"{x} -> accuracy  {points}  (best at {x}={xs[top]})" if stats else f"{x}: no results"


def format_summary(table: Sequence[Mapping]) -> str:
    """``summarize``'s table as aligned text."""
    if not table:
        return "(no results)"
    keys = [k for k in table[0] if k not in {"mean", "std", "n"}]
    lines = ["  ".join(f"{k:>14}" for k in keys) + "   accuracy (mean ± std, n)"]
    for row in table:
        cells = "  ".join(f"{str(row[k]):>14}" for k in keys)
        lines.append(f"{cells}   {row['mean']:.3f} ± {row['std']:.3f} (n={row['n']})")
    return "\n".join(lines)


def report(config: SweepConfig, rows: Iterable[Mapping]) -> str:
    """Per experiment of ``config``: mean ± std over seeds by topology and the axes that experiment varies."""
    rows = list(rows)
    lines = []
    for name, runs in experiment_runs(config).items():
        grid = config.grids[name]
        varied = [axis for axis in ("per_class", "lr", "steps", "backbone_lr_factor") if len(grid[axis]) > 1]
        chosen = select(rows, runs)
        lines += [f"{name}: {len(chosen)} of {len(runs)} runs", format_summary(summarize(chosen, ("topology", *varied)))]
    return "\n".join(lines)


def mean_confusion(rows: Iterable[Mapping]) -> dict:
    """Summed confusion matrix of several runs, as a report ``plots.confusion_matrix`` can draw."""
    rows = [r for r in rows if r.get("confusion_matrix") is not None]  # diverged runs have none
    if not rows:
        raise ValueError("no rows to sum: check the filters passed to select()")
    cm = np.sum([np.asarray(r["confusion_matrix"]) for r in rows], axis=0)
    return {"confusion_matrix": cm.tolist(), "classes": rows[0]["classes"],
            "accuracy": float(np.trace(cm) / max(cm.sum(), 1))}
