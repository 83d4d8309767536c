"""Sweeps on a Ray cluster: ``python -m course_utils sweep CONFIG --engine ray`` (notebook ``07_experiments``).

Ray Core, not Ray Tune: the course already has its grid (``runs.expand``), its resumable store
(``results.ResultStore``) and its one ``Runner``; what it lacks is a scheduler that puts runs on the GPUs
and CPUs of a cluster and notices dead workers. Ray Core actors give exactly that. Tune would bring a second
grid, a second results folder and its own resume logic, and it would write trial files from the workers.

How a sweep fans out:

* runs that share a frozen prefix (same backbone, weights, input size, data, per_class, seed and cut point)
  form a group; a group goes to one actor (a worker process holding one ``Runner``), which computes the
  prefix activations once and then trains each run of the group on them. An actor that finishes a group
  takes the next one and keeps its backbone and its activations in memory;
* each actor holds its resources: ``gpus_per_run`` GPUs (on a GPU cluster) and ``cpus_per_run`` CPUs, so
  Ray runs as many groups at once as the cluster has room for;
* only the driver (this process) writes the store: one row per finished run, appended atomically as soon
  as the run comes back. Workers never touch it. A killed driver loses only runs in flight; the rerun skips
  every stored run;
* a worker killed mid-run (its process dies) makes the driver retry that run on a fresh actor, up to
  ``max_retries`` times; then a ``failed`` row is stored with the reason, and the sweep goes on.
  An exception raised by the run itself (a bad config, a model that cannot be built) stops the sweep, as
  it does under ``--engine local``.

Ray is optional (``pip install -e ".[cluster]"``); it is imported only when a Ray sweep starts.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import deque
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator, Mapping, Sequence

from course_utils import settings

from course_utils.results import ResultStore, make_row
from course_utils.runner import Runner
from course_utils.runs import RunSpec, SweepConfig

EXTRA = 'pip install -e ".[cluster]"'
FAILED = "failed"  # the ``path`` of a run whose worker died more than ``max_retries`` times
# Passed from the driver to every worker, so a remote worker reads the same cache, data and settings.
_FORWARDED_ENV = ("COURSE_", "KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL")


class MissingExtraError(ValueError):
    """``--engine ray`` without Ray installed; the message names the extra to install."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how a Ray sweep runs (``sweep --engine ray`` flags; notebook ``07_experiments``).

    ``address``: None starts a local cluster sized to the machine (or to ``num_cpus``); ``"auto"`` joins
    the cluster started on this machine with ``ray start``; ``"HOST:6379"`` joins that one.
    ``runner_factory(backbone, weights, image_size, cache)`` builds the runner in each worker (tests and
    ``--smoke`` pass their own).
    """

    address: str | None = None
    gpus_per_run: float = 0.0
    cpus_per_run: float = 1.0
    num_cpus: int | None = None
    max_retries: int = 2
    cache: bool = True
    runner_factory: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        if self.gpus_per_run < 0 or self.cpus_per_run <= 0:
            raise ValueError(f"--gpus-per-run must be >= 0 and --cpus-per-run > 0, got {self.gpus_per_run} "
                             f"and {self.cpus_per_run}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")


def as_options(options: RayOptions | Mapping[str, Any] | None) -> RayOptions:
    """``RayOptions`` from itself, a mapping of its fields (``run_sweep(ray_options=...)``) or None."""
    if isinstance(options, RayOptions):
        return options
    options = dict(options or {})
    unknown = set(options) - {f.name for f in fields(RayOptions)}
    if unknown:
        raise ValueError(f"unknown Ray options {sorted(unknown)}; allowed: {[f.name for f in fields(RayOptions)]}")
    return RayOptions(**options)


class SweepRows(list):
    """The rows ``run_pending`` stored, plus what the sweep cost: ``passes`` (forward passes over images to
    compute prefix activations, all workers together), ``retries`` and ``failures``."""

    passes: int = 0
    retries: int = 0
    failures: int = 0


def import_ray() -> Any:
    """The ``ray`` module, or a one-line ``MissingExtraError`` that names the extra to install."""
    try:
        import ray  # lazy: Ray is an optional dependency (the "cluster" extra), needed only by --engine ray
    except ImportError:
        raise MissingExtraError(f"--engine ray needs Ray, which is not installed: {EXTRA}") from None
    return ray


# --------------------------------------------------------------------------------------------------
# Groups of runs that share a frozen prefix


def cut_point(run: RunSpec) -> int | None:
    """How many of the last blocks ``run`` trains (0: only new layers); None when no prefix is frozen
    (every block trains, or augmentation changes the images every step)."""
    kind = run.topology.kind
    if run.augment or kind == "finetune_all":
        return None
    return run.topology.blocks if kind in {"finetune_last", "reinit_top", "extension"} else 0


def group_key(run: RunSpec) -> tuple:
    """Runs with equal keys share their frozen prefix's activations (and their data)."""
    cut = cut_point(run)
    return (run.backbone, run.weights, run.image_size, run.dataset, run.per_class, run.test_per_class,
            run.test_fraction, run.val_fraction, run.seed, cut if cut is not None else f"own:{run.identity}")


def plan_groups(runs: Sequence[RunSpec]) -> list[list[RunSpec]]:
    """``runs`` grouped by ``group_key``, largest group first (so long groups start early); one worker
    computes a group's activations once (notebook ``07_experiments``)."""
    groups: dict[tuple, list[RunSpec]] = {}
    for run in runs:
        groups.setdefault(group_key(run), []).append(run)
    return sorted(groups.values(), key=len, reverse=True)


# --------------------------------------------------------------------------------------------------
# Workers


class Worker:
    """A Ray actor's body: one runner, loaded on the first run, kept for every run sent to it."""

    def __init__(self, backbone: str, weights: str, image_size: int, cache: bool,
                 factory: Callable[..., Any] | None) -> None:
        self._spec = (backbone, weights, image_size, cache)
        self._factory = factory or Runner
        self._runner: Any = None

    def run(self, run: RunSpec) -> dict:
        """The run's report and the activation passes it made."""
        if self._runner is None:
            self._runner = self._factory(*self._spec)
        before = self._runner.passes  # forward passes made for cached activations (``Runner.passes``)
        report = self._runner.run(run)
        return {"report": report, "passes": self._runner.passes - before}


def failure_report(reason: str) -> dict:
    """The stored report of a run whose worker kept dying: no accuracy, ``path`` "failed", the reason."""
    return {"failed": True, "reason": reason, "accuracy": None, "per_class_accuracy": None,
            "confusion_matrix": None, "path": FAILED}


def _worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_ENV)}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"  # several runs may share a GPU (--gpus-per-run 0.5)
    return env


@contextlib.contextmanager
def cluster(options: RayOptions) -> Iterator[Any]:
    """Ray, connected: an already initialised Ray is used as is; otherwise a local cluster is started
    (``address`` None) or joined, and shut down on exit."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    local = options.address is None
    ray.init(address=options.address, num_cpus=options.num_cpus if local else None,
             include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="ERROR")
    try:
        yield ray
    finally:
        ray.shutdown()


def slots(resources: Mapping[str, float], options: RayOptions) -> int:
    """How many runs the cluster can hold at once with the per-run resources of ``options``."""
    if options.gpus_per_run > 0:
        room = math.floor(resources.get("GPU", 0) / options.gpus_per_run + 1e-9)
        if room < 1:
            raise ValueError(f"the Ray cluster has {resources.get('GPU', 0):g} GPUs but each run asks for "
                             f"{options.gpus_per_run:g}; lower --gpus-per-run or join a GPU cluster (--address)")
        return room
    room = math.floor(resources.get("CPU", 0) / options.cpus_per_run + 1e-9)
    if room < 1:
        raise ValueError(f"the Ray cluster has {resources.get('CPU', 0):g} CPUs but each run asks for "
                         f"{options.cpus_per_run:g}; lower --cpus-per-run")
    return room


# --------------------------------------------------------------------------------------------------
# The driver


class _Driver:
    """The scheduling loop: one run in flight per actor, rows written as runs come back."""

    def __init__(self, ray: Any, cfg: SweepConfig, store: ResultStore, options: RayOptions, bar: Any) -> None:
        self.ray, self.cfg, self.store, self.options, self.bar = ray, cfg, store, options, bar
        self.actor_class = ray.remote(Worker).options(
            num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run, max_restarts=0, max_task_retries=0,
            runtime_env={"env_vars": _worker_env()})
        self.rows = SweepRows()
        self.tries: dict[str, int] = {}
        self.flight: dict[Any, tuple[Any, RunSpec, deque]] = {}  # ObjectRef -> (actor, run, rest of group)

    def _actor(self) -> Any:
        return self.actor_class.remote(self.cfg.backbone, self.cfg.weights, self.cfg.image_size,
                                       self.options.cache, self.options.runner_factory)

    def submit(self, actor: Any, group: deque) -> None:
        run = group.popleft()
        self.flight[actor.run.remote(run)] = (actor, run, group)

    def store_row(self, run: RunSpec, report: Mapping[str, Any]) -> None:
        row = make_row(self.cfg, run, report)
        self.store.append(row)  # the only writer: one complete line, fsync-ed
        self.rows.append(row)
        self.bar.update(1)

    def worker_died(self, run: RunSpec, err: Exception) -> bool:
        """Count a try; True when ``run`` should be tried again, else store its failure row."""
        tries = self.tries[run.identity] = self.tries.get(run.identity, 0) + 1
        reason = f"worker died {tries} times ({type(err).__name__})"
        if tries <= self.options.max_retries:
            self.rows.retries += 1
            self.bar.write(f"retry {tries}/{self.options.max_retries} of run {run.identity}: its worker died")
            return True
        self.rows.failures += 1
        self.bar.write(f"FAILED run {run.identity} ({run.topology.label}, seed {run.seed}): {reason}; "
                       "stored as failed, the sweep goes on")
        self.store_row(run, failure_report(reason))
        return False

    def drain(self, groups: deque, width: int) -> SweepRows:
        """Run every group, ``width`` actors at a time; returns the stored rows."""
        for _ in range(min(width, len(groups))):
            self.submit(self._actor(), deque(groups.popleft()))
        died_errors = (self.ray.exceptions.RayActorError, self.ray.exceptions.WorkerCrashedError)
        try:
            while self.flight:
                ready, _ = self.ray.wait(list(self.flight), num_returns=1)
                actor, run, rest = self.flight.pop(ready[0])
                try:
                    result = self.ray.get(ready[0])
                except died_errors as err:
                    self.ray.kill(actor)
                    actor = None
                    if self.worker_died(run, err):
                        rest.appendleft(run)
                except self.ray.exceptions.RayTaskError as err:  # the run's own error: stop, as --engine local
                    if isinstance(err.cause, (ValueError, OSError)):
                        raise err.cause from None  # a bad value or file: its one-line message
                    raise err.as_instanceof_cause() from None  # a bug: with the worker's traceback
                else:
                    self.rows.passes += result["passes"]
                    self.store_row(run, result["report"])
                if not rest and groups:
                    rest = deque(groups.popleft())
                if rest:
                    self.submit(actor if actor is not None else self._actor(), rest)
                elif actor is not None:
                    self.ray.kill(actor)
        finally:
            for actor, _, _ in self.flight.values():
                self.ray.kill(actor)
        return self.rows


def run_pending(cfg: SweepConfig, pending: Sequence[RunSpec], store: ResultStore,
                options: RayOptions | Mapping[str, Any] | None = None, progress: bool = True) -> SweepRows:
    """Run ``pending`` (runs not yet in ``store``) on a Ray cluster; the driver appends one row per run.

    Called by ``experiments.run_sweep(engine="ray")`` (notebook ``07_experiments``). Returns the stored
    rows (``SweepRows``: also the activation passes, retries and failures)."""
    options = as_options(options)
    if not pending:
        return SweepRows()
    groups = deque(plan_groups(pending))
    with cluster(options) as ray:
        resources = ray.cluster_resources()
        width = min(slots(resources, options), len(groups))
        print(f"sweep {cfg.name} on Ray ({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs): "
              f"{len(pending)} runs in {len(groups)} groups sharing a frozen prefix, {width} at a time")
        start = time.perf_counter()
        with settings.progress_bar(total=len(pending), desc=f"sweep {cfg.name} (ray)", unit="run",
                                   disable=not progress) as bar:
            rows = _Driver(ray, cfg, store, options, bar).drain(groups, width)
        print(f"sweep {cfg.name}: {len(rows)} runs in {time.perf_counter() - start:.1f} s on Ray, "
              f"{rows.passes} activation passes, {rows.retries} retries, {rows.failures} failed")
    return rows
