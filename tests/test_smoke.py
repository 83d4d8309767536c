"""Tests of course_utils.smoke: ``sweep CONFIG --smoke`` (issue 12). The full configs' smoke sweeps are slow
tests: under the local engine here, under Ray in tests/test_distributed.py's style (one cluster)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from course_utils import cli, smoke
from course_utils.results import ResultStore
from course_utils.runs import expand, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_smoke_config_keeps_every_topology_and_the_ends_of_each_varied_axis():
    cfg = smoke.smoke_config(load_config(CONFIGS / "maybury.yaml"))
    assert (cfg.name, cfg.image_size, cfg.test_per_class, cfg.seeds) == ("maybury-smoke", 64, 2, [0])
    samples = cfg.grids["samples"]
    assert samples["per_class"] == [2, 3] and samples["steps"] == [1] and samples["lr"] == [0.001]
    assert cfg.grids["base_lr"]["lr"] == [0.0001, 0.1] and cfg.grids["iterations"]["steps"] == [1, 2]
    assert [t.label for t in cfg.grids["topology"]["topologies"]] == ["frozen_head", "last2", "all", "svm"]
    assert all(grid["batch_size"] == [4] for grid in cfg.grids.values())
    assert len(expand(cfg)) == 12  # 4 experiments x 4 runs, 4 of them shared
    assert all(run.weights == "imagenet" and run.image_size == 64 for run in expand(cfg))


def test_fresh_store_is_new_and_empty():
    cfg = smoke.smoke_config(load_config(CONFIGS / "chu.yaml"))
    first, second = smoke.fresh_store(cfg), smoke.fresh_store(cfg)
    assert first != second and first.name == "chu-smoke.jsonl" and not first.exists()


def test_mocked_tfds_gives_the_real_classes_through_the_real_loader():
    from course_utils import data

    with smoke.mocked_tfds("tfds:tf_flowers") as mocked:
        split = data.load_dataset("tfds:tf_flowers", image_size=32, per_class=2, seed=0, test_per_class=1)
    assert mocked is True
    assert sorted(split.train.classes) == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert split.train.images.shape == (10, 32, 32, 3) and split.test.images.shape == (5, 32, 32, 3)
    with smoke.mocked_tfds("sklearn:digits") as mocked:
        assert mocked is False


def test_a_keras_application_is_built_without_downloading_weights():
    runner = smoke.SmokeRunner("MobileNetV2", "imagenet", 64)
    assert runner.weights == "imagenet" and runner.base.input_shape == (None, 64, 64, 3)
    assert runner.activations.disk is False  # smoke activations never reach the disk cache


def _write(tmp_path, **changes):
    raw = {"name": "bad", "dataset": "sklearn:digits", "image_size": 64, "steps": [5], **changes}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    return str(path)


def test_a_misspelled_key_fails_the_smoke_sweep(tmp_path, capsys):
    assert cli.main(["sweep", _write(tmp_path, topolgies=["frozen_head"]), "--smoke"]) == 2
    assert "unknown config keys ['topolgies']" in capsys.readouterr().err


def test_a_model_that_cannot_be_built_fails_the_smoke_sweep(tmp_path, capsys):
    config = _write(tmp_path, topologies=[{"kind": "finetune_last", "blocks": 40}])
    assert cli.main(["sweep", config, "--smoke"]) == 2
    assert "blocks=40 but efficientnet_lite0 has only" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name, runs", [("maybury", 12), ("chu", 10), ("pittaras", 20)])
def test_full_configs_pass_their_smoke_sweep_locally(name, runs, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_PROGRESS", "0")
    out = tmp_path / f"{name}.jsonl"
    assert cli.main(["sweep", str(CONFIGS / f"{name}.yaml"), "--smoke", "--out", str(out)]) == 0
    rows = ResultStore(out).rows()
    assert len(rows) == runs and all(row["path"] in {"cached", "naive", "diverged"} for row in rows)
    assert len(expand(smoke.smoke_config(load_config(CONFIGS / f"{name}.yaml")))) == runs
