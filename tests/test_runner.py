"""Tests for course_utils.runner (notebook 07_experiments): the one Runner, its cached and naive paths
(same numbers on every path the studies use), the reinit_top protocol, reports, divergence, passes."""

from __future__ import annotations

import numpy as np
import pytest

from _tiny import identity
from course_utils import runs, surgery
from course_utils.runner import Runner
from course_utils.training import LayerwiseSGD, Schedule


def spec(topology, **fields) -> runs.RunSpec:
    options = dict(backbone="tiny", image_size=16, lr=0.1, steps=8, batch_size=4, backbone_lr_factor=0.1)
    return runs.make_run("synthetic", runs.parse_topology(topology), fields.pop("seed", 0), **{**options, **fields})


LAST2 = {"kind": "finetune_last", "blocks": 2}
STUDY_PATHS = {  # every path a study or a config uses
    "frozen_head": spec("frozen_head"),
    "last2": spec(LAST2),
    "last2 bn=train": spec(LAST2, bn="train"),
    "last2 head first": spec(LAST2, head_steps=4),
    "last2 head first, bn=train": spec(LAST2, head_steps=4, bn="train"),
    "reinit_top": spec({"kind": "reinit_top", "blocks": 2}),
    "extension (frozen)": spec({"kind": "extension", "units": [5]}),
    "FT3-ex, adam, cosine": spec({"kind": "extension", "units": [5], "blocks": 2}, head_steps=2, optimizer="adam",
                                 lr=0.01, schedule=Schedule("cosine", warmup=2)),
    "last1, step decay": spec({"kind": "finetune_last", "blocks": 1}, schedule=Schedule("step", 0.5, 3)),
    "last2, one rate, seed 3": spec(LAST2, backbone_lr_factor=None, seed=3),
    "svm": spec("svm"),
    "logreg": spec("logreg"),
}


@pytest.fixture(scope="module")
def runners(tiny_base):
    return (Runner(tiny_base, "tiny", 16, cache=True, disk_cache=False, preprocess=identity),
            Runner(tiny_base, "tiny", 16, cache=False, disk_cache=False, preprocess=identity))


@pytest.mark.parametrize("name", list(STUDY_PATHS))
def test_cached_and_naive_paths_give_the_same_run(name, runners, tiny_split):
    cached, naive = runners
    run = STUDY_PATHS[name]
    a = cached.run(run, tiny_split, history=2, measure=run.topology.uses_training)
    b = naive.run(run, tiny_split, history=2, measure=run.topology.uses_training)
    assert (a["path"], b["path"]) == ("cached", "naive")
    assert a["predictions"] == b["predictions"]
    assert a["accuracy"] == b["accuracy"] and a["confusion_matrix"] == b["confusion_matrix"]
    if run.topology.uses_training:
        assert a["history"]["step"] == b["history"]["step"]
        np.testing.assert_allclose(a["history"]["loss"], b["history"]["loss"], rtol=1e-5)
        np.testing.assert_allclose(a["history"]["val_loss"], b["history"]["val_loss"], rtol=1e-5)
        assert a["val_accuracy"] == b["val_accuracy"]
        assert sorted(a["bn_drift"]) == sorted(b["bn_drift"])
        np.testing.assert_allclose([a["bn_drift"][k] for k in sorted(a["bn_drift"])],
                                   [b["bn_drift"][k] for k in sorted(b["bn_drift"])], atol=1e-6)
        assert sorted(a["weight_change"]) == sorted(b["weight_change"])
        np.testing.assert_allclose([a["weight_change"][k] for k in sorted(a["weight_change"])],
                                   [b["weight_change"][k] for k in sorted(b["weight_change"])], rtol=1e-4, atol=1e-7)


def test_the_tiny_task_is_learned_so_the_comparison_means_something(runners, tiny_split):
    assert runners[0].run(spec(LAST2, steps=40), tiny_split)["accuracy"] == 1.0
    assert runners[0].run(spec("logreg"), tiny_split)["accuracy"] == 1.0


def test_a_reused_compiled_model_gives_what_a_fresh_runner_gives(runners, tiny_base, tiny_split):
    cached = runners[0]
    for run in STUDY_PATHS.values():  # leaves compiled parts with trained optimizer state behind
        cached.run(run, tiny_split)
    fresh = Runner(tiny_base, "tiny", 16, cache=True, disk_cache=False, preprocess=identity)
    for name in ("last2 head first, bn=train", "FT3-ex, adam, cosine"):
        again, first = cached.run(STUDY_PATHS[name], tiny_split, history=1), fresh.run(STUDY_PATHS[name], tiny_split, history=1)
        np.testing.assert_allclose(again["history"]["loss"], first["history"]["loss"], rtol=1e-5)
        assert again["predictions"] == first["predictions"]


def test_runs_leave_the_backbone_pristine(runners, tiny_base, tiny_split):
    before = [np.array(v) for v in tiny_base.variables]
    for name in ("last2 bn=train", "reinit_top", "last2 head first"):
        runners[0].run(STUDY_PATHS[name], tiny_split)
        runners[1].run(STUDY_PATHS[name], tiny_split)
    for value, variable in zip(before, tiny_base.variables):
        np.testing.assert_array_equal(value, np.array(variable))


def test_reinit_top_trains_its_blocks_at_the_full_rate_with_their_batchnorm(runners, tiny_base, tiny_split):
    run = STUDY_PATHS["reinit_top"]
    assert run.backbone_lr_factor is None  # no pretrained layer trains, so no factor applies
    runner = runners[0]
    flat = runner.build(run, 3)
    runner._unfreeze(run, flat)
    bn = {layer.name: layer.trainable for layer in flat.layers if "_bn" in layer.name}
    assert bn == {"block1_bn": False, "block2_bn": False, "block3_bn": True}
    np.testing.assert_array_equal(np.array(flat.get_layer("block3_bn").moving_variance), np.ones(8))
    part = runner._compiled_part(run, flat, runner.plan(run)[0], "main", run.steps)
    assert not isinstance(part.optimizer, LayerwiseSGD)  # one rate for every trained layer
    runner.reset_weights()
    report = runner.run(run, tiny_split, measure=True)
    assert report["bn_drift"]["block3_bn"] > 0 and report["bn_drift"]["block2_bn"] == 0.0


def test_report_fields_are_per_test_image(runners, tiny_split):
    report = runners[0].run(STUDY_PATHS["last2"], tiny_split)
    assert report["test_ids"] == tiny_split.test.ids
    assert len(report["predictions"]) == report["n_test"] == len(tiny_split.test.labels)
    assert report["accuracy"] == np.mean(np.array(report["predictions"]) == tiny_split.test.labels)
    assert (report["n_train"], report["n_val"]) == (18, 6)
    assert report["trainable_params"] == 6 * 8 * 9 + 8 * 3 + 3  # block3 conv (its BatchNorm frozen) + head


def test_history_marks_the_unfreeze_step_and_counts_steps(runners, tiny_split):
    report = runners[0].run(STUDY_PATHS["last2 head first"], tiny_split, history=2)
    history = report["history"]
    assert history["unfreeze_step"] == 4
    assert history["step"] == [2, 4, 6, 8, 10, 12]
    assert set(history) == {"step", "loss", "accuracy", "val_loss", "val_accuracy", "unfreeze_step"}


def test_a_diverging_run_has_no_accuracy(runners, tiny_split):
    report = runners[0].run(spec(LAST2, lr=1e20, steps=6), tiny_split, history=1)
    assert report["diverged"] is True and report["accuracy"] is None and report["path"] == "diverged"
    assert "lower the learning rate" in report["reason"]
    assert report["history"]["step"] == [1, 2, 3] and report["history"]["loss"][-1] == np.inf  # stopped there


def test_one_forward_pass_fills_every_boundary(tiny_base, tiny_split):
    runner = Runner(tiny_base, "tiny", 16, cache=True, disk_cache=False, preprocess=identity)
    paths = runner.prepare(STUDY_PATHS.values())
    assert paths == {"cached": len(STUDY_PATHS), "naive": 0}
    for run in STUDY_PATHS.values():
        runner.run(run, tiny_split)
    assert runner.passes == 3  # train, test, val: once each, for all four boundaries


@pytest.mark.parametrize("run, cache, why", [
    (spec(LAST2, augment=True), True, "augmentation"),
    (spec("finetune_all"), True, "no frozen prefix"),
    (spec(LAST2), False, "cache off"),
])
def test_plan_names_why_a_run_takes_the_naive_path(tiny_base, run, cache, why):
    runner = Runner(tiny_base, "tiny", 16, cache=cache, disk_cache=False, preprocess=identity)
    at, reason = runner.plan(run)
    assert at is None and why in reason


def test_augmented_runs_are_deterministic(runners, tiny_split):
    run = spec(LAST2, augment=True, steps=4)
    first, second = runners[0].run(run, tiny_split), runners[0].run(run, tiny_split)
    assert first["path"] == "naive" and first["predictions"] == second["predictions"]


def test_boundaries_are_where_the_trained_blocks_start(tiny_base):
    assert surgery.boundary(tiny_base, 0) == "avg_pool"
    assert surgery.boundary(tiny_base, 2) == "block2_pool"
    assert surgery.boundary(tiny_base, 5) is None


def test_a_loaded_model_needs_its_preprocess(tiny_base):
    with pytest.raises(ValueError, match="preprocess="):
        Runner(tiny_base)
