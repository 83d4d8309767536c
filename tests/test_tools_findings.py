"""tools/findings.py, the page docs/findings.md: choices on validation only, paired verdicts, honest gaps.

Synthetic stores stand in for the sweeps: every row is a run of configs/findings_near.yaml with made-up
predictions, so the tool's choices and verdicts can be checked against known answers without training.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from course_utils import runs, settings

SPEC = importlib.util.spec_from_file_location("findings_tool", settings.REPO_ROOT / "tools" / "findings.py")
findings = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(findings)

N_TEST = 200
LABELS = [i % 5 for i in range(N_TEST)]


def row(run: runs.RunSpec, test: float, val: float, shift: int = 0) -> dict:
    """A stored row of ``run``: the first ``test * N_TEST`` images right (from ``shift``), ``val`` on validation."""
    right = np.roll(np.arange(N_TEST) < round(test * N_TEST), shift)
    predictions = [label if ok else (label + 1) % 5 for label, ok in zip(LABELS, right)]
    return {"id": run.identity, "run": run.to_dict(), "accuracy": float(np.mean(right)), "val_accuracy": val,
            "predictions": predictions, "test_labels": LABELS, "test_ids": list(range(N_TEST)),
            "seconds": 1.0, "path": "cached"}


def config_runs(tmp_path):
    config = runs.load_config(settings.REPO_ROOT / "configs" / "findings_near.yaml", data=str(tmp_path))
    return runs.experiment_runs(config)


def write(tmp_path, rows: list[dict]):
    path = tmp_path / "store.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return findings.Store("near", path)


def chu_runs(tmp_path, topology: str, per_class: int = 50) -> list[runs.RunSpec]:
    every = config_runs(tmp_path)
    unique = {r.identity: r for name in findings.CHU for r in every[name]}
    return [r for r in unique.values() if r.topology.name == topology and r.per_class == per_class]


def test_pick_chooses_on_validation_never_on_test(tmp_path):
    tune = chu_runs(tmp_path, findings.TUNE)
    rows = []
    for run in tune:
        best_on_val = (run.lr, run.steps, run.schedule.kind) == (0.001, 1000, "cosine")
        # the setting validation prefers scores worst on test; every other one scores better on test
        rows.append(row(run, test=0.5 if best_on_val else 0.9, val=0.9 if best_on_val else 0.6))
    chosen = write(tmp_path, rows).pick(findings.CHU, findings.TUNE, per_class=50)
    assert {(r["run"]["lr"], r["run"]["steps"], r["run"]["schedule"]["kind"]) for r in chosen} == {(0.001, 1000, "cosine")}
    assert sorted(r["run"]["seed"] for r in chosen) == [0, 1]


def test_pick_ties_go_to_the_smaller_rate_then_the_shorter_run(tmp_path):
    rows = [row(run, test=0.8, val=0.7) for run in chu_runs(tmp_path, findings.FREEZE)]
    chosen = write(tmp_path, rows).pick(findings.CHU, findings.FREEZE, per_class=50)
    assert {(r["run"]["lr"], r["run"]["steps"]) for r in chosen} == {(0.001, 300)}


def test_a_setting_missing_a_seed_is_never_chosen(tmp_path):
    tune = chu_runs(tmp_path, findings.TUNE)
    rows = [row(run, test=0.8, val=0.7) for run in tune]
    lonely = next(r for r in tune if (r.steps, r.schedule.kind, r.seed) == (1000, "step", 0))
    rows = [r for r in rows if r["run"]["steps"] != 1000 or r["run"]["schedule"]["kind"] != "step"]
    rows.append(row(lonely, test=0.99, val=1.0))  # the best on validation, but seed 1 has not run yet
    store = write(tmp_path, rows)
    assert (0.001, 1000, "step") not in store.by_setting(findings.CHU, findings.TUNE, per_class=50)
    chosen = store.pick(findings.CHU, findings.TUNE, per_class=50)
    assert (chosen[0]["run"]["steps"], chosen[0]["run"]["schedule"]["kind"]) != (1000, "step")
    assert store.missing > 0


@pytest.mark.parametrize("tune_test, expected", [(0.95, "agrees"), (0.71, "not shown (within noise)")])
def test_chu_rows_use_the_paired_noise_rule(tmp_path, tune_test, expected):
    rows = [row(run, test=0.70, val=0.7) for run in chu_runs(tmp_path, findings.FREEZE)]
    rows += [row(run, test=tune_test, val=0.8) for run in chu_runs(tmp_path, findings.TUNE)]
    out = {r[0]: r for r in findings.chu_rows({"near": write(tmp_path, rows)})}
    cell = out["Chu Table 3, near x 50/class"]  # a "Tune" cell of Chu's Table 3
    assert cell[4] == expected
    assert ("Tune better" in cell[3]) == (expected == "agrees")
    assert out["Chu Table 3, near x 10/class"][2] == "not run yet"  # never made up


def test_budget_rows_report_the_convergence_check_on_validation(tmp_path):
    rows = []
    for run in chu_runs(tmp_path, findings.TUNE):
        val = {300: 0.70, 1000: 0.75}[run.steps] + (0.01 if run.schedule.kind == "cosine" else 0.0)
        rows.append(row(run, test=0.9, val=val))
    rows += [row(run, test=0.9, val=0.6) for run in chu_runs(tmp_path, findings.FREEZE)]
    table = {(r[0], r[1]): r for r in findings.budget_rows(findings.budgets({"near": write(tmp_path, rows)}))}
    tune = table[("near x 50/class", "Tune")]
    assert tune[3] == "lr 0.001, 1000 steps, cosine"
    assert tune[4] == "+0.050"  # 1000 vs 300 steps, same rate and schedule, on validation
    assert "0.001/300/step: 0.700" in tune[2]
    assert table[("near x 10/class", "Freeze")][2] == "not run yet"
    summary = findings.budget_summary(findings.budgets({"near": write(tmp_path, rows)}))
    assert "in 1 of these 2 settings" in summary and "at most +0.050" in summary and "near x 50/class, Tune" in summary


def test_the_committed_page_is_what_the_committed_stores_say(tmp_path):
    data = settings.REPO_ROOT / "docs" / "findings_data"
    measured = data / "findings_measured.json"
    assert measured.is_file(), "docs/findings_data/findings_measured.json is missing: without it the tool retrains"
    out = tmp_path / "findings.md"
    assert findings.main(["--near", str(data / "findings_near.jsonl.gz"), "--far", str(data / "findings_far.jsonl.gz"),
                          "--measured", str(measured), "--out", str(out)]) == 0
    assert out.read_text() == (settings.REPO_ROOT / "docs" / "findings.md").read_text(), (
        "docs/findings.md differs from what its stores say: rewrite it with the command at the top of the page")
    assert (tmp_path / "findings_curves.png").is_file()
