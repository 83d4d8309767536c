"""Tests of course_utils.distributed: Ray sweeps on a local 2-CPU cluster (issue 12).

Most tests use a fake runner, so a Ray start-up (~10-15 s on 2 cores) and the workers' imports are the
main cost; the cluster is started once for the module. The slow tests kill workers (each new worker
imports TensorFlow again) and SIGKILL a driver mid-sweep.
"""

from __future__ import annotations

import builtins
import json
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from course_utils import cli, distributed

ray = pytest.importorskip("ray")  # the "cluster" extra; CI installs it

from course_utils.results import ResultStore
from course_utils.runs import expand, load_config

TINY = {"name": "tiny", "dataset": "sklearn:digits", "image_size": 32, "seeds": [0, 1], "per_class": [5],
        "steps": [2], "lr": [0.01, 0.1], "test_per_class": 3,
        "topologies": ["frozen_head", {"kind": "finetune_last", "blocks": 1}, {"kind": "finetune_all"}]}


class FakeRunner:
    """Stands in for ``runner.Runner``: an accuracy derived from the run identity, one activation pass per
    new group key. ``kill`` maps run identities to how many times their worker process kills itself
    (SIGKILL) before the run goes through; each try leaves a file in ``state``."""

    def __init__(self, backbone, weights, image_size, cache=True, state=None, kill=None, delay=0.0):
        self.state, self.kill, self.delay = Path(state), dict(kill or {}), delay
        self.passes, self._seen = 0, set()

    def run(self, run):
        key = distributed.group_key(run)
        if key not in self._seen:
            self._seen.add(key)
            self.passes += 1
        tries = len(list(self.state.glob(f"try-{run.identity}-*")))
        (self.state / f"try-{run.identity}-{time.time_ns()}").touch()
        if tries < self.kill.get(run.identity, 0):
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(self.delay)
        return {"accuracy": int(run.identity, 16) % 97 / 97, "seconds": 0.0, "path": "fake"}


@pytest.fixture(scope="module")
def cluster():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    os.environ["RAY_memory_monitor_refresh_ms"] = "0"  # other jobs on a shared CI box must not kill workers
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()
    del os.environ["RAY_memory_monitor_refresh_ms"]


def _sweep(tmp_path, runs, **fake):
    cfg = load_config(TINY)
    store = ResultStore(tmp_path / "results.jsonl")
    factory = functools.partial(FakeRunner, state=tmp_path, **fake)
    options = distributed.RayOptions(runner_factory=factory, max_retries=1)
    return cfg, store, distributed.run_pending(cfg, runs, store, options, progress=False)


def test_groups_share_a_prefix_per_seed_and_cut_point():
    runs = expand(load_config(TINY))
    groups = distributed.plan_groups(runs)
    # 2 seeds x (frozen_head: 1 cut, last1: 1 cut) share per group (2 lrs each); finetune_all: one group per run
    assert sorted(len(g) for g in groups) == [1, 1, 1, 1, 2, 2, 2, 2]
    assert [len(g) for g in groups] == sorted((len(g) for g in groups), reverse=True)
    assert all(len({distributed.group_key(r) for r in g}) == 1 for g in groups)


def test_rows_once_each_and_passes_once_per_group(cluster, tmp_path, capsys):
    cfg, store, rows = _sweep(tmp_path, expand(load_config(TINY)))
    stored = store.rows()
    assert len(stored) == len(rows) == 12 and len({r["id"] for r in stored}) == 12
    expected = {r.identity: int(r.identity, 16) % 97 / 97 for r in expand(cfg)}
    assert {r["id"]: r["accuracy"] for r in stored} == expected
    assert rows.passes <= 8 and rows.passes >= 4  # one per group at most; actors that reuse a key save more
    assert (rows.retries, rows.failures) == (0, 0)
    assert "12 runs in 8 groups" in capsys.readouterr().out


@pytest.mark.slow
def test_a_killed_worker_is_retried_then_stored_as_failed_and_the_sweep_goes_on(cluster, tmp_path, capsys):
    runs = expand(load_config(TINY))[:5]
    once, always = runs[0].identity, runs[3].identity
    _, store, rows = _sweep(tmp_path, runs, kill={once: 1, always: 99})
    assert (rows.retries, rows.failures) == (2, 1)
    tries = {run.identity: len(list(tmp_path.glob(f"try-{run.identity}-*"))) for run in runs}
    assert tries == {run.identity: {once: 2, always: 2}.get(run.identity, 1) for run in runs}  # max_retries=1
    stored = {row["id"]: row for row in store.rows()}
    assert len(stored) == len(store.rows()) == 5
    assert stored[once]["path"] == "fake" and stored[once]["accuracy"] == int(once, 16) % 97 / 97
    failed = stored[always]
    assert failed["path"] == distributed.FAILED and failed["accuracy"] is None
    assert failed["reason"] == "worker died 2 times (ActorDiedError)"
    assert sum(row["path"] == "fake" for row in stored.values()) == 4
    out = capsys.readouterr().out
    assert out.count("FAILED run") == 1 and f"FAILED run {always}" in out
    assert out.count(f"retry 1/1 of run {once}") == 1


def test_without_ray_the_error_line_names_the_extra(monkeypatch, tmp_path, capsys):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(distributed.MissingExtraError) as err:
        distributed.import_ray()
    assert str(err.value) == '--engine ray needs Ray, which is not installed: pip install -e ".[cluster]"'
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    code = cli.main(["sweep", str(config), "--engine", "ray", "--out", str(tmp_path / "r.jsonl")])
    assert (code, capsys.readouterr().err) == (2, f"error: {err.value}\n")


def test_ray_flags_need_the_ray_engine(capsys):
    assert cli.main(["sweep", "configs/quick.yaml", "--gpus-per-run", "1"]) == 2
    assert capsys.readouterr().err == "error: --gpus-per-run: only with --engine ray (add --engine ray)\n"


def test_options_are_checked():
    assert distributed.as_options({"address": "auto", "gpus_per_run": 1}).address == "auto"
    with pytest.raises(ValueError, match="unknown Ray options"):
        distributed.as_options({"gpus": 1})
    with pytest.raises(ValueError, match="gpus-per-run"):
        distributed.RayOptions(gpus_per_run=-1)
    assert distributed.slots({"CPU": 16.0, "GPU": 4.0}, distributed.RayOptions(gpus_per_run=1)) == 4
    assert distributed.slots({"CPU": 16.0, "GPU": 4.0}, distributed.RayOptions(gpus_per_run=0.5)) == 8
    assert distributed.slots({"CPU": 2.0}, distributed.RayOptions()) == 2
    with pytest.raises(ValueError, match="has 0 GPUs"):
        distributed.slots({"CPU": 2.0}, distributed.RayOptions(gpus_per_run=1))


DRIVER = '''
import json, os, sys, time
from course_utils import experiments


class Slow:  # defined in __main__, so Ray ships it to the workers by value
    def __init__(self, backbone, weights, image_size, cache=True):
        self.passes = 0

    def run(self, run):
        time.sleep(1.0)
        return {"accuracy": int(run.identity, 16) % 97 / 97, "seconds": 1.0, "path": "fake"}


result = experiments.run_sweep(json.loads(sys.argv[1]), out=sys.argv[2], progress=False, engine="ray",
                               ray_options={"runner_factory": Slow, "num_cpus": 2})
print("ran", result.ran, "skipped", result.skipped, flush=True)
'''


def _driver(tmp_path, store):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "RAY_memory_monitor_refresh_ms": "0", "COURSE_PROGRESS": "0"}
    return subprocess.Popen([sys.executable, str(script), json.dumps(TINY), str(store)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.mark.slow
def test_sigkill_of_the_driver_then_a_rerun_leaves_every_run_exactly_once(tmp_path):
    path = tmp_path / "results.jsonl"
    proc = _driver(tmp_path, path)
    deadline = time.time() + 240
    while time.time() < deadline and (not path.exists() or len(path.read_bytes().splitlines()) < 3):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started (its session)
    proc.wait()
    before = {row["id"] for row in ResultStore(path).rows()}
    assert 3 <= len(before) < 12
    rerun = _driver(tmp_path, path)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    assert f"ran {12 - len(before)} skipped {len(before)}" in out
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert sorted(ids) == sorted({run.identity for run in expand(load_config(TINY))})  # each exactly once


QUICKISH = {"name": "quickish", "dataset": "sklearn:digits", "image_size": 32, "seeds": [0], "per_class": [5],
            "test_per_class": 4, "batch_size": 8, "steps": [3], "lr": [0.01, 0.1],
            "topologies": ["frozen_head", {"kind": "finetune_last", "blocks": 1, "name": "last1"}, "svm"]}


def test_ray_gives_the_local_engines_accuracies_and_confusion_matrices(cluster, tmp_path):
    from course_utils import experiments

    local = experiments.run_sweep(QUICKISH, out=tmp_path / "local.jsonl", progress=False)
    remote = experiments.run_sweep(QUICKISH, out=tmp_path / "ray.jsonl", progress=False, engine="ray")
    assert local.ran == remote.ran == 5
    assert sum(row["accuracy"] is not None for row in ResultStore(tmp_path / "local.jsonl").rows()) >= 4
    by_id = {row["id"]: row for row in ResultStore(tmp_path / "ray.jsonl").rows()}
    for row in ResultStore(tmp_path / "local.jsonl").rows():
        assert by_id[row["id"]]["accuracy"] == row["accuracy"]
        assert by_id[row["id"]]["confusion_matrix"] == row["confusion_matrix"]
        assert by_id[row["id"]]["predictions"] == row["predictions"]


@pytest.mark.parametrize("name, runs", [("maybury", 12), pytest.param("chu", 10, marks=pytest.mark.slow),
                                        pytest.param("pittaras", 20, marks=pytest.mark.slow)])
def test_full_configs_pass_their_smoke_sweep_on_ray(cluster, name, runs, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_PROGRESS", "0")
    out = tmp_path / f"{name}.jsonl"
    config = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    assert cli.main(["sweep", str(config), "--smoke", "--engine", "ray", "--out", str(out)]) == 0
    rows = ResultStore(out).rows()
    assert len(rows) == runs and all(row["path"] in {"cached", "naive", "diverged"} for row in rows)


def test_a_model_that_cannot_be_built_stops_a_ray_smoke_sweep_with_one_error_line(cluster, tmp_path, capsys,
                                                                                  monkeypatch):
    monkeypatch.setenv("COURSE_PROGRESS", "0")
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({**TINY, "topologies": [{"kind": "finetune_last", "blocks": 40}]}))
    assert cli.main(["sweep", str(config), "--smoke", "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: finetune_last: blocks=40 but efficientnet_lite0 has only") and err.count("\n") == 1
