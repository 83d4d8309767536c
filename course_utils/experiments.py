"""Experiment sweeps: every run of a config not yet in the results store, by the one Runner (notebook
``07_experiments``; ``python -m course_utils sweep CONFIG`` runs the same code).

``engine="local"`` runs them one after another in this process; ``engine="ray"`` fans them out over a Ray
cluster (``course_utils.distributed``, the optional ``cluster`` extra). Either way only this process writes
the store, one row per finished run, so a killed sweep resumes where it stopped. ``cache=False``
(``--no-cache``) runs every run on the naive path, for comparison (benchmarks/).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from course_utils import settings
from course_utils.results import ResultStore, default_results_path, make_row
from course_utils.runner import Runner
from course_utils.runs import RunSpec, SweepConfig, experiment_runs, expand, load_config, resolve_dataset

ENGINES = ("local", "ray")


@dataclass
class SweepResult:
    """What ``run_sweep`` did; ``passes``: forward passes over images made for cached activations."""

    path: Path
    planned: int
    skipped: int
    ran: int
    seconds: float
    cache: bool
    rows: list[dict] = field(default_factory=list)
    runner: Runner | None = None
    passes: int = 0
    engine: str = "local"

    def __str__(self) -> str:
        return (f"{self.ran} runs in {self.seconds:.1f} s ({self.skipped} of {self.planned} already done), "
                f"cache {'on' if self.cache else 'off'}, {self.passes} activation passes, engine {self.engine}; "
                f"results in {self.path}")


def runner_for(cfg: SweepConfig, cache: bool = True, runner: Runner | None = None) -> Runner:
    """``runner`` when it has ``cfg``'s backbone, weights, size and cache setting, else a new Runner."""
    if runner is not None and (runner.name, runner.weights, runner.size, runner.cache) == (
            cfg.backbone, cfg.weights, cfg.image_size, cache):
        return runner
    return Runner(cfg.backbone, cfg.weights, cfg.image_size, cache=cache)


def _run_local(cfg: SweepConfig, pending: list[RunSpec], store: ResultStore, runner: Runner,
               progress: bool) -> list[dict]:
    paths = runner.prepare(pending)
    print(f"sweep {cfg.name}: {len(pending)} runs to do; {paths['cached']} on cached activations, "
          f"{paths['naive']} naive")
    for why, count in runner.fallbacks.items():
        print(f"  naive path for {count} runs: {why}")
    runner.fallbacks.clear()
    rows = []
    for run in settings.progress_bar(pending, desc=f"sweep {cfg.name}", unit="run", disable=not progress):
        row = make_row(cfg, run, runner.run(run))
        store.append(row)
        rows.append(row)
    return rows


def run_sweep(config: str | os.PathLike | Mapping | SweepConfig, data: str | None = None,
              out: str | os.PathLike | None = None, cache: bool = True, progress: bool = True,
              runner: Runner | None = None, runs: Sequence[RunSpec] | None = None, engine: str = "local",
              ray_options: Mapping[str, Any] | None = None) -> SweepResult:
    """Run every run of ``config`` not yet in the results store ``out`` (notebook ``07_experiments``).

    ``data`` overrides the config's dataset; ``cache=False`` runs the naive path (``--no-cache``); ``runs``
    restricts the sweep to some of the config's runs; ``runner`` reuses a loaded backbone (local engine);
    ``engine="ray"`` hands the pending runs to ``distributed.run_pending`` with ``ray_options`` (address,
    GPUs/CPUs per run). Each finished run is appended to the store at once.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    cfg = config if isinstance(config, SweepConfig) else load_config(config, data)
    if data and isinstance(config, SweepConfig):
        cfg = replace(cfg, dataset=data)
    store = ResultStore(out or default_results_path(cfg))
    start = time.perf_counter()
    passes = 0
    with store.lock():
        if store.repair():
            warnings.warn(f"{store.path}: removed an incomplete last line left by an interrupted sweep")
        runs, done = (expand(cfg) if runs is None else list(runs)), store.done()
        pending = [run for run in runs if run.identity not in done]
        if pending and engine == "ray":
            # lazy: Ray is an optional extra (pip install -e ".[cluster]"); the local engine never needs it
            from course_utils import distributed

            options = {"cache": cache, **dict(ray_options or {})}
            result = distributed.run_pending(cfg, pending, store, options, progress)
            rows, passes = list(result), int(getattr(result, "passes", 0))  # SweepRows: rows with .passes
        elif pending:
            runner = runner_for(cfg, cache, runner)
            before = runner.passes
            rows = _run_local(cfg, pending, store, runner, progress)
            passes = runner.passes - before
        else:
            rows = []
    return SweepResult(store.path, len(runs), len(runs) - len(pending), len(pending), time.perf_counter() - start,
                       cache, rows, runner, passes, engine)


def describe_plan(config: SweepConfig, out: str | os.PathLike | None = None) -> str:
    """How many runs each experiment has and how many are already in the store (notebook ``07``)."""
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
