"""Tests for course_utils.results (notebook 07_experiments): the append-only store and its readers."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from course_utils import results, runs


def test_store_ignores_torn_last_line_dedupes_and_repairs(tmp_path):
    store = results.ResultStore(tmp_path / "r.jsonl")
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
    assert store.done() == {"a", "b", "c"}


def test_store_lock_refuses_a_second_writer(tmp_path):
    store = results.ResultStore(tmp_path / "r.jsonl")
    with store.lock():
        with pytest.raises(ValueError, match="another sweep is writing"):
            with results.ResultStore(tmp_path / "r.jsonl").lock():
                pass


def test_store_is_strict_json_and_diverged_runs_have_no_accuracy(tmp_path):
    store = results.ResultStore(tmp_path / "r.jsonl")
    store.append({"id": "ok", "accuracy": 0.5, "per_class_accuracy": {"a": float("nan")}, "run": {"lr": 0.1}})
    store.append({"id": "bad", "diverged": True, "accuracy": float("nan"), "run": {"lr": 10.0},
                  "confusion_matrix": None})
    for line in store.path.read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    rows = store.rows()
    assert rows[1]["accuracy"] is None and rows[0]["per_class_accuracy"] == {"a": None}
    xs, seeds = results.curve(rows, "lr")
    assert xs == [0.1, 10.0] and seeds[0] == [0.5] and np.isnan(seeds[1][0])
    assert results.load_results(tmp_path / "missing.jsonl") == []


def _row(topology, per_class, seed, acc, schedule="constant"):
    return {"id": f"{topology}{per_class}{seed}{schedule}", "accuracy": acc, "classes": ["a", "b"],
            "confusion_matrix": [[2, 0], [1, 1]],
            "run": {"topology": {"kind": topology, "name": ""}, "per_class": per_class, "seed": seed,
                    "schedule": {"kind": schedule, "gamma": 0.1, "stepsize": 50 if schedule == "step" else None,
                                 "warmup": None}}}


def test_reading_helpers():
    rows = [_row("svm", 5, 0, 0.5), _row("svm", 5, 1, 0.7), _row("svm", 10, 0, 0.8), _row("frozen_head", 10, 0, 0.6)]
    assert results.curve(results.select(rows, topology="svm"), "per_class") == ([5, 10], [[0.5, 0.7], [0.8]])
    xs, by = results.curves(rows, "per_class")
    assert xs == [5, 10] and sorted(by) == ["frozen_head", "svm"] and by["svm"] == [[0.5, 0.7], [0.8]]
    assert np.isnan(by["frozen_head"][0][0]) and by["frozen_head"][1] == [0.6]  # no run at 5: NaN
    table = results.summarize(rows)
    assert [(t["topology"], t["per_class"], t["n"]) for t in table] == [
        ("frozen_head", 10, 1), ("svm", 5, 2), ("svm", 10, 1)]
    assert table[1]["mean"] == pytest.approx(0.6) and table[1]["std"] == pytest.approx(0.1)
    assert results.best(table) == {"topology": "svm", "per_class": 10, "mean": 0.8, "std": 0.0, "n": 1}
    assert results.mean_confusion(rows)["confusion_matrix"] == [[8, 0], [4, 4]]
    assert results.describe_curve([5, 10], [[0.5, 0.7], [0.8]], "per_class") == (
        "per_class -> accuracy  5: 0.600 ± 0.100, 10: 0.800 ± 0.000  (best at per_class=10)")
    with pytest.raises(ValueError, match="table is empty"):
        results.best([])


def test_schedules_are_grouped_by_their_label():
    rows = [_row("svm", 5, 0, 0.5, "step"), _row("svm", 5, 1, 0.7, "step"), _row("svm", 5, 0, 0.9)]
    table = results.summarize(rows, by=("schedule",))
    assert [(t["schedule"], t["n"]) for t in table] == [("constant", 1), ("step(gamma=0.1, stepsize=50)", 2)]
    assert results.schedule_label({"kind": "cosine", "warmup": 10}) == "cosine(warmup=10)"
    assert results.select(rows, schedule="constant")[0]["accuracy"] == 0.9
    assert "constant" in results.format_summary(table)


def test_report_lists_each_experiment_with_its_varied_axes(tmp_path):
    config = runs.load_config({"dataset": str(tmp_path), "seeds": [0], "topologies": ["svm"],
                               "experiments": {"samples": {"per_class": [5, 10]}}})
    rows = [{"id": run.identity, "accuracy": 0.5, "run": run.to_dict()} for run in runs.expand(config)]
    text = results.report(config, rows)
    assert text.splitlines()[0] == "samples: 2 of 2 runs"
    assert "per_class" in text.splitlines()[1]


def test_make_row_and_results_path(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    config = runs.load_config({"dataset": "sklearn:digits", "name": "plain"})
    run = runs.expand(config)[0]
    row = results.make_row(config, run, {"accuracy": 0.25})
    assert (row["id"], row["sweep"], row["run"], row["accuracy"], row["version"]) == (
        run.identity, "plain", run.to_dict(), 0.25, results.STORE_VERSION)
    assert results.default_results_path(config) == tmp_path / "results" / "plain.jsonl"
    with pytest.raises(ValueError, match="must be a plain name"):
        results.default_results_path(replace(config, name="../../x"))


def test_correct_pairs_seeds_and_images_and_counts_a_diverged_run_wrong():
    def row(seed, predictions, ids=("a", "b", "c")):
        return {"id": f"r{seed}", "run": {"seed": seed}, "predictions": predictions, "test_ids": list(ids),
                "test_labels": [0, 1, 1]}

    got = results.correct([row(1, [0, 0, 1]), row(0, [0, 1, 1]), row(2, None)])
    np.testing.assert_array_equal(got, [[1, 1, 1], [1, 0, 1], [0, 0, 0]])  # sorted by seed; diverged: all wrong
    with pytest.raises(ValueError, match="other test images"):
        results.correct([row(0, [0, 1, 1]), row(1, [0, 1, 1], ids=("a", "b", "d"))])
    with pytest.raises(ValueError, match="no rows"):
        results.correct([])
