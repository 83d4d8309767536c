"""Tests for course_utils.runs (notebook 07_experiments): topologies, schedules, configs, RunSpecs, grids."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from course_utils import runs
from course_utils.training import Schedule

REPO = Path(__file__).resolve().parents[1]


def tiny_config(data: Path | str, **overrides) -> dict:
    config = {"name": "tiny", "dataset": str(data), "image_size": 64, "batch_size": 4, "seeds": [0, 1, 2],
              "per_class": [2, 3], "lr": [0.01, 0.1], "steps": [3], "topologies": ["frozen_head", "svm"]}
    return {**config, **overrides}


def test_unknown_config_key_names_the_allowed_keys():
    with pytest.raises(ValueError, match=r"(?s)unknown config keys \['learning_rate'\].*Allowed keys.*\n  lr:"):
        runs.load_config({"learning_rate": [0.1]})


@pytest.mark.parametrize("config, message", [
    ({"topologies": ["frozen"]}, "unknown topology kind 'frozen'; choose one of: frozen_head"),
    ({"topologies": [{"kind": "finetune_last", "layers": 2}]}, r"unknown topology keys \['layers'\]"),
    ({"topologies": [{"kind": "finetune_last", "blocks": 0}]}, "needs blocks >= 1"),
    ({"experiments": {"a": {"seeds": [1]}}}, r"unknown grid keys \['seeds'\]; an experiment may set"),
    ({"lr": [0.0]}, r"lr must be a finite number, 0 < lr <= 10, got 0.0"),
    ({"per_class": []}, "grid axis 'per_class' is empty"),
    ({"optimizer": ["rmsprop"]}, r"optimizer must be one of \['sgd', 'adam'\], got 'rmsprop'"),
    ({"bn": "batch"}, r"bn must be one of \['inference', 'train'\]"),
    ({"schedule": "linear"}, r"schedule must be one of \('constant', 'step', 'cosine'\)"),
    ({"schedule": {"kind": "step", "gamma": 2}}, r"gamma must be in \(0, 1\]"),
    ({"schedule": {"kind": "step", "every": 2}}, "a schedule is constant, step or cosine"),
])
def test_bad_configs_raise_helpful_errors(config, message):
    with pytest.raises(ValueError, match=message):
        runs.expand(runs.load_config({"dataset": "sklearn:digits", **config}))


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config file"):
        runs.load_config(tmp_path / "nope.yaml")


def test_a_one_factor_grid_expands_without_duplicates(tmp_path):
    last2 = {"kind": "finetune_last", "blocks": 2, "name": "last2"}
    config = runs.load_config({
        "dataset": str(tmp_path), "seeds": [0, 1], "per_class": [20], "lr": [0.01], "steps": [40],
        "topologies": ["frozen_head", last2], "experiments": {
            "samples": {"per_class": [5, 10, 20]}, "base_lr": {"lr": [0.001, 0.01, 0.1]},
            "iterations": {"steps": [10, 20, 40]}, "svm": {"topologies": ["svm"], "per_class": [5, 10, 20]}}})
    per_experiment = runs.experiment_runs(config)
    expanded = runs.expand(config)
    assert {name: len(r) for name, r in per_experiment.items()} == {
        "samples": 12, "base_lr": 12, "iterations": 12, "svm": 6}
    assert len(expanded) == len({r.identity for r in expanded}) == 34  # shared grid points run once
    assert all(r.lr is None and r.steps is None for r in expanded if r.topology.kind == "svm")
    assert {r.dataset for r in expanded} == {str(tmp_path.resolve())}
    assert [(r.seed, r.per_class or 0) for r in expanded] == sorted((r.seed, r.per_class or 0) for r in expanded)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_expands_to_distinct_runs(path, tmp_path):
    expanded = runs.expand(runs.load_config(path, data=str(tmp_path)))
    assert expanded and len({r.identity for r in expanded}) == len(expanded)


def test_identity_covers_every_field_and_is_stable(tmp_path):
    run = runs.expand(runs.load_config(tiny_config(tmp_path)))[0]
    assert run.identity == runs.expand(runs.load_config(tiny_config(tmp_path)))[0].identity
    changed = [replace(run, seed=9), replace(run, lr=0.5), replace(run, image_size=96),
               replace(run, topology=runs.parse_topology({"kind": "extension", "units": [8]})),
               replace(run, optimizer="adam"), replace(run, schedule=Schedule("step")), replace(run, bn="train"),
               replace(run, head_steps=5), replace(run, val_fraction=0.1)]
    assert len({run.identity, *(c.identity for c in changed)}) == 10


def test_run_spec_round_trips_through_its_dict():
    run = runs.make_run("sklearn:digits", runs.parse_topology({"kind": "extension", "units": [8, 4], "blocks": 2}), 3,
                        lr=0.05, steps=10, backbone_lr_factor=0.2, bn="train", head_steps=4, optimizer="adam",
                        schedule={"kind": "cosine", "warmup": 2})
    again = runs.RunSpec.from_dict(json.loads(json.dumps(run.to_dict())))
    assert again == run and again.identity == run.identity
    assert run.to_dict()["schedule"] == {"kind": "cosine", "gamma": 0.1, "stepsize": None, "warmup": 2}


def test_make_run_normalises_what_a_topology_ignores():
    probe = runs.make_run("d", runs.parse_topology("svm"), 0, lr=0.5, steps=9, backbone_lr_factor=0.2, bn="train",
                          head_steps=3, optimizer="adam", schedule="step")
    assert (probe.lr, probe.steps, probe.batch_size, probe.backbone_lr_factor, probe.bn, probe.head_steps,
            probe.optimizer, probe.schedule) == (None, None, None, None, "inference", 0, "sgd", Schedule())
    frozen = runs.make_run("d", runs.parse_topology("frozen_head"), 0, backbone_lr_factor=0.2, bn="train", head_steps=3)
    assert (frozen.backbone_lr_factor, frozen.bn, frozen.head_steps) == (None, "inference", 0)
    reinit = runs.make_run("d", runs.parse_topology("reinit_top"), 0, backbone_lr_factor=0.1)
    assert reinit.backbone_lr_factor is None  # its blocks train at the full rate (Chu's R)
    tuned = runs.make_run("d", runs.parse_topology("finetune_all"), 0, backbone_lr_factor=0.2, bn="train", head_steps=3)
    assert (tuned.backbone_lr_factor, tuned.bn, tuned.head_steps) == (0.2, "train", 3)


def test_new_axes_expand_one_factor_at_a_time(tmp_path):
    config = runs.load_config(tiny_config(
        tmp_path, seeds=[0], per_class=[2], lr=[0.01], topologies=[{"kind": "finetune_last", "blocks": 2}],
        val_fraction=0.25, experiments={
            "optimizer": {"optimizer": ["sgd", "adam"]},
            "schedule": {"schedule": ["constant", {"kind": "step", "gamma": 0.1, "stepsize": 100}, "cosine"]},
            "head_first": {"head_steps": [0, 20], "bn": ["inference", "train"]},
            "augment": {"augment": [False, True], "batch_size": [8]}}))
    grid = runs.experiment_runs(config)
    assert {k: len(v) for k, v in grid.items()} == {"optimizer": 2, "schedule": 3, "head_first": 4, "augment": 2}
    assert [r.schedule for r in grid["schedule"]] == [Schedule(), Schedule("step", 0.1, 100), Schedule("cosine")]
    assert {(r.head_steps, r.bn) for r in grid["head_first"]} == {(0, "inference"), (20, "inference"), (0, "train"),
                                                                 (20, "train")}
    assert [(r.augment, r.batch_size) for r in grid["augment"]] == [(False, 8), (True, 8)]
    assert len(runs.expand(config)) == 2 + 3 + 4 + 2 - 2  # three experiments share the default point
    assert {r.val_fraction for r in runs.expand(config)} == {0.25}


def test_json_config_and_data_override(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(tiny_config("somewhere/else")))
    config = runs.load_config(path, data=str(tmp_path))
    assert {r.dataset for r in runs.expand(config)} == {str(tmp_path.resolve())}


def test_resolve_dataset_keeps_specs_and_resolves_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert runs.resolve_dataset("sklearn:digits") == "sklearn:digits"
    assert runs.resolve_dataset("photos") == str(tmp_path / "photos")


def test_topology_properties():
    assert [runs.parse_topology(k).tunes_pretrained for k in ("frozen_head", "finetune_all", "reinit_top", "svm")] == [
        False, True, False, False]
    assert runs.parse_topology({"kind": "extension", "blocks": 2}).tunes_pretrained
    assert runs.parse_topology({"kind": "finetune_last", "name": "last2"}).label == "last2"
    assert runs.parse_topology("logreg").uses_training is False
