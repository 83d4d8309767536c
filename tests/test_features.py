"""Tests for course_utils.features (notebook 05): bottleneck features from the one activation cache, probes."""

from __future__ import annotations

import numpy as np
import pytest

from course_utils import evaluation, features
from course_utils.cache import CacheWarning
from course_utils.data import ImageSet, stratified_sample
from course_utils.images import to_model_input


@pytest.fixture
def small_set(photos) -> ImageSet:
    images = np.stack([to_model_input(p, 64) for p in photos.values()])
    return ImageSet(images, np.array([0, 1, 0, 1]), ["a", "b"], [f"photo:{name}" for name in photos])


@pytest.mark.parametrize("damage", ["truncated", "bit flip", "random bytes", "right shape, wrong content"])
def test_a_damaged_feature_cache_is_named_deleted_and_recomputed(damage, small_set, lite0_64, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    first = features.extract_features(small_set, model=lite0_64)
    (path,) = (tmp_path / "activations").glob("*.npz")
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif damage == "bit flip":
        i = data.index(first[2].tobytes()[:8])
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1:])
    elif damage == "random bytes":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    else:  # a valid .npz of the right shape whose numbers are wrong (the old format, or copied by hand)
        np.savez(path, features=np.zeros_like(first))
    with pytest.warns(CacheWarning, match=f"cache file {path} is unusable") as caught:
        again = features.extract_features(small_set, model=lite0_64)
    assert "allow_pickle" not in str(caught[0].message)
    np.testing.assert_allclose(again, first, rtol=1e-6)
    np.testing.assert_allclose(features.extract_features(small_set, model=lite0_64), first, rtol=1e-6)  # healed


def test_a_feature_cache_hit_makes_no_forward_pass(small_set, lite0_64, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    first = features.extract_features(small_set, model=lite0_64)
    monkeypatch.setattr(evaluation, "predict_all", lambda *a, **k: pytest.fail("recomputed"))
    np.testing.assert_array_equal(features.extract_features(small_set, model=lite0_64), first)


def test_pooled_features_are_the_runner_frozen_head_entry(small_set, lite0_64, tmp_path, monkeypatch):
    """One file on disk for the pooled features, shared by features and the Runner (issue 9)."""
    from course_utils.runner import Runner

    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    feats = features.extract_features(small_set, model=lite0_64)
    runner = Runner("efficientnet_lite0", "imagenet", 64)  # the same network and weights, loaded again
    np.testing.assert_array_equal(runner.activations.get(small_set, "avg_pool"), feats)
    assert runner.passes == 0
    assert [p.name.split("-")[1] for p in (tmp_path / "activations").glob("*.npz")] == ["avg_pool"]
    assert not (tmp_path / "features").exists()


def test_choose_c_uses_training_folds_only():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 5))
    y = np.repeat(np.arange(3), 10)
    assert features.choose_c(x, y) in (0.01, 0.1, 1.0, 10.0)
    with pytest.raises(ValueError, match="2 classes"):
        features.fit_probe(x, np.zeros(30, int))


def _tiny_set(images, labels, prefix):
    return ImageSet(images, labels, ["a", "b"], [f"{prefix}{i}" for i in range(len(labels))])


def test_feature_cache_is_keyed_by_the_exact_image_list(lite0_64, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, size=(4, 64, 64, 3), dtype=np.uint8)
    first = features.extract_features(_tiny_set(imgs, np.array([0, 0, 1, 1]), "x"), model=lite0_64)
    assert first.shape == (4, 1280) and len(list((tmp_path / "activations").glob("*.npz"))) == 1
    again = features.extract_features(_tiny_set(imgs, np.array([0, 0, 1, 1]), "x"), model=lite0_64)
    np.testing.assert_array_equal(first, again)
    assert len(list((tmp_path / "activations").glob("*.npz"))) == 1  # a cache hit, no new file
    features.extract_features(_tiny_set(imgs[:3], np.array([0, 0, 1]), "x"), model=lite0_64)
    assert len(list((tmp_path / "activations").glob("*.npz"))) == 2  # another image list, another entry
    fused = features.extract_features(_tiny_set(imgs, np.array([0, 0, 1, 1]), "x"), model=lite0_64,
                                      layers=["block6a_expand_activation", "avg_pool"])
    assert fused.shape == (4, lite0_64.get_layer("block6a_expand_activation").output.shape[-1] + 1280)




def test_probe_sweep_uses_stratified_subsets():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    x = rng.normal(0, 1, (30, 5)) + 4 * np.eye(3, 5)[y]
    out = features.probe_sweep(x, y, x, y, per_class=[2, 5], seeds=[0, 1], methods=("svm", "logreg"))
    assert set(out) == {"svm", "logreg"} and np.asarray(out["svm"]).shape == (2, 2)
    idx = stratified_sample(y, 2, 1)
    probe = features.fit_probe(x[idx], y[idx], "svm", seed=1)
    assert out["svm"][0][1] == float(np.mean(probe.predict(x) == y))  # exactly that subset's probe
    assert min(out["logreg"][1]) > 0.8


def test_feature_extractor_pools_and_fuses(lite0_64):
    extractor = features.feature_extractor(lite0_64, ["block6a_expand_activation", "avg_pool"])
    width = lite0_64.get_layer("block6a_expand_activation").output.shape[-1]
    assert extractor.output.shape == (None, width + 1280)


def test_late_fusion_probe_is_the_mean_of_one_logistic_regression_per_layer():
    """Pittaras' late fusion, exactly: each layer's own LogisticRegression, probabilities averaged."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 10)
    train = [rng.normal(size=(30, d)) + labels[:, None] * s for d, s in ((4, 1.0), (7, 0.3), (3, 2.0))]
    test = [rng.normal(size=(9, part.shape[1])) for part in train]
    fused, per_layer = features.late_fusion_probe(train, labels, test, C=0.5)
    for tr, te, got in zip(train, test, per_layer):
        want = LogisticRegression(C=0.5, max_iter=3000, random_state=0).fit(tr, labels).predict_proba(te)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fused, (per_layer[0] + per_layer[1] + per_layer[2]) / 3, rtol=0, atol=1e-15)
    np.testing.assert_allclose(fused.sum(axis=1), np.ones(9), atol=1e-12)
    early = features.fit_probe(np.concatenate(train, axis=1), labels, C=0.5).predict_proba(np.concatenate(test, axis=1))
    assert np.abs(early - fused).max() > 0.05  # late fusion is not a classifier on the concatenation
    with pytest.raises(ValueError, match="one train and one test array per layer"):
        features.late_fusion_probe(train, labels, test[:2])


def test_layer_features_are_the_pooled_outputs_of_each_layer_in_one_pass(small_set, lite0_64):
    from course_utils import backbones

    layers = ["block7a_project_bn", "avg_pool"]
    parts = features.layer_features(small_set, lite0_64, backbones.get_preprocess("efficientnet_lite0"), layers)
    assert [p.shape for p in parts] == [(4, 320), (4, 1280)]
    fused = features.extract_features(small_set, model=lite0_64, layers=layers, cache=False)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), fused, rtol=1e-5, atol=1e-6)
