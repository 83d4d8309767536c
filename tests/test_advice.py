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
    """Predicts from a table: (topology kind, seed) -> per-test-image predictions; labels all 0."""

    def __init__(self, predictions: dict[tuple[str, int], np.ndarray]) -> None:
        self.predictions, self.runs = predictions, []

    def run(self, run):
        self.runs.append(run)
        pred = self.predictions[(run.topology.kind, run.seed)]
        return {"accuracy": float(np.mean(pred == 0)), "predictions": pred.tolist()}

    def split(self, run):
        return SimpleNamespace(test=SimpleNamespace(labels=np.zeros(200, int)))


def _verify(monkeypatch, tune_right: int, freeze_right: int, said: str, seeds=(0,)):
    right = {"finetune_all": tune_right, "frozen_head": freeze_right}
    runner = FakeRunner({(k, s): (np.arange(200) >= n).astype(int) for k, n in right.items() for s in seeds})
    rec = SimpleNamespace(images_per_class=10, backbone="efficientnet_lite0", chu_advice=said)
    return advice.verify("sklearn:digits", rec, seeds=seeds, runner=runner), runner


def test_verify_runs_chus_freeze_and_tune_and_uses_the_noise_rule(monkeypatch):
    check, runner = _verify(monkeypatch, tune_right=170, freeze_right=140, said="tune", seeds=(0, 1))
    kinds = [(r.topology.kind, r.seed, r.backbone_lr_factor, r.per_class) for r in runner.runs]
    assert kinds == [("frozen_head", 0, None, 10), ("frozen_head", 1, None, 10),
                     ("finetune_all", 0, 0.2, 10), ("finetune_all", 1, 0.2, 10)]
    assert check.comparison.verdict == "tune better" and check.verdict == "held"
    assert check.accuracy == {"freeze": [0.7, 0.7], "tune": [0.85, 0.85]}
    out = json.loads(json.dumps(check.to_dict()))
    assert out["verdict"] == "held" and out["comparison"]["n_seeds"] == 2
    assert "paired bootstrap" in check.describe()


@pytest.mark.parametrize("tune_right, freeze_right, said, verdict", [
    (170, 140, "freeze", "did not hold"), (142, 140, "tune", "within noise"),
    (140, 170, "freeze", "held"), (140, 170, "try both", "freeze better")])
def test_verify_verdicts(monkeypatch, tune_right, freeze_right, said, verdict):
    check, _ = _verify(monkeypatch, tune_right, freeze_right, said)
    assert check.comparison.test == "exact McNemar" and check.verdict == verdict
    assert ("caution: Tune lost by more than 10%" in check.describe()) == (freeze_right - tune_right > 20)
