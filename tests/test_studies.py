"""Tests for course_utils.studies (notebooks 01-06): the notebooks' studies, each a list of RunSpecs run by the
one Runner. A tiny CNN (stem, block1-3, top) keeps them fast; the Runner's own exactness is in test_runner."""

from __future__ import annotations

import numpy as np
import pytest

from _tiny import SIZE, easy_split, identity, tiny_backbone
from course_utils import studies, surgery
from course_utils.data import Split, stratified_sample
from course_utils.small_cnn import small_cnn

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def split() -> Split:
    return easy_split(n_val=0)


@pytest.fixture()
def model():
    """A backbone with a new head, as the notebooks pass it."""
    return surgery.replace_head(tiny_backbone(), 3)


def _values(model) -> list[np.ndarray]:
    return [np.array(v) for v in model.variables]


def _assert_unchanged(before, model) -> None:
    for value, variable in zip(before, model.variables):
        np.testing.assert_array_equal(value, np.array(variable))


def test_freeze_depth_sweep_rows_and_bn_modes(model, split):
    start = _values(model)
    rows = studies.freeze_depth_sweep(model, split, identity, train_last=(0, 2, None), epochs=1, batch_size=6,
                                      head_epochs=1)
    assert [r["train_last"] for r in rows] == [0, 2, 5]
    assert [r["path"] for r in rows] == ["cached", "cached", "naive"]
    assert [r["head_steps"] for r in rows] == [0, 3, 3]  # the frozen head has nothing to warm up before
    assert rows[0]["trainable"] == 8 * 3 + 3 and rows[0]["first_trained"] == "(new layers only)"
    assert rows[1]["first_trained"] == "block3" and rows[1]["trainable"] == 6 * 8 * 9 + 8 * 3 + 3
    assert rows[2]["trainable"] == 3 * 4 * 9 + 4 * 6 * 9 + 6 * 8 * 9 + 8 * 3 + 3  # BatchNorm frozen
    assert [r["steps"] for r in rows] == [3, 3, 3]  # 18 images, 6 a batch, one epoch
    assert all(max(r["bn_drift"].values()) == 0.0 for r in rows)  # BatchNorm in inference mode
    assert rows[1]["accuracy"] == np.mean(np.array(rows[1]["report"]["predictions"]) == split.test.labels)
    _assert_unchanged(start, model)
    rows = studies.freeze_depth_sweep(model, split, identity, train_last=(1,), epochs=1, batch_size=3, bn="train")
    assert rows[0]["bn_drift"] == {"block1_bn": 0.0, "block2_bn": 0.0, "block3_bn": 0.0}  # top has no BatchNorm
    rows = studies.freeze_depth_sweep(model, split, identity, train_last=(2,), epochs=1, batch_size=3, bn="train")
    assert rows[0]["bn_drift"]["block3_bn"] > 0 and rows[0]["bn_drift"]["block2_bn"] == 0.0
    with pytest.raises(ValueError, match="between 0 and 5"):
        studies.freeze_depth_sweep(model, split, identity, train_last=(6,))


def test_batchnorm_mode_comparison_scales_lr_and_keeps_the_model(model, split):
    start = _values(model)
    rows = studies.batchnorm_mode_comparison(model, split, identity, train_last=2, batch_sizes=(3, 6), epochs=1,
                                             lr=0.06, backbone_lr=0.006, reference_batch=6, seeds=(0, 1))
    assert [(r["batch_size"], r["bn"], r["seed"]) for r in rows] == [
        (3, "inference", 0), (3, "inference", 1), (3, "train", 0), (3, "train", 1),
        (6, "inference", 0), (6, "inference", 1), (6, "train", 0), (6, "train", 1)]
    assert rows[0]["lr"] == pytest.approx(0.03) and rows[0]["backbone_lr"] == pytest.approx(0.003)
    assert rows[0]["steps"] == 6 and rows[-1]["steps"] == 3  # 18 training images
    assert all(max(r["bn_drift"].values()) == 0.0 for r in rows if r["bn"] == "inference")
    assert all(r["bn_drift"]["block3_bn"] > 0.0 for r in rows if r["bn"] == "train")
    _assert_unchanged(start, model)
    with pytest.raises(ValueError, match="between 1 and 4"):
        studies.batchnorm_mode_comparison(model, split, identity, train_last=0)


def test_extension_finetune_comparison_is_ft3_ex(split):
    base = tiny_backbone()
    start = _values(base)
    rows = studies.extension_finetune_comparison(base, split, identity, {"plain": (), "ext": (8,)}, train_last=2,
                                                 epochs=1, batch_size=6, head_epochs=1)
    assert list(rows) == ["plain", "ext"] and rows["ext"]["extension_units"] == [8]
    assert rows["ext"]["trainable"] - rows["plain"]["trainable"] == (8 * 8 + 8 + 8 * 3 + 3) - (8 * 3 + 3)
    assert [r["head_steps"] for r in rows.values()] == [3, 3]
    assert all(r["path"] == "cached" and r["report"]["weight_change"]["block3"] > 0 for r in rows.values())
    _assert_unchanged(start, base)
    with pytest.raises(ValueError, match="at least one"):
        studies.extension_finetune_comparison(base, split, identity, {})


def test_per_class_finetune_sweep_trains_on_the_probe_subsets(model, split):
    accs = studies.per_class_finetune_sweep(model, split, identity, per_class=[2, 4], seeds=[0, 1], train_last=2,
                                            steps=4, batch_size=4)
    assert np.asarray(accs).shape == (2, 2)
    runner = studies.study_runner(model, identity)
    subset = Split(split.train.take(stratified_sample(split.train.labels, 4, 1)), split.test, split.spec)
    run = studies._spec(split, runner, studies.depth_topology(2, 5), 1, per_class=4, lr=0.01, steps=4, batch_size=4)
    assert accs[1][1] == runner.run(run, subset)["accuracy"]  # exactly that subset's run


def test_lr_sweep_restores_weights_and_flags_divergence(split):
    model = small_cnn(SIZE, 3, widths=(4, 6, 8), dropout=0.0, seed=0)
    start = _values(model)
    sweep = studies.lr_sweep(model, split, identity, [1e20, 1e-2], train_last=2, epochs=2,
                             variants={"one": None, "tenth": 0.1}, seeds=[0, 1], batch_size=6)
    assert list(sweep) == ["one", "tenth"]
    result = sweep["one"]
    assert result.rates == [1e20, 1e-2]
    assert np.asarray(result.accuracy).shape == (2, 2)
    assert result.diverged == [[True, True], [False, False]] and np.isnan(result.accuracy[0]).all()
    assert len(result.histories) == 2 and len(result.histories[1]["loss"]) == 2  # per epoch
    assert result.weight_change[1][0] > 0
    with pytest.raises(ValueError, match="val_fraction"):  # no validation images: no choice on test
        result.best_rate()
    assert 0.0 <= result.start_accuracy <= 1.0
    assert "2/2 seeds" in result.table()
    _assert_unchanged(start, model)
    with pytest.raises(ValueError, match="positive"):
        studies.lr_sweep(model, split, identity, [0.0], train_last=2)


def test_lr_sweep_later_rates_match_a_fresh_sweep(split):
    model = small_cnn(SIZE, 3, widths=(4, 6, 8), dropout=0.0, seed=0)
    both = studies.lr_sweep(model, split, identity, [0.05, 0.01], train_last=2, epochs=2, batch_size=6)
    alone = studies.lr_sweep(model, split, identity, [0.01], train_last=2, epochs=2, batch_size=6)
    np.testing.assert_allclose(both["one rate"].histories[1]["loss"], alone["one rate"].histories[0]["loss"], rtol=1e-5)
    assert both["one rate"].accuracy[1] == alone["one rate"].accuracy[0]


def test_lr_sweep_runs_adam_with_a_schedule(split):
    model = small_cnn(SIZE, 3, widths=(4, 6, 8), dropout=0.0, seed=0)
    result = studies.lr_sweep(model, split, identity, [1e-3], train_last=2, epochs=1, batch_size=6, optimizer="adam",
                              schedule="cosine")["one rate"]
    (report,) = result.reports[0]
    assert report["path"] == "cached" and not result.diverged[0][0]


def _separable(seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (3, 20))
    y = np.repeat(np.arange(3), 20)
    return (centers[y] + rng.normal(0, 0.5, (60, 20))).astype("float32"), y


def test_train_head_on_features_learns_separable_features():
    x, y = _separable()
    head, report = studies.train_head_on_features(x, y, x, y, CLASSES, extension_units=(8,), epochs=30, lr=0.05,
                                                  batch_size=16, seed=1)
    assert report["accuracy"] == 1.0
    assert report["trainable_params"] == 20 * 8 + 8 + 8 * 3 + 3 == surgery.count_params(head)["trainable"]
    assert report["extension_units"] == [8] and report["seed"] == 1
    with pytest.raises(ValueError, match="exactly one"):
        studies.train_head_on_features(x, y, x, y, CLASSES, epochs=1, steps=1)


def test_extension_sweep_restarts_every_seed_from_fresh_weights():
    x, y = _separable()
    out = studies.extension_sweep(x, y, x, y, CLASSES, {"plain": (), "ext": (8,)}, seeds=[0, 1, 0], epochs=20,
                                  lr=0.05, batch_size=16)
    assert list(out) == ["plain", "ext"] and [r["seed"] for r in out["ext"]] == [0, 1, 0]
    assert out["plain"][0]["trainable_params"] == 20 * 3 + 3 and out["ext"][0]["extension_units"] == [8]
    assert all(r["accuracy"] == 1.0 for reports in out.values() for r in reports)
    assert out["ext"][2] == out["ext"][0]  # seed 0 again after seed 1: the same run


def test_fit_head_with_history_learns_separable_features():
    x, y = _separable()
    head, history = studies.fit_head_with_history(x, y, x, y, 3, lr=0.1, epochs=5, batch_size=16)
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history["val_accuracy"]) == 5 and history["val_accuracy"][-1] == 1.0
    assert history["loss"][-1] < history["loss"][0]
    assert head.output.shape == (None, 3)


def test_lr_sweep_chooses_the_rate_on_validation_not_test(split):
    model = small_cnn(SIZE, 3, widths=(4, 6, 8), dropout=0.0, seed=0)
    with_val = Split(split.train, split.test, split.spec, val=split.train.take(np.arange(6)))
    result = studies.lr_sweep(model, with_val, identity, [1e20, 1e-2, 1e-9], train_last=2, epochs=2, seeds=[0],
                              batch_size=6)["one rate"]
    assert result.val_accuracy[0] == [None] and 0 <= result.val_accuracy[1][0] <= 1  # diverged: none
    result.val_accuracy = [[0.9], [0.5], [0.5]]  # a diverged run never wins; a tie goes to the smaller rate
    assert result.best_rate() == 1e-9
    result.val_accuracy = [[0.1], [0.6], [0.5]]
    assert result.best_rate() == 1e-2
