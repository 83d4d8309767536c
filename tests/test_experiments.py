"""Tests for course_utils.experiments (notebook 07_experiments): configs, the results store, the cached
frozen-prefix path (same accuracy as the naive path), kill-and-resume, the command line, the JAX backend."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from course_utils import experiments as ex

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # 2-4 images per class

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "configs" / "quick.yaml"


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


# ------------------------------------------------------------------------------------------ configs


def test_unknown_config_key_names_the_allowed_keys():
    with pytest.raises(ValueError, match=r"(?s)unknown config keys \['learning_rate'\].*Allowed keys.*\n  lr:"):
        ex.load_config({"learning_rate": [0.1]})


@pytest.mark.parametrize("config, message", [
    ({"topologies": ["frozen"]}, "unknown topology kind 'frozen'; choose one of: frozen_head"),
    ({"topologies": [{"kind": "finetune_last", "layers": 2}]}, r"unknown topology keys \['layers'\]"),
    ({"topologies": [{"kind": "finetune_last", "blocks": 0}]}, "needs blocks >= 1"),
    ({"experiments": {"a": {"seeds": [1]}}}, r"unknown grid keys \['seeds'\]; an experiment may set"),
    ({"lr": [0.0]}, r"lr must be a finite number, 0 < lr <= 10, got 0.0"),
    ({"per_class": []}, "grid axis 'per_class' is empty"),
])
def test_bad_configs_raise_helpful_errors(config, message):
    with pytest.raises(ValueError, match=message):
        ex.expand(ex.load_config({"dataset": "sklearn:digits", **config}))


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config file"):
        ex.load_config(tmp_path / "nope.yaml")


def test_quick_config_expands_without_duplicates(flowers_dir):
    config = ex.load_config(QUICK, data=str(flowers_dir))
    per_experiment = ex.experiment_runs(config)
    runs = ex.expand(config)
    assert {name: len(r) for name, r in per_experiment.items()} == {
        "samples": 12, "base_lr": 12, "iterations": 12, "svm": 6}
    assert len(runs) == len({r.identity for r in runs}) == 34  # shared grid points run once
    assert all(r.lr is None and r.steps is None for r in runs if r.topology.kind == "svm")
    assert all(r.dataset == str(flowers_dir.resolve()) for r in runs)


def test_identity_covers_every_field_and_is_stable(tree):
    run = ex.expand(ex.load_config(tiny_config(tree)))[0]
    assert run.identity == ex.expand(ex.load_config(tiny_config(tree)))[0].identity
    changed = [replace(run, seed=9), replace(run, lr=0.5), replace(run, image_size=96),
               replace(run, topology=ex.parse_topology({"kind": "extension", "units": [8]}))]
    assert len({run.identity, *(c.identity for c in changed)}) == 5


def test_json_config_and_data_override(tmp_path, tree):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(tiny_config("somewhere/else")))
    config = ex.load_config(path, data=str(tree))
    assert {r.dataset for r in ex.expand(config)} == {str(tree.resolve())}


# ------------------------------------------------------------------------------------------ store


def test_store_ignores_torn_last_line_dedupes_and_repairs(tmp_path):
    store = ex.ResultStore(tmp_path / "r.jsonl")
    store.append({"id": "a", "accuracy": 0.5})
    store.append({"id": "b", "accuracy": 0.6})
    store.append({"id": "a", "accuracy": 0.9})  # a duplicate (e.g. two sweeps racing): first one wins
    with open(store.path, "ab") as handle:
        handle.write(b'{"id": "c", "accur')  # SIGKILL in the middle of a write
    with pytest.warns(UserWarning, match="incomplete last line"):
        rows = store.rows()
    assert [(r["id"], r["accuracy"]) for r in rows] == [("a", 0.5), ("b", 0.6)]
    assert store.repair() is True
    store.append({"id": "c", "accuracy": 0.7})
    assert [r["id"] for r in store.rows()] == ["a", "b", "c"]
    assert store.path.read_bytes().endswith(b"\n") and store.repair() is False


def test_store_lock_refuses_a_second_writer(tmp_path):
    store = ex.ResultStore(tmp_path / "r.jsonl")
    with store.lock():
        with pytest.raises(ValueError, match="another sweep is writing"):
            with ex.ResultStore(tmp_path / "r.jsonl").lock():
                pass


def test_reading_helpers():
    def row(topology, per_class, seed, acc):
        return {"id": f"{topology}{per_class}{seed}", "accuracy": acc, "classes": ["a", "b"],
                "confusion_matrix": [[2, 0], [1, 1]],
                "run": {"topology": {"kind": topology, "name": ""}, "per_class": per_class, "seed": seed}}

    rows = [row("svm", 5, 0, 0.5), row("svm", 5, 1, 0.7), row("svm", 10, 0, 0.8), row("frozen_head", 10, 0, 0.6)]
    assert ex.curve(ex.select(rows, topology="svm"), "per_class") == ([5, 10], [[0.5, 0.7], [0.8]])
    xs, by = ex.curves(rows, "per_class")
    assert xs == [5, 10] and by["svm"] == [[0.5, 0.7], [0.8]] and by["frozen_head"][1] == [0.6]
    table = ex.summarize(rows)
    assert [(t["topology"], t["per_class"], t["n"]) for t in table] == [
        ("frozen_head", 10, 1), ("svm", 5, 2), ("svm", 10, 1)]
    assert table[1]["mean"] == pytest.approx(0.6) and table[1]["std"] == pytest.approx(0.1)
    assert ex.mean_confusion(rows)["confusion_matrix"] == [[8, 0], [4, 4]]


# ------------------------------------------------------------------------------------------ engine


def test_cached_path_gives_the_naive_accuracy(flowers_dir, cache_env):
    """Same data, same initial weights, same batches: training on cached prefix activations is exact."""
    last2 = {"kind": "finetune_last", "blocks": 2}
    config = ex.load_config(tiny_config(
        flowers_dir, image_size=64, test_per_class=6, seeds=[0], per_class=[3], lr=[0.05], steps=[4],
        topologies=["frozen_head", last2, {"kind": "reinit_top", "blocks": 1}],
        experiments={"topologies": {}, "again": {"lr": [0.01], "topologies": [last2]}}))  # reuses the compiled suffix
    runs = ex.expand(config)
    cached = ex.run_sweep(config, out=cache_env / "cached.jsonl", cache=True, progress=False)
    naive = ex.run_sweep(config, out=cache_env / "naive.jsonl", cache=False, progress=False)
    by_id = {r["id"]: r for r in naive.rows}
    assert len(cached.rows) == len(naive.rows) == len(runs) == 4
    for row in cached.rows:
        other = by_id[row["id"]]
        assert (row["path"], other["path"]) == ("cached", "naive")
        assert row["confusion_matrix"] == other["confusion_matrix"], row["run"]["topology"]
        assert row["accuracy"] == pytest.approx(other["accuracy"], abs=1e-9)
    plan = cached.engine.cache_plan(replace(runs[0], augment=True))
    assert plan[0] is None and "augmentation" in plan[1]
    plan = cached.engine.cache_plan(replace(runs[0], topology=ex.parse_topology("finetune_all")))
    assert plan == (None, "no frozen prefix (every block trains)")
    assert cached.engine.boundary(2) == "block6d_add" and cached.engine.boundary(0) == "avg_pool"


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
    planned = {r.identity for r in ex.expand(ex.load_config(config_path, data=str(tree)))}
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
    rows = ex.load_results(out)
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
    ex.ResultStore(out).append({"id": "earlier", "accuracy": 0.5})  # results already computed
    before = out.read_bytes()
    assert cli.main(["sweep", str(config), "--data", str(tree), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert re.search(message, err), err
    assert out.read_bytes() == before  # nothing lost, nothing written
    assert not (cache_env / "results").exists() and not list(tmp_path.parent.glob("**/elsewhere"))


def test_config_name_cannot_escape_the_cache(cache_env):
    config = ex.load_config({"dataset": "sklearn:digits", "name": "plain"})
    assert ex.default_results_path(config).parent == cache_env / "results"
    with pytest.raises(ValueError, match="must be a plain name"):
        ex.default_results_path(replace(config, name="../../x"))


def test_sweep_out_naming_a_folder_is_refused(tmp_path, tree, capsys):
    from course_utils import cli

    config = tmp_path / "c.json"
    config.write_text(json.dumps(tiny_config(tree)))
    assert cli.main(["sweep", str(config), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --out {tmp_path} is a folder; give a file name, e.g. {tmp_path / 'results.jsonl'}"


def test_store_is_strict_json_and_diverged_runs_have_no_accuracy(tmp_path):
    store = ex.ResultStore(tmp_path / "r.jsonl")
    store.append({"id": "ok", "accuracy": 0.5, "per_class_accuracy": {"a": float("nan")}, "run": {"lr": 0.1}})
    store.append({"id": "bad", "diverged": True, "accuracy": float("nan"), "run": {"lr": 10.0},
                  "confusion_matrix": None})
    for line in store.path.read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    rows = store.rows()
    assert rows[1]["accuracy"] is None and rows[0]["per_class_accuracy"] == {"a": None}
    xs, seeds = ex.curve(rows, "lr")
    assert xs == [0.1, 10.0] and seeds[0] == [0.5] and np.isnan(seeds[1][0])


def test_a_diverging_sweep_run_is_stored_as_diverged(tree, cache_env, monkeypatch):
    config = ex.load_config(tiny_config(tree, seeds=[0], per_class=[2], lr=[0.05], topologies=["frozen_head"]))
    monkeypatch.setattr(ex, "train_steps", lambda *args, **kwargs: [0.7, float("nan")])
    result = ex.run_sweep(config, out=cache_env / "d.jsonl", progress=False)
    (row,) = ex.load_results(result.path)
    assert row["diverged"] is True and row["accuracy"] is None and "became nan" in row["reason"]
    assert "NaN" not in result.path.read_text()


def test_damaged_activation_cache_heals_and_gives_the_same_results(tree, cache_env):
    from course_utils.cache import CacheWarning

    config = ex.load_config(tiny_config(tree, seeds=[0], per_class=[2], lr=[0.05], topologies=["frozen_head"]))
    first = ex.run_sweep(config, out=cache_env / "a.jsonl", progress=False)
    files = sorted((cache_env / "features").glob("*.npz"))
    assert files, "the sweep cached its activations"
    for path in files:
        path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.warns(CacheWarning, match="is unusable") as caught:
        again = ex.run_sweep(config, out=cache_env / "b.jsonl", progress=False)
    assert {str(p) for p in files} <= {str(w.message).split()[2] for w in caught}  # each file named
    assert again.rows[0]["confusion_matrix"] == first.rows[0]["confusion_matrix"]
    assert all(np.load(p, allow_pickle=False)["values"].size for p in files)  # rewritten whole
