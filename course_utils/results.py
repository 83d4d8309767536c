"""The results store and its readers: one JSON line per finished run, summaries over seeds.

Explained in notebook ``07_experiments``; ``python -m course_utils sweep`` writes the store, ``docs/findings.md``
reads it. A row is ``make_row``'s: the run's identity and fields, the Runner's report, the backend and time.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from course_utils import checks, settings

try:
    import fcntl  # POSIX file locks
except ImportError:  # pragma: no cover - Windows: sweeps do not lock their store
    fcntl = None
from course_utils.evaluation import mean_std
from course_utils.quiet import keras
from course_utils.runs import RunSpec, SweepConfig, experiment_runs

STORE_VERSION = 2
VARIED = ("per_class", "lr", "steps", "backbone_lr_factor", "optimizer", "schedule", "bn", "head_steps",
          "augment", "batch_size")


def make_row(config: SweepConfig, run: RunSpec, report: Mapping[str, Any]) -> dict:
    """The stored line of a finished run: identity, sweep name, run config, report, backend, time."""
    return {"id": run.identity, "sweep": config.name, "run": run.to_dict(), "version": STORE_VERSION,
            "backend": keras.backend.backend(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **report}


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
        if fcntl is None:  # pragma: no cover
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
# Reading results (notebook 07_experiments, docs/findings.md)


def topology_label(row: Mapping[str, Any]) -> str:
    """The topology's name in plots and tables."""
    topo = row["run"]["topology"]
    return topo.get("name") or topo["kind"]


def schedule_label(schedule: Mapping[str, Any] | str | None) -> str:
    """``constant``, ``step(gamma=0.1, stepsize=1000)`` or ``cosine(warmup=100)``: a schedule in tables."""
    if not isinstance(schedule, Mapping):
        return str(schedule or "constant")
    kind = schedule.get("kind", "constant")
    keys = {"step": ("gamma", "stepsize"), "cosine": ("warmup",)}.get(kind, ())
    params = ", ".join(f"{k}={schedule[k]}" for k in keys if schedule.get(k) is not None)
    return f"{kind}({params})" if params else kind


def run_fields(row: Mapping[str, Any]) -> dict:
    """A row's run fields, the topology as its label and the schedule as ``schedule_label`` (hashable)."""
    fields = dict(row["run"])
    if "topology" in fields:
        fields["topology"] = topology_label(row)
    if "schedule" in fields:
        fields["schedule"] = schedule_label(fields["schedule"])
    return fields


def select(rows: Iterable[Mapping], runs: Iterable[RunSpec] | None = None, **fixed: Any) -> list[dict]:
    """Rows whose identity is among ``runs`` (when given) and whose run fields equal ``fixed``.

    ``topology=`` matches the topology label (``"frozen_head"``, or the name given in the config).
    """
    ids = None if runs is None else {run.identity for run in runs}
    out = []
    for row in rows:
        if ids is not None and row["id"] not in ids:
            continue
        fields = run_fields(row)
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
        groups.setdefault(run_fields(row)[x], []).append(_value(row, metric))
    xs = sorted(groups, key=_sort_key)
    return xs, [groups[v] for v in xs]


def curves(rows: Iterable[Mapping], x: str, by: str = "topology") -> tuple[list, dict[str, list[list[float]]]]:
    """``curve`` for each value of ``by`` (default: topology label), on the union of x values."""
    rows = list(rows)
    labels = sorted({str(run_fields(r)[by]) for r in rows})
    xs = sorted({run_fields(r)[x] for r in rows}, key=_sort_key)
    out = {}
    for label in labels:
        mine = [r for r in rows if str(run_fields(r)[by]) == label]
        got = dict(zip(*curve(mine, x)))
        out[label] = [got.get(v, [float("nan")]) for v in xs]
    return xs, out


def summarize(rows: Iterable[Mapping], by: Sequence[str] = ("topology", "per_class")) -> list[dict]:
    """Mean ± std of accuracy over seeds for each combination of the ``by`` fields."""
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        fields = run_fields(row)
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
        varied = [axis for axis in VARIED if len(grid[axis]) > 1]
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


def correct(rows: Iterable[Mapping]) -> np.ndarray:
    """Per-image correctness of runs that differ only by seed, ``(n_seeds, n_images)`` sorted by seed: the
    input of ``evaluation.compare`` (notebooks 03, 07_experiments, docs/findings.md). ``rows``: stored rows,
    or ``Runner.run`` reports (kept in the order given). Every row must cover the same test images in the
    same order; a diverged run (no predictions) counts every image as wrong."""
    rows = sorted(rows, key=lambda row: row.get("run", {}).get("seed", 0))
    if not rows:
        raise ValueError("no rows to compare: check the filters passed to select()")
    ids = rows[0].get("test_ids")
    out = []
    for row in rows:
        if "test_labels" not in row or row.get("test_ids") != ids:
            raise ValueError(f"run {row.get('id', '')} has no per-image test labels, or other test images than "
                             f"run {rows[0].get('id', '')}: rerun it with this version of course_utils")
        predictions = row.get("predictions") or [-1] * len(row["test_labels"])
        out.append(np.asarray(predictions) == np.asarray(row["test_labels"]))
    return np.asarray(out)
