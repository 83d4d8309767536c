"""Tests for course_utils.experiments (notebook 07_experiments): run_sweep through the Runner (cached path
equals naive), kill-and-resume, the command line, bad configs, divergence, a damaged cache, the Ray hand-off,
the JAX backend."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from course_utils import experiments as ex
from course_utils import results, runs, training

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # 2-4 images per class

REPO = Path(__file__).resolve().parents[1]


def tiny_config(data: Path | str, **overrides) -> dict:
    """A config small enough for a test: 64 px, a few images, frozen topologies."""
    config = {"name": "tiny", "dataset": str(data), "image_size": 64, "batch_size": 4, "seeds": [0, 1, 2],
              "per_class": [2, 3], "lr": [0.01, 0.1], "steps": [3], "topologies": ["frozen_head", "svm"]}
    return {**config, **overrides}


@pytest.fixture
def tree(image_tree) -> Path:
    """Two classes of small JPEGs in train/ and test/ (no shared data needed)."""
    return image_tree({"train/cat": 4, "train/dog": 4, "test/cat": 2, "test/dog": 2})


@pytest.fixture
def cache_env(tmp_path, monkeypatch) -> Path:
    """Point COURSE_CACHE at a temporary folder so nothing is written into the repo."""
    path = tmp_path / "cache"
    monkeypatch.setenv("COURSE_CACHE", str(path))
    return path


def test_cached_sweep_gives_the_naive_results_and_counts_passes(tree, cache_env):
    """Same data, same initial weights, same batches: training on cached prefix activations is exact."""
    last2 = {"kind": "finetune_last", "blocks": 2}
    config = runs.load_config(tiny_config(
        tree, seeds=[0], per_class=[3], lr=[0.05], steps=[4],
        topologies=["frozen_head", last2, {"kind": "reinit_top", "blocks": 1}],
        experiments={"topologies": {}, "again": {"lr": [0.01], "topologies": [last2]}}))  # reuses a compiled part
    cached = ex.run_sweep(config, out=cache_env / "cached.jsonl", cache=True, progress=False)
    naive = ex.run_sweep(config, out=cache_env / "naive.jsonl", cache=False, progress=False)
    by_id = {r["id"]: r for r in naive.rows}
    assert len(cached.rows) == len(naive.rows) == len(runs.expand(config)) == 4
    for row in cached.rows:
        other = by_id[row["id"]]
        assert (row["path"], other["path"]) == ("cached", "naive")
        assert row["predictions"] == other["predictions"], row["run"]["topology"]
        assert row["accuracy"] == other["accuracy"] and row["test_ids"] == other["test_ids"]
    assert (cached.passes, naive.passes) == (2, 0)  # train and test images once, for three boundaries
    assert "4 runs" in str(cached) and "2 activation passes" in str(cached)
    again = ex.run_sweep(config, out=cache_env / "cached.jsonl", progress=False)
    assert (again.ran, again.skipped, again.passes) == (0, 4, 0)


class Rows(list):
    """What ``distributed.run_pending`` returns: the stored rows, with the activation passes made."""

    passes = 7


def test_ray_engine_hands_pending_runs_to_distributed(tree, cache_env, monkeypatch):
    calls = []

    def run_pending(cfg, pending, store, options, progress):
        calls.append((cfg.name, len(pending), dict(options), progress))
        rows = [results.make_row(cfg, run, {"accuracy": 0.5}) for run in pending]
        for row in rows:
            store.append(row)
        return Rows(rows)

    monkeypatch.setitem(sys.modules, "course_utils.distributed", types.SimpleNamespace(run_pending=run_pending))
    import course_utils

    monkeypatch.setattr(course_utils, "distributed", sys.modules["course_utils.distributed"], raising=False)
    config = runs.load_config(tiny_config(tree, seeds=[0], per_class=[2], lr=[0.05]))
    result = ex.run_sweep(config, out=cache_env / "ray.jsonl", engine="ray", ray_options={"cpus_per_run": 1},
                          progress=False)
    assert calls == [("tiny", 2, {"cache": True, "cpus_per_run": 1}, False)]
    assert (result.ran, result.passes, result.engine) == (2, 7, "ray")
    assert len(results.load_results(result.path)) == 2
    with pytest.raises(ValueError, match="engine must be one of"):
        ex.run_sweep(config, out=cache_env / "x.jsonl", engine="dask")


def test_describe_plan_counts_done_runs(tree, cache_env):
    config = runs.load_config(tiny_config(tree, seeds=[0], per_class=[2], lr=[0.05], topologies=["svm"]))
    out = cache_env / "plan.jsonl"
    assert describe_lines(config, out)[-1] == "  in all: 1 distinct runs (0 done)"
    ex.run_sweep(config, out=out, progress=False)
    assert describe_lines(config, out)[1:] == ["  grid: 1 runs (1 done)", "  in all: 1 distinct runs (1 done)"]


def describe_lines(config, out) -> list[str]:
    return ex.describe_plan(config, out).splitlines()


def _sweep_command(config: Path, data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "course_utils", "sweep", str(config), "--data", str(data), "--out", str(out)]


def _complete_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().split(b"\n")[:-1]]


def test_sweep_killed_with_sigkill_resumes_without_loss_or_duplicates(tmp_path, tree, cache_env):
    from course_utils import cli

    config_path, out = tmp_path / "tiny.yaml", tmp_path / "results.jsonl"
    config_path.write_text(json.dumps(tiny_config("not/used")))  # JSON is YAML too; --data overrides
    planned = {r.identity for r in runs.expand(runs.load_config(config_path, data=str(tree)))}
    env = {**os.environ, "COURSE_CACHE": str(cache_env), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(_sweep_command(config_path, tree, out), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not _complete_rows(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    stderr = proc.communicate()[1].decode(errors="replace")
    before = _complete_rows(out)
    assert 1 <= len(before) < len(planned), f"the sweep was not killed midway ({len(before)} rows):\n{stderr[-2000:]}"
    assert cli.main(["sweep", str(config_path), "--data", str(tree), "--out", str(out)]) == 0
    after = _complete_rows(out)
    ids = [row["id"] for row in after]
    assert len(ids) == len(set(ids)) == len(planned) and set(ids) == planned
    assert after[: len(before)] == before  # nothing rewritten
    assert cli.main(["sweep", str(config_path), "--data", str(tree), "--out", str(out)]) == 0
    assert _complete_rows(out) == after  # a finished sweep does nothing


def test_cli_parses_sweep_options():
    from course_utils import cli

    args = cli.build_parser().parse_args(["sweep", "c.yaml", "--data", "d", "--out", "r.jsonl", "--no-cache"])
    assert (args.config, args.data, args.out, args.no_cache) == (Path("c.yaml"), "d", Path("r.jsonl"), True)
    assert cli.main(["sweep", "does-not-exist.yaml"]) == 2


def _jax_python() -> str | None:
    if importlib.util.find_spec("jax") is not None:
        return sys.executable
    return os.environ.get("COURSE_JAX_PYTHON") or None


def test_tiny_sweep_runs_on_the_jax_backend(tmp_path, tree, cache_env):
    python = _jax_python()
    if python is None:
        pytest.skip("jax is not installed here (set COURSE_JAX_PYTHON to a Python with jax and keras to run this)")
    config_path, out = tmp_path / "tiny.json", tmp_path / "jax.jsonl"
    config_path.write_text(json.dumps(tiny_config(tree, seeds=[0], per_class=[2], lr=[0.05])))
    env = {**os.environ, "KERAS_BACKEND": "jax", "COURSE_CACHE": str(cache_env)}
    command = [python, "-m", "course_utils", "sweep", str(config_path), "--out", str(out)]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = results.load_results(out)
    assert len(rows) == 2 and {r["backend"] for r in rows} == {"jax"}
    assert {r["path"] for r in rows} == {"cached"}


# ------------------------------------------------------------------------------------------ bad input (issue 13)


@pytest.mark.parametrize("text, message", [
    ("seeds: \"0, 1\"\n", r"c.yaml: seeds must be a list, e.g. \[0, 1, 2\], got '0, 1'"),
    ("lr: [.nan]\n", r"c.yaml: lr must be a finite number, 0 < lr <= 10, got nan"),
    ("name: ../../../../elsewhere/x\n", r"c.yaml: name must be a plain name .*no '/'"),
    ("image_size: big\n", r"c.yaml: image_size must be a whole number, 32 <= image_size <= 1024, got 'big'"),
    ("lr: [0.01\nsteps: [3]\n", r"c.yaml: not valid YAML \(.* at line 2, column \d+\); check the indentation"),
])
def test_bad_config_is_one_error_line_naming_key_and_file(text, message, tmp_path, tree, cache_env, capsys):
    from course_utils import cli

    config = tmp_path / "c.yaml"
    config.write_text(text)
    out = tmp_path / "r.jsonl"
    results.ResultStore(out).append({"id": "earlier", "accuracy": 0.5})  # results already computed
    before = out.read_bytes()
    assert cli.main(["sweep", str(config), "--data", str(tree), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert re.search(message, err), err
    assert out.read_bytes() == before  # nothing lost, nothing written
    assert not (cache_env / "results").exists() and not list(tmp_path.parent.glob("**/elsewhere"))


def test_sweep_out_naming_a_folder_is_refused(tmp_path, tree, capsys):
    from course_utils import cli

    config = tmp_path / "c.json"
    config.write_text(json.dumps(tiny_config(tree)))
    assert cli.main(["sweep", str(config), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --out {tmp_path} is a folder; give a file name, e.g. {tmp_path / 'results.jsonl'}"


def test_store_rows_of_a_diverging_sweep_run(tree, cache_env, monkeypatch):
    config = runs.load_config(tiny_config(tree, seeds=[0], per_class=[2], lr=[0.05], topologies=["frozen_head"]))
    monkeypatch.setattr(training, "fit_steps", lambda *args, **kwargs: {"step": [1, 2], "loss": [0.7, float("nan")],
                                                                      "accuracy": [0.5, 0.5]})
    result = ex.run_sweep(config, out=cache_env / "d.jsonl", progress=False)
    (row,) = results.load_results(result.path)
    assert row["diverged"] is True and row["accuracy"] is None and "became nan" in row["reason"]
    assert "NaN" not in result.path.read_text()


def test_damaged_activation_cache_heals_and_gives_the_same_results(tree, cache_env):
    from course_utils.cache import CacheWarning

    config = runs.load_config(tiny_config(tree, seeds=[0], per_class=[2], lr=[0.05], topologies=["frozen_head"]))
    first = ex.run_sweep(config, out=cache_env / "a.jsonl", progress=False)
    files = sorted((cache_env / "activations").glob("*.npz"))
    assert len(files) == 2, "the sweep cached its train and test activations"
    for path in files:
        path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.warns(CacheWarning, match="is unusable") as caught:
        again = ex.run_sweep(config, out=cache_env / "b.jsonl", progress=False)
    assert {str(p) for p in files} <= {str(w.message).split()[2] for w in caught}  # each file named
    assert again.rows[0]["confusion_matrix"] == first.rows[0]["confusion_matrix"]
    assert all(np.load(p, allow_pickle=False)["values"].size for p in files)  # rewritten whole
