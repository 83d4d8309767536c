"""Tests for course_utils.advice (notebooks 08_domain_distance, 09_capstone): Chu's Table 3 verbatim, the cell
and advice of ``recommend``, and ``verify`` deciding with the one noise rule."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from course_utils import advice, domain

SEEDS = Path(__file__).resolve().parents[1].parent / "shared" / "seeds"


def test_table3_is_chus_verbatim():
    rows = {"low": ("Freeze", "Try Freeze or Tune", "Tune"),
            "medium": ("Try Freeze or Tune", "Tune", "Tune"),
            "high": ("Try Freeze or Tune", "Tune", "Tune")}
    assert advice.CHU_TABLE3 == {(d, n): rows[d][i] for d in rows for i, n in enumerate(advice.LEVELS)}
    assert advice.CHU_TUNE_FACTOR == 0.2
    papers = sorted(SEEDS.glob("001_*.txt"))
    if not papers:
        pytest.skip("../shared/seeds not beside the repo")
    text = papers[0].read_text()
    for label, level in (("L (0.0-0.2)", "low"), ("M (0.2-0.4)", "medium"), ("H (0.4-1.0)", "high")):
        assert f"{label}\t" + "\t".join(rows[level]) in text
    assert "0.2 times that of random initialization" in text


def test_data_levels_follow_chu():
    assert [advice.data_level(n) for n in (1, 20, 21, 99, 100, 5000)] == ["low", "low", "medium", "medium",
                                                                          "high", "high"]
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            advice.data_level(bad)


@pytest.mark.parametrize("distance, n, cell, said", [
    (0.05, 10, ("low", "low"), "freeze"), (0.05, 50, ("low", "medium"), "try both"),
    (0.05, 300, ("low", "high"), "tune"),
    (0.3, 10, ("medium", "low"), "try both"), (0.3, 50, ("medium", "medium"), "tune"),
    (0.5, 10, ("high", "low"), "try both"), (0.5, 500, ("high", "high"), "tune")])
def test_cell_and_chu_advice(distance, n, cell, said):
    got = advice.chu_cell(distance, n)
    assert got == {"distance": cell[0], "data": cell[1]}
    assert advice.chu_advice(got) == said
    assert (advice.CHU_REINIT_NOTE in advice.advice_text(got)) == (cell == ("high", "high"))


def _fake_measures(monkeypatch, corrected: float, counts: dict[str, int]) -> None:
    fake = domain.DomainDistance(corrected + 0.02, corrected, 1.0, 0.3, 100, 224, "efficientnet_lite0", np.ones(3))
    monkeypatch.setattr(advice.domain, "dataset_distance", lambda *a, **k: fake)
    monkeypatch.setattr(advice.data, "class_counts", lambda spec, seed=0: dict(counts))
    monkeypatch.setattr(advice.blocks, "block_names", lambda model: [f"block{i}" for i in range(9)])


def test_recommend_reports_the_cell_and_labels_the_course_extension(monkeypatch):
    eurosat = next(a for a in domain.ANCHORS if a.name == "EuroSAT")
    _fake_measures(monkeypatch, eurosat.corrected, {"a": 500, "b": 480})
    rec = advice.recommend("some/folder", per_class=10, model=object())
    out = json.loads(json.dumps(rec.to_dict()))
    assert out["cell"] == {"distance": "high", "data": "low"} and out["chu_advice"] == "try both"
    assert out["chu_table3_entry"] == "Try Freeze or Tune" and out["images_per_class"] == 10
    assert out["calibrated_distance"] == pytest.approx(0.455) and out["measures"]["corrected"] == eurosat.corrected
    assert out["course_extension"]["label"].startswith("course extension")
    assert "--verify" in out["advice"] and len(rec.commands()) == 2
    assert "--unfreeze 9 --lr 0.01 --backbone-lr 0.002" in rec.commands()[1]
    text = rec.describe()
    assert "high distance (0.4-1) x low data (1-20 images per class) -> Try Freeze or Tune" in text
    assert "course extension (not in Chu et al.)" in text
    assert advice.recommend("some/folder", model=object()).cell == {"distance": "high", "data": "high"}


def test_recommend_rejects_a_bad_per_class(monkeypatch):
    _fake_measures(monkeypatch, 0.1, {"a": 5})
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            advice.recommend("x", per_class=bad, model=object())


class FakeRunner:
    """Predicts from tables: (topology kind, seed) -> per-test-image predictions (labels all 0), or
    (kind, lr, steps, seed) when given; validation accuracy from (kind, lr, steps), 0.5 when not given;
    ``diverge`` lists the (kind, lr) that diverge."""

    def __init__(self, predictions: dict[tuple, np.ndarray], val: dict | None = None, diverge=()) -> None:
        self.predictions, self.val, self.diverge, self.runs = predictions, val or {}, set(diverge), []

    def run(self, run, history=0):
        self.runs.append(run)
        kind = run.topology.kind
        if (kind, run.lr) in self.diverge:
            return {"path": "diverged", "diverged": True, "accuracy": None}
        pred = self.predictions.get((kind, run.lr, run.steps, run.seed), self.predictions.get((kind, run.seed)))
        return {"accuracy": float(np.mean(pred == 0)), "predictions": pred.tolist(),
                "val_accuracy": self.val.get((kind, run.lr, run.steps), 0.5),
                "history": {"step": [run.steps], "val_accuracy": [0.5]} if history else {}}

    def split(self, run):
        return SimpleNamespace(test=SimpleNamespace(labels=np.zeros(200, int)))


def _wrong_after(n: int) -> np.ndarray:
    """Predictions with the first ``n`` of 200 test images right."""
    return (np.arange(200) >= n).astype(int)


def _verify(monkeypatch, tune_right: int, freeze_right: int, said: str, seeds=(0,)):
    right = {"finetune_all": tune_right, "frozen_head": freeze_right}
    runner = FakeRunner({(k, s): _wrong_after(n) for k, n in right.items() for s in seeds})
    rec = SimpleNamespace(images_per_class=10, backbone="efficientnet_lite0", chu_advice=said)
    return advice.verify("sklearn:digits", rec, seeds=seeds, runner=runner, lr=0.01, steps=40), runner


def test_verify_runs_chus_freeze_and_tune_and_uses_the_noise_rule(monkeypatch):
    check, runner = _verify(monkeypatch, tune_right=170, freeze_right=140, said="tune", seeds=(0, 1))
    kinds = [(r.topology.kind, r.seed, r.backbone_lr_factor, r.per_class, r.head_steps) for r in runner.runs]
    assert kinds == [("frozen_head", 0, None, 10, 0), ("frozen_head", 1, None, 10, 0),
                     ("finetune_all", 0, 0.2, 10, 40), ("finetune_all", 1, 0.2, 10, 40)]
    assert {(r.val_fraction, r.schedule.kind) for r in runner.runs} == {(advice.VERIFY_VAL_FRACTION, "step")}
    assert check.comparison.verdict == "tune better" and check.verdict == "held"
    assert check.accuracy == {"freeze": [0.7, 0.7], "tune": [0.85, 0.85]}
    out = json.loads(json.dumps(check.to_dict()))
    assert out["verdict"] == "held" and out["comparison"]["n_seeds"] == 2
    assert out["chosen"] == {side: {"lr": 0.01, "steps": 40, "schedule": "step"} for side in ("freeze", "tune")}
    assert "paired bootstrap" in check.describe()


def _grid_verify(val: dict, predictions: dict, diverge=(), schedule=("step",)):
    runner = FakeRunner(predictions, val, diverge)
    rec = SimpleNamespace(images_per_class=10, backbone="efficientnet_lite0", chu_advice="tune")
    return advice.verify("sklearn:digits", rec, seeds=(0,), runner=runner, lr=(0.01, 0.001), steps=(40, 120),
                         schedule=schedule), runner


def test_verify_chooses_rate_and_steps_on_validation_never_on_test():
    # Tune is best on validation at (0.001, 120) but worst on test there; every other Tune setting tests well
    predictions = {("frozen_head", 0): _wrong_after(140), ("finetune_all", 0): _wrong_after(190),
                   ("finetune_all", 0.001, 120, 0): _wrong_after(100)}
    val = {("finetune_all", 0.001, 120): 0.9, ("frozen_head", 0.01, 40): 0.8}
    check, runner = _grid_verify(val, predictions)
    assert len(runner.runs) == 8  # 2 rates x 2 budgets x 2 sides x 1 seed
    assert check.chosen == {"freeze": {"lr": 0.01, "steps": 40, "schedule": "step"},
                            "tune": {"lr": 0.001, "steps": 120, "schedule": "step"}}
    assert check.accuracy == {"freeze": [0.7], "tune": [0.5]} and check.comparison.verdict == "freeze better"
    assert {(t["lr"], t["steps"]) for t in check.validation["tune"]} == {(0.01, 40), (0.01, 120), (0.001, 40),
                                                                         (0.001, 120)}
    assert check.still_rising == ["tune"]  # best at the longest budget, and higher than at 40 steps
    assert "still rising" in check.describe() and check.curves["tune"]["step"] == [120]


def test_verify_ties_go_to_the_smaller_rate_and_fewer_steps_and_flat_is_not_rising():
    check, _ = _grid_verify({}, {("frozen_head", 0): _wrong_after(140), ("finetune_all", 0): _wrong_after(140)})
    assert check.chosen["tune"] == {"lr": 0.001, "steps": 40, "schedule": "step"} and check.still_rising == []
    assert "still rising" not in check.describe()


def test_verify_chooses_the_schedule_on_validation_too():
    class ByScheduleRunner(FakeRunner):
        def run(self, run, history=0):
            out = super().run(run, history)
            out["val_accuracy"] = 0.9 if run.schedule.kind == "cosine" and run.topology.kind == "finetune_all" else 0.5
            return out

    runner = ByScheduleRunner({("frozen_head", 0): _wrong_after(140), ("finetune_all", 0): _wrong_after(140)})
    rec = SimpleNamespace(images_per_class=10, backbone="efficientnet_lite0", chu_advice="tune")
    check = advice.verify("sklearn:digits", rec, seeds=(0,), runner=runner, lr=0.01, steps=40,
                          schedule=("step", "cosine"))
    assert len(runner.runs) == 4
    assert check.chosen == {"freeze": {"lr": 0.01, "steps": 40, "schedule": "step"},
                            "tune": {"lr": 0.01, "steps": 40, "schedule": "cosine"}}
    with pytest.raises(ValueError, match="schedule must be one or more of"):
        advice.verify("sklearn:digits", rec, runner=runner, schedule="linear")


def test_verify_skips_a_rate_that_diverged_and_says_when_every_rate_did():
    predictions = {("frozen_head", 0): _wrong_after(140), ("finetune_all", 0): _wrong_after(150)}
    check, _ = _grid_verify({("finetune_all", 0.01, 40): 0.99}, predictions, diverge=[("finetune_all", 0.01)])
    assert check.chosen["tune"]["lr"] == 0.001
    with pytest.raises(ValueError, match="diverged at every rate tried"):
        _grid_verify({}, predictions, diverge=[("finetune_all", 0.01), ("finetune_all", 0.001)])
    with pytest.raises(ValueError, match="positive"):
        advice.verify("sklearn:digits", SimpleNamespace(images_per_class=10, backbone="b", chu_advice="tune"),
                      runner=FakeRunner({}), lr=[0.01, -1])


@pytest.mark.parametrize("tune_right, freeze_right, said, verdict", [
    (170, 140, "freeze", "did not hold"), (142, 140, "tune", "within noise"),
    (140, 170, "freeze", "held"), (140, 170, "try both", "freeze better")])
def test_verify_verdicts(monkeypatch, tune_right, freeze_right, said, verdict):
    check, _ = _verify(monkeypatch, tune_right, freeze_right, said)
    assert check.comparison.test == "exact McNemar" and check.verdict == verdict
    assert ("caution: Tune lost by more than 10%" in check.describe()) == (freeze_right - tune_right > 20)
