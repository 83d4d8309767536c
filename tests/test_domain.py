"""Tests for course_utils.domain (notebook 08_domain_distance): the ImageNet mean estimated from BatchNorm,
the sample-size correction, the calibration against Chu's Table 2, and the measured ordering (slow)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from course_utils import backbones, domain, evaluation, features
from course_utils.backbones import load_backbone
from course_utils.data import load_dataset
from course_utils.quiet import keras

SEED_TEXT = Path(__file__).resolve().parents[1].parent / "shared" / "seeds"
SIZE = 128


@pytest.fixture(scope="module")
def lite0() -> keras.Model:
    return load_backbone("efficientnet_lite0", input_size=SIZE)


# ------------------------------------------------------------------------------------------ the estimate


@pytest.mark.parametrize("cap", [6.0, None])
def test_relu_gaussian_mean_matches_monte_carlo(cap):
    rng = np.random.default_rng(0)
    mean, std = np.array([-4.0, -1.0, 0.0, 2.0, 7.0]), np.array([3.0, 0.5, 1.0, 4.0, 2.0])
    samples = mean + std * rng.standard_normal((400_000, 5))
    expected = np.clip(samples, 0, cap if cap is not None else np.inf).mean(axis=0)
    np.testing.assert_allclose(domain.relu_gaussian_mean(mean, std, cap=cap), expected, atol=0.02)


def test_quadrature_agrees_with_closed_form_and_monte_carlo():
    mean, std = np.array([-3.0, 0.5, 4.0]), np.array([3.0, 1.0, 2.5])
    np.testing.assert_allclose(domain.gaussian_mean_through(keras.layers.ReLU(6.0), mean, std),
                               domain.relu_gaussian_mean(mean, std), atol=0.01)
    swish = domain.gaussian_mean_through(keras.activations.silu, mean, std)
    x = mean + std * np.random.default_rng(1).standard_normal((400_000, 3))
    np.testing.assert_allclose(swish, (x / (1 + np.exp(-x))).mean(axis=0), atol=0.02)


def test_imagenet_mean_comes_from_top_bn(lite0):
    gamma, beta, mean, var = (np.asarray(w, np.float64) for w in lite0.get_layer("top_bn").get_weights())
    eps = lite0.get_layer("top_bn").epsilon
    expected = domain.relu_gaussian_mean(beta, np.abs(gamma) * np.sqrt(var / (var + eps)), cap=6.0)
    np.testing.assert_allclose(domain.imagenet_mean_features(lite0), expected, rtol=1e-6)


def test_normal_model_reproduces_measured_mean_features(lite0):
    """Applied to the images' own per-channel statistics, the closed form gives their measured mean feature."""
    images = load_dataset("sklearn:digits", image_size=SIZE, per_class=3, test_per_class=1).train.images
    probe = keras.Model(lite0.inputs, [lite0.get_layer("top_bn").output, lite0.get_layer("avg_pool").output])
    bn_out, pooled = probe.predict(backbones.preprocess("efficientnet_lite0", images), verbose=0)
    estimate = domain.relu_gaussian_mean(bn_out.mean(axis=(0, 1, 2)), bn_out.std(axis=(0, 1, 2)))
    assert domain.cosine_distance(estimate, pooled.mean(axis=0)) < 0.02


def test_imagenet_like_photos_sit_at_the_estimated_imagenet_mean():
    """The validation of the estimate: four ImageNet-like photos are ~0 away once corrected for n = 4."""
    model = load_backbone("efficientnet_lite0", input_size=224)
    photos = domain.imagenet_like_photos(224)
    preprocess = backbones.get_preprocess("efficientnet_lite0")
    feats = evaluation.predict(features.feature_extractor(model), photos, preprocess)
    got = domain.measure_features(feats, model, 224)
    assert got.distance > 0.3  # the mean of 4 sparse feature vectors, uncorrected
    assert abs(got.corrected) < 0.08, got.corrected


def test_other_backbones_relu6_and_swish():
    """Untrained BatchNorm (gamma 1, beta 0, variance 1) means N(0, 1) inputs: known means after the activation."""
    z = np.random.default_rng(2).standard_normal(1_000_000)
    mobilenet = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3))
    np.testing.assert_allclose(domain.imagenet_mean_features(mobilenet), np.clip(z, 0, 6).mean(), atol=0.005)
    efficientnet = keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3))
    np.testing.assert_allclose(domain.imagenet_mean_features(efficientnet), (z / (1 + np.exp(-z))).mean(),
                               atol=0.005)


def test_backbone_without_batchnorm_before_pooling_is_refused():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="predictions")(x))
    with pytest.raises(ValueError, match="cannot estimate ImageNet statistics"):
        domain.imagenet_mean_features(model)


# ------------------------------------------------------------------------------------------ measures


def test_cosine_distance_and_mmd():
    assert domain.cosine_distance([1, 0], [2, 0]) == pytest.approx(0.0)
    assert domain.cosine_distance([1, 0], [0, 3]) == pytest.approx(1.0)
    assert domain.linear_mmd(np.array([3.0, 4.0]), np.array([3.0, 4.0])) == 0.0
    assert domain.linear_mmd(np.array([3.0, 4.0]), np.array([0.0, 4.0])) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="all-zero"):
        domain.cosine_distance([0, 0], [1, 1])


def test_corrected_distance_removes_the_sample_noise_from_the_norm():
    feats = np.array([[3.0, 1.0], [3.0, -1.0]])  # mean (3, 0); |m|^2 = 9; tr(Sigma_hat) / n = 2 / 2
    assert domain.cosine_distance([1, 1], feats.mean(axis=0)) == pytest.approx(1 - 1 / math.sqrt(2))
    expected = 1 - 3 / (math.sqrt(2) * math.sqrt(8))  # 1 - s.m / (|s| sqrt(9 - 1))
    assert domain.corrected_distance(np.array([1.0, 1.0]), feats) == pytest.approx(expected)
    with pytest.raises(ValueError, match="at least 2"):
        domain.corrected_distance(np.ones(2), feats[:1])


def test_corrected_distance_of_small_samples_is_nearer_the_population_distance():
    rng = np.random.default_rng(0)
    source = np.full(50, 1.0)
    population = np.maximum(rng.normal(1.0, 3.0, (20_000, 50)), 0)  # sparse, like ReLU features
    truth = domain.cosine_distance(source, population.mean(axis=0))
    draws = [population[rng.choice(len(population), 5, replace=False)] for _ in range(200)]
    raw = np.mean([domain.cosine_distance(source, d.mean(axis=0)) for d in draws])
    corrected = np.mean([domain.corrected_distance(source, d) for d in draws])
    assert abs(corrected - truth) < 0.3 * abs(raw - truth), (truth, raw, corrected)


# ------------------------------------------------------------------------------------------ calibration


def test_chu_table2_is_quoted_from_the_paper():
    assert [r[0] for r in domain.CHU_TABLE2] == ["Yosinski", "Caltech-256", "SUN397", "MIT-Indoor", "CUB-200",
                                                 "Coral", "Plankton"]
    assert [r[1] for r in domain.CHU_TABLE2] == sorted(r[1] for r in domain.CHU_TABLE2)
    papers = sorted(SEED_TEXT.glob("001_*.txt"))
    if not papers:
        pytest.skip("../shared/seeds not beside the repo")
    text = papers[0].read_text()
    for name, cos, mmd, svm, cnn in domain.CHU_TABLE2:
        assert f"{name}\t{cos:.3f}\t{mmd}\t{svm}\t{cnn}" in text, name


def test_calibration_maps_anchors_onto_chu_and_interpolates_between():
    by_name = {a.name: a for a in domain.ANCHORS}
    assert {a.chu_dataset: a.chu_distance for a in domain.ANCHORS} == {"CUB-200": 0.358, "Coral": 0.455,
                                                                       "Plankton": 0.534}
    for anchor in domain.ANCHORS:
        assert domain.calibrated_distance(anchor.corrected) == pytest.approx(anchor.chu_distance)
    flowers, eurosat = by_name["flowers"], by_name["EuroSAT"]
    middle = (flowers.corrected + eurosat.corrected) / 2
    assert domain.calibrated_distance(middle) == pytest.approx((0.358 + 0.455) / 2)
    assert domain.calibrated_distance(flowers.corrected / 2) == pytest.approx(0.358 / 2)
    assert (domain.calibrated_distance(-0.01), domain.calibrated_distance(1.0)) == (0.0, 1.0)
    swapped = [domain.Anchor("a", ("x",), 0.3, "Coral", ""), domain.Anchor("b", ("y",), 0.4, "CUB-200", "")]
    with pytest.raises(ValueError, match="same order"):
        domain.calibrated_distance(0.35, swapped)


def test_calibration_table_levels_and_text():
    rows = domain.calibration_table()
    assert [(r["dataset"], r["level"]) for r in rows] == [("flowers", "medium"), ("EuroSAT", "high"),
                                                          ("digits", "high")]
    # left out, EuroSAT falls between flowers and digits: 0.358 + 0.176 * 0.085 / 0.393 = 0.396, just medium
    assert [r["level_without_it"] for r in rows] == ["medium", "medium", "high"]
    fake = domain.DomainDistance(0.5, 0.05, 0.4, 0.9, 4, 224, "efficientnet_lite0", np.ones(3))
    measured = domain.calibration_table({"flowers": fake, "photos": fake})
    assert measured[0]["dataset"] == "ImageNet-like photos" and measured[0]["level"] == "low"
    assert measured[1]["corrected"] == 0.05 and measured[1]["raw"] == 0.5 and measured[1]["level"] == "low"
    text = domain.format_calibration(measured)
    assert "CUB-200 0.358" in text and "Plankton 0.534" in text and text.count("\n") == len(measured) + 1


def test_distance_level_bins_follow_chu():
    assert [domain.distance_level(d) for d in (0.0, 0.19, 0.2, 0.39, 0.4, 1.0)] == ["low", "low", "medium",
                                                                                    "medium", "high", "high"]
    for bad in (math.nan, -0.5):
        with pytest.raises(ValueError, match="cosine distance"):
            domain.distance_level(bad)


# ------------------------------------------------------------------------------------------ measured (slow)


@pytest.mark.slow
def test_measured_anchors_reproduce_the_stored_ones_and_order_near_below_far(flowers_dir):
    measured = domain.measure_anchors()
    for anchor in domain.ANCHORS:
        assert measured[anchor.name].corrected == pytest.approx(anchor.corrected, abs=0.01), anchor.name
    rows = {r["dataset"]: r for r in domain.calibration_table(measured)}
    assert rows["flowers"]["level"] in {"low", "medium"} and rows["ImageNet-like photos"]["level"] == "low"
    assert rows["EuroSAT"]["level"] == rows["digits"]["level"] == "high"
    assert measured["flowers"].confidence > measured["EuroSAT"].confidence > measured["digits"].confidence


@pytest.mark.slow
def test_distance_agrees_across_samples(lite0):
    runs = domain.distance_over_seeds("sklearn:digits", (0, 1, 2), model=lite0, image_size=SIZE, per_class=5)
    assert len({tuple(r.target_mean[:5]) for r in runs}) == 3  # really different samples
    assert np.std([r.corrected for r in runs]) < 0.03
    assert domain.summarize(runs)["corrected"][1] == pytest.approx(np.std([r.corrected for r in runs]))


def test_an_anchor_whose_data_is_not_here_keeps_its_stored_value(monkeypatch):
    """Offline, with no ../shared and tf_flowers never downloaded, notebook 08 still calibrates."""
    missing = domain.Anchor("nowhere", ("/no/such/folder",), 0.3, "CUB-200", "a dataset this machine lacks")
    monkeypatch.setattr(domain, "imagenet_like_photos", lambda size: np.zeros((1, size, size, 3), np.uint8))
    monkeypatch.setattr(domain, "measure_features", lambda *args, **kwargs: "photos measured")
    with pytest.warns(UserWarning, match="anchor nowhere not measured here .*stored value 0.3 used"):
        got = domain.measure_anchors(load_backbone(input_size=32), anchors=(missing,), image_size=32)
    assert got == {"photos": "photos measured"}
