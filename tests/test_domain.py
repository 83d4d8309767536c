"""Tests for course_utils.domain (notebooks 08_domain_distance and 09_capstone): the ImageNet mean estimated
from BatchNorm, the distance ordering and stability, Chu's grid, and ``recommend`` on good and bad input."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest

from course_utils import cli, domain
from course_utils.backbones import load_backbone
from course_utils.data import load_dataset

SIZE = 128
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def lite0() -> keras.Model:
    return load_backbone("efficientnet_lite0", input_size=SIZE)


@pytest.fixture(scope="module")
def digits_runs(lite0) -> list[domain.DomainDistance]:
    return domain.distance_over_seeds("sklearn:digits", SEEDS, model=lite0, image_size=SIZE, per_class=5)


@pytest.fixture(scope="module")
def flowers_runs(flowers_dir, lite0) -> list[domain.DomainDistance]:
    return domain.distance_over_seeds(str(flowers_dir), SEEDS, model=lite0, image_size=SIZE, per_class=10)


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
    relu6 = keras.layers.ReLU(6.0)
    np.testing.assert_allclose(domain.gaussian_mean_through(relu6, mean, std),
                               domain.relu_gaussian_mean(mean, std), atol=0.01)
    swish = domain.gaussian_mean_through(keras.activations.silu, mean, std)
    x = mean + std * np.random.default_rng(1).standard_normal((400_000, 3))
    np.testing.assert_allclose(swish, (x / (1 + np.exp(-x))).mean(axis=0), atol=0.02)


def test_imagenet_mean_comes_from_top_bn(lite0):
    gamma, beta, mean, var = (np.asarray(w, np.float64) for w in lite0.get_layer("top_bn").get_weights())
    eps = lite0.get_layer("top_bn").epsilon
    expected = domain.relu_gaussian_mean(beta, np.abs(gamma) * np.sqrt(var / (var + eps)), cap=6.0)
    got = domain.imagenet_mean_features(lite0)
    assert got.shape == (1280,)
    assert np.all(got >= 0) and np.all(got <= 6)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_normal_model_reproduces_measured_mean_features(lite0):
    """Applied to the images' own per-channel statistics, the closed form gives their measured mean feature."""
    from course_utils import backbones

    images = load_dataset("sklearn:digits", image_size=SIZE, per_class=3, test_per_class=1).train.images
    probe = keras.Model(lite0.inputs, [lite0.get_layer("top_bn").output, lite0.get_layer("avg_pool").output])
    bn_out, pooled = probe.predict(backbones.preprocess("efficientnet_lite0", images), verbose=0)
    estimate = domain.relu_gaussian_mean(bn_out.mean(axis=(0, 1, 2)), bn_out.std(axis=(0, 1, 2)))
    assert domain.cosine_distance(estimate, pooled.mean(axis=0)) < 0.02


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


def test_cosine_distance_and_mmd():
    assert domain.cosine_distance([1, 0], [2, 0]) == pytest.approx(0.0)
    assert domain.cosine_distance([1, 0], [0, 3]) == pytest.approx(1.0)
    assert domain.linear_mmd(np.array([3.0, 4.0]), np.array([3.0, 4.0])) == 0.0
    assert domain.linear_mmd(np.array([3.0, 4.0]), np.array([0.0, 4.0])) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="all-zero"):
        domain.cosine_distance([0, 0], [1, 1])


# ------------------------------------------------------------------------------------------ ordering, stability


def _report(name: str, runs) -> None:
    stats = domain.summarize(runs)
    print(name, "  ".join(f"{k} {m:.3f} +- {s:.3f}" for k, (m, s) in stats.items()))


def test_flowers_are_nearer_than_digits_by_every_measure(flowers_runs, digits_runs):
    _report("flowers", flowers_runs)
    _report("digits", digits_runs)
    flowers, digits = domain.summarize(flowers_runs), domain.summarize(digits_runs)
    assert max(r.distance for r in flowers_runs) + 0.15 < min(r.distance for r in digits_runs)
    assert max(r.mmd for r in flowers_runs) < min(r.mmd for r in digits_runs)
    assert min(r.confidence for r in flowers_runs) > max(r.confidence for r in digits_runs)
    assert domain.distance_level(flowers["distance"][0]) in {"low", "medium"}
    assert domain.distance_level(digits["distance"][0]) == "high"
    assert all(0 <= r.distance <= 1 for r in flowers_runs + digits_runs)


@pytest.mark.parametrize("which", ["flowers_runs", "digits_runs"])
def test_distance_agrees_across_samples(which, request):
    runs = request.getfixturevalue(which)
    distances = [r.distance for r in runs]
    assert len({tuple(r.target_mean[:5]) for r in runs}) == len(SEEDS)  # really different samples
    assert np.std(distances) < 0.03, distances
    assert max(distances) - min(distances) < 0.08, distances


# ------------------------------------------------------------------------------------------ Chu's grid


def test_grid_bins_follow_chu_table_3():
    assert [domain.data_level(n) for n in (1, 20, 21, 99, 100, 5000)] == ["low", "low", "medium", "medium",
                                                                          "high", "high"]
    assert [domain.distance_level(d) for d in (0.0, 0.19, 0.2, 0.39, 0.4, 1.0)] == ["low", "low", "medium",
                                                                                    "medium", "high", "high"]
    assert set(domain.CHU_TABLE) == {(d, n) for d in ("low", "medium", "high") for n in ("low", "medium", "high")}
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            domain.data_level(bad)
    for bad in (math.nan, -0.5):
        with pytest.raises(ValueError, match="cosine distance"):
            domain.distance_level(bad)


def test_grid_tunes_more_the_farther_and_the_more_data():
    order = ["none", "top", "half", "all"]
    depth = {cell: order.index(advice.depth) for cell, advice in domain.CHU_TABLE.items()}
    levels = ["low", "medium", "high"]
    for a, b in zip(levels, levels[1:]):
        for other in levels:
            assert depth[(a, other)] <= depth[(b, other)]  # farther: at least as deep
            assert depth[(other, a)] <= depth[(other, b)]  # more data: at least as deep
    assert domain.CHU_TABLE[("low", "low")].topology == "freeze"
    assert domain.CHU_TABLE[("high", "high")].train_last(18) == 18


def test_train_class_counts(image_tree):
    split_root = image_tree({"train/a": 5, "train/b": 3, "test/a": 2, "test/b": 2}, "split")
    assert domain.train_class_counts(str(split_root)) == {"a": 5, "b": 3}
    flat_root = image_tree({"a": 10, "b": 5}, "flat")
    assert domain.train_class_counts(str(flat_root)) == {"a": 8, "b": 4}
    train = load_dataset("sklearn:digits", image_size=8, seed=3).train  # the split load_dataset makes
    expected = dict(zip(train.classes, np.bincount(train.labels).tolist()))
    assert domain.train_class_counts("sklearn:digits", seed=3) == expected


def test_verdict_says_within_noise_for_small_differences():
    def verdict(freeze, finetune, n_test=100, recommended="finetune"):
        return domain.Verification(recommended, {"freeze": freeze, "finetune": finetune}, n_test, 10, 128, 2,
                                   list(range(len(freeze)))).verdict

    assert verdict([0.70, 0.72], [0.80, 0.82]) == "held"
    assert verdict([0.70, 0.72], [0.80, 0.82], recommended="freeze") == "did not hold"
    assert verdict([0.70, 0.80], [0.76, 0.78]) == "within noise"  # difference below the seeds' spread
    assert verdict([0.700], [0.705]) == "within noise"  # below one test image


# ------------------------------------------------------------------------------------------ the command line


@pytest.fixture
def bad_specs(tmp_path, image_tree) -> dict[str, str]:
    (tmp_path / "empty").mkdir()
    return {
        "missing folder": str(tmp_path / "nope"),
        "single class": str(image_tree({"cats": 2}, "single")),
        "empty folder": str(tmp_path / "empty"),
        "empty class": str(image_tree({"cats": 2, "dogs": 0}, "hollow")),
        "unknown sklearn": "sklearn:iris",
        "unknown tfds name": "tfds:no_such_dataset_xyz",
    }


@pytest.mark.parametrize("case", ["missing folder", "single class", "empty folder", "empty class",
                                  "unknown sklearn", "unknown tfds name"])
def test_recommend_bad_data_is_one_clean_error(case, bad_specs, capsys):
    assert cli.main(["recommend", "--data", bad_specs[case]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err


@pytest.mark.parametrize("args, message", [(["--per-class", "0"], "argument --per-class"),
                                           (["--backbone", "no_such_net"], "unknown backbone"),
                                           (["--verify", "--verify-seeds", "0"], "verify-seeds")])
def test_recommend_bad_options_are_one_clean_error(args, message, capsys):
    assert cli.main(["recommend", "--data", "sklearn:digits", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err


def test_recommend_prints_and_writes_json_and_verifies(image_tree, tmp_path, capsys):
    root = image_tree({"train/cat": 6, "train/coffee": 6, "test/cat": 2, "test/coffee": 2}, "small")
    out = tmp_path / "rec.json"
    assert cli.main(["recommend", "--data", str(root), "--size", "64", "--sample-per-class", "3",
                     "--json", str(out), "--verify", "--verify-size", "64", "--verify-seeds", "1",
                     "--verify-steps", "4", "--test-per-class", "2"]) == 0
    text = capsys.readouterr().out
    for line in ("images per class: 6", "distance from ImageNet:", "Chu's Table 3 cell:", "x low data",
                 "advice: Freeze", "the advice "):
        assert line in text, text
    result = json.loads(out.read_text())
    assert {"distance", "images_per_class", "advice"} <= set(result)
    assert result["images_per_class"] == 6 and result["method"] == "head" and 0 <= result["distance"] <= 1
    assert result["verify"]["verdict"] in {"held", "within noise", "did not hold"} and result["verify"]["steps"] == 4
    assert set(result["verify"]["accuracy"]) == {"freeze", "finetune"}
