"""How far a dataset is from ImageNet, on Chu et al.'s scale (notebooks ``08_domain_distance``, ``09_capstone``).

Chu et al. (2016, Sec. 3.1) measure the cosine distance between the mean fc7 responses of source and
target, ``1 - mu_S . mu_T / (|mu_S| |mu_T|)``, with CaffeNet. We use the pooled penultimate features of
EfficientNet-Lite0, which needs two extra steps (the course's own; notebook 08 explains both):

1. **The ImageNet mean without ImageNet images.** ``top_bn`` recorded ImageNet's per-channel statistics;
   it maps them to mean ``beta`` and sd ``|gamma| sqrt(var / (var + eps))``. Modelling each channel as
   ``N(beta, s^2)``, the mean after ReLU6 has a closed form (:func:`relu_gaussian_mean`); other activations
   use Gauss-Hermite quadrature. Validated on ImageNet-like photos (:func:`imagenet_like_photos`), whose
   sample-corrected distance from the estimate is about 0 (Chu's ImageNet-vs-ImageNet Yosinski row: 0.003).
2. **A sample-size correction.** The mean of n images carries noise of size ``tr(Sigma)/n`` in
   ``|mu_T|^2``, which inflates the distance of small samples (4 photos: 0.35 raw). ``corrected`` uses
   ``|mu_T|^2 ~ |m|^2 - tr(Sigma_hat)/n``; Chu's thousands of images needed no such correction.
3. **Calibration by rank.** Lite0's distances are not on CaffeNet's scale, so Chu's 0.2 / 0.4 bins cannot
   be applied to them directly. :data:`ANCHORS` pairs datasets measured with Lite0 with the dataset of
   Chu's Table 2 (:data:`CHU_TABLE2`) that they resemble; a target is placed between the anchors by
   piecewise-linear interpolation (:func:`calibrated_distance`) and binned with Chu's bins.

Cross-checks (ordering only): ``mmd``, the linear-kernel MMD ``|mu_T - mu_S|`` relative to ``|mu_S|``
(the only MMD that needs nothing of the source but its mean), and ``confidence``, the mean top-1
probability of the network's own ImageNet classifier (high = near; depends on image size).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import skimage.data
from scipy.special import softmax
from scipy.stats import norm

from course_utils import backbones, blocks, data, evaluation, features, images
from course_utils.quiet import keras
from course_utils.settings import REPO_ROOT

DEFAULT_BACKBONE = "efficientnet_lite0"
MEASURES = ("distance", "corrected", "mmd", "confidence")
_HERMITE_NODES = 96

# Chu et al. (2016), Table 2, "Distance between source and target dataset" (CaffeNet fc7, source ImageNet;
# for Yosinski, source 500A and target 500B): dataset, cosine distance, MMD, linear SVM, CNN. Quoted.
CHU_TABLE2: tuple[tuple[str, float, float, str, str], ...] = (
    ("Yosinski", 0.003, 2.3, "57.3%", "51.0%"),
    ("Caltech-256", 0.071, 10.6, "71.4%", "69.0%"),
    ("SUN397", 0.194, 17.8, "81.5%", "76.4%"),
    ("MIT-Indoor", 0.307, 23.9, "90.0%", "84.5%"),
    ("CUB-200", 0.358, 37.2, "92.9%", "86.5%"),
    ("Coral", 0.455, 38.7, "97.3%", "99.4%"),
    ("Plankton", 0.534, 39.1, "97.2%", "99.7%"),
)
# Chu et al. (2016), Sec. 4: "low ... 0-0.2, a medium distance as 0.2-0.4, and a high distance as 0.4-1".
DISTANCE_LEVELS: tuple[tuple[str, float], ...] = (("low", 0.2), ("medium", 0.4), ("high", math.inf))
DISTANCE_RANGES = {"low": "0-0.2", "medium": "0.2-0.4", "high": "0.4-1"}


@dataclass(frozen=True)
class Anchor:
    """A dataset measured with Lite0 and the dataset of Chu's Table 2 it resembles (course extension)."""

    name: str
    specs: tuple[str, ...]   # where to measure it again: the first spec that loads
    corrected: float         # its sample-corrected distance, measured with ANCHOR_SETTINGS
    chu_dataset: str
    why: str

    @property
    def chu_distance(self) -> float:
        """The cosine distance Chu's Table 2 gives for ``chu_dataset``."""
        return next(row[1] for row in CHU_TABLE2 if row[0] == self.chu_dataset)


_SHARED = REPO_ROOT.parent / "shared" / "data"
ANCHOR_SETTINGS = {"backbone": DEFAULT_BACKBONE, "image_size": 224, "per_class": 100, "seed": 0}
# Measured with `domain.measure_anchors()` (ANCHOR_SETTINGS; 500, 500 and 1000 images).
ANCHORS: tuple[Anchor, ...] = (
    Anchor("flowers", (str(_SHARED / "flowers"), "tfds:tf_flowers"), 0.279, "CUB-200",
           "fine-grained photos of one kind of ImageNet-like object, as CUB's birds"),
    Anchor("EuroSAT", (str(_SHARED / "eurosat"), "sample:eurosat"), 0.364, "Coral",
           "survey imagery of natural surfaces seen from above, as Coral's reef photos"),
    Anchor("digits", ("sklearn:digits",), 0.672, "Plankton",
           "grey, non-photographic shapes on a plain background, as Plankton's microscope images"),
)


# ----------------------------------------------------------------------------------------------------
# The ImageNet mean feature, from the BatchNorm layer before the pooled features


def relu_gaussian_mean(mean: np.ndarray, std: np.ndarray, cap: float | None = 6.0) -> np.ndarray:
    """``E[min(max(Y, 0), cap)]`` for ``Y ~ N(mean, std^2)``, elementwise (closed form, 08_domain_distance).

    ``cap=6`` is ReLU6, ``cap=None`` a plain ReLU. Uses ``E[max(Y - a, 0)] = (m - a) Phi(z) + s phi(z)``,
    ``z = (m - a) / s``, and ``clip(Y, 0, cap) = max(Y, 0) - max(Y - cap, 0)``.
    """
    m = np.asarray(mean, dtype=np.float64)
    s = np.maximum(np.asarray(std, dtype=np.float64), 1e-12)

    def above(a: float) -> np.ndarray:
        z = (m - a) / s
        return (m - a) * norm.cdf(z) + s * norm.pdf(z)

    return above(0.0) - (above(float(cap)) if cap is not None else 0.0)


def gaussian_mean_through(activation: Any, mean: np.ndarray, std: np.ndarray,
                          nodes: int = _HERMITE_NODES) -> np.ndarray:
    """``E[activation(Y)]`` for ``Y ~ N(mean, std^2)`` per channel, by Gauss-Hermite quadrature.

    ``activation``: any elementwise callable (a Keras activation layer, ``np.tanh``...), e.g. the swish of
    EfficientNetB0 (notebook 08_domain_distance).
    """
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    values = np.asarray(mean, np.float64)[:, None] + np.asarray(std, np.float64)[:, None] * x[None, :]
    out = keras.ops.convert_to_numpy(activation(values.astype("float32"))).astype(np.float64)
    return out @ w / math.sqrt(2 * math.pi)


def _pool_activation_bn(model: keras.Model) -> tuple[Any, Any]:
    """The activation and BatchNorm layers that feed the pooled feature layer: GAP(act(BN(.)))."""
    name = blocks.feature_layer(model)
    layers = model.layers
    i = [layer.name for layer in layers].index(name)
    pool, act, bn = layers[i], layers[i - 1], layers[i - 2]
    if not (isinstance(pool, keras.layers.GlobalAveragePooling2D)
            and isinstance(bn, keras.layers.BatchNormalization)
            and pool.input is act.output and act.input is bn.output):
        raise ValueError(
            f"cannot estimate ImageNet statistics for {model.name!r}: its feature layer {name!r} is not a "
            "global average of activation(BatchNorm(...)). Use efficientnet_lite0, MobileNetV2 or an "
            "EfficientNetB* backbone (see notebook 08_domain_distance).")
    return act, bn


def _weight(layer: Any, attr: str, default: float) -> np.ndarray:
    var = getattr(layer, attr, None)
    if var is None:
        return np.full(int(layer.moving_mean.shape[0]), default)
    return keras.ops.convert_to_numpy(var).astype(np.float64)


def imagenet_mean_features(model: keras.Model) -> np.ndarray:
    """The ImageNet mean of the pooled penultimate features, estimated from ``top_bn`` (08_domain_distance)."""
    act, bn = _pool_activation_bn(model)
    var = _weight(bn, "moving_variance", 1.0)
    mean = _weight(bn, "beta", 0.0)
    std = np.abs(_weight(bn, "gamma", 1.0)) * np.sqrt(var / (var + bn.epsilon))
    if isinstance(act, keras.layers.ReLU) and not act.negative_slope and not act.threshold:
        return relu_gaussian_mean(mean, std, cap=act.max_value)
    return gaussian_mean_through(act, mean, std)


# ----------------------------------------------------------------------------------------------------
# Measures


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Chu et al.'s domain distance ``1 - a.b / (|a| |b|)`` between two mean feature vectors."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        raise ValueError("cosine distance of an all-zero feature vector is undefined")
    return float(1.0 - a @ b / norms)


def corrected_distance(source_mean: np.ndarray, target_features: np.ndarray) -> float:
    """:func:`cosine_distance` with ``|mu_T|^2`` corrected for sample size (course's own; notebook 08).

    ``|m|^2`` overestimates ``|mu_T|^2`` by ``tr(Sigma)/n`` on average; the dot product is unbiased.
    Needs at least 2 images; near 0 it may come out slightly negative (sampling noise).
    """
    feats = np.asarray(target_features, np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"the sample-corrected distance needs at least 2 feature vectors, got shape {feats.shape}")
    s, m = np.asarray(source_mean, np.float64), feats.mean(axis=0)
    norm_t2 = max(float(m @ m - feats.var(axis=0, ddof=1).sum() / len(feats)), 1e-12)
    return float(1.0 - s @ m / (np.linalg.norm(s) * math.sqrt(norm_t2)))


def linear_mmd(source_mean: np.ndarray, target_mean: np.ndarray) -> float:
    """Linear-kernel MMD ``|mu_T - mu_S|`` relative to ``|mu_S|`` (scale-free; 0 for identical means)."""
    s, t = np.asarray(source_mean, np.float64), np.asarray(target_mean, np.float64)
    return float(np.linalg.norm(t - s) / np.linalg.norm(s))


@dataclass
class DomainDistance:
    """The distance of one sample of images from ImageNet, with the cross-checks (08_domain_distance)."""

    distance: float      # Chu et al.'s formula on the sample's mean: 1 - cos(mu_ImageNet, mean target feature)
    corrected: float     # the same with |mu_T| corrected for sample size; what the calibration uses
    mmd: float           # linear-kernel MMD relative to the ImageNet mean's norm
    confidence: float    # mean top-1 ImageNet probability on the target images (high = near)
    n_images: int
    image_size: int
    backbone: str
    target_mean: np.ndarray = field(repr=False)

    def measures(self) -> dict[str, float]:
        """The measures by name (``MEASURES``)."""
        return {name: float(getattr(self, name)) for name in MEASURES}

    @property
    def calibrated(self) -> float:
        """``corrected`` placed on Chu's scale between the :data:`ANCHORS`."""
        return calibrated_distance(self.corrected)


def _imagenet_probabilities(model: keras.Model, feats: np.ndarray) -> np.ndarray:
    """ImageNet class probabilities from pooled features: the model's last (Dense, softmax) layer."""
    head = model.layers[-1]
    if not isinstance(head, keras.layers.Dense):
        raise ValueError(f"{model.name!r} does not end in a Dense ImageNet classifier; load the full backbone")
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in (head.kernel, head.bias))
    return softmax(feats.astype(np.float64) @ kernel + bias, axis=1)


def measure_features(feats: np.ndarray, model: keras.Model, image_size: int,
                     backbone: str = DEFAULT_BACKBONE) -> DomainDistance:
    """Every measure from pooled target features (``model``: the full ImageNet classifier; notebook 08)."""
    if len(feats) < 2:
        raise ValueError("measure at least 2 images (more give a steadier distance: 20 per class is plenty)")
    source, target = imagenet_mean_features(model), feats.mean(axis=0)
    probs = _imagenet_probabilities(model, feats)
    return DomainDistance(cosine_distance(source, target), corrected_distance(source, feats),
                          linear_mmd(source, target), float(probs.max(axis=1).mean()), len(feats),
                          int(image_size), backbone, target)


def measure_images(images: data.ImageSet, model: keras.Model, backbone: str = DEFAULT_BACKBONE) -> DomainDistance:
    """Every measure of ``images`` from ImageNet; features cached on disk like every bottleneck feature."""
    feats = features.extract_features(images, backbone, model=model) if len(images) else np.zeros((0, 1))
    return measure_features(feats, model, int(images.images.shape[1]), backbone)


def dataset_distance(spec: str, model: keras.Model | None = None, backbone: str = DEFAULT_BACKBONE,
                     image_size: int = 224, per_class: int | None = 20, seed: int = 0) -> DomainDistance:
    """:func:`measure_images` on ``per_class`` training images of each class (08_domain_distance).

    Raises ``DatasetError`` (a ValueError) for a spec that cannot be loaded.
    """
    split = data.load_dataset(spec, image_size=image_size, per_class=per_class, seed=seed, test_per_class=1)
    model = model or backbones.load_backbone(backbone, input_size=image_size)
    return measure_images(split.train, model, backbone)


def distance_over_seeds(spec: str, seeds: Sequence[int] = (0, 1, 2), **kwargs: Any) -> list[DomainDistance]:
    """:func:`dataset_distance` on a different random sample per seed (stability, 08_domain_distance)."""
    return [dataset_distance(spec, seed=int(seed), **kwargs) for seed in seeds]


def summarize(runs: Sequence[DomainDistance]) -> dict[str, tuple[float, float]]:
    """``{measure: (mean, std)}`` over runs, e.g. the seeds of :func:`distance_over_seeds`."""
    if not runs:
        raise ValueError("summarize needs at least one run")
    values = {name: [r.measures()[name] for r in runs] for name in MEASURES}
    return {name: (float(np.mean(v)), float(np.std(v))) for name, v in values.items()}


def imagenet_like_photos(image_size: int = 224) -> np.ndarray:
    """Four ImageNet-like photos that ship with scikit-image (astronaut, cat, coffee, rocket), uint8 (08)."""
    names = ("astronaut", "chelsea", "coffee", "rocket")
    return np.stack([images.to_model_input(getattr(skimage.data, n)(), image_size) for n in names])


# ----------------------------------------------------------------------------------------------------
# Calibration: Lite0 distances placed on Chu's scale by rank between anchors (course extension)


def calibrated_distance(corrected: float, anchors: Sequence[Anchor] = ANCHORS) -> float:
    """A Lite0 sample-corrected distance on Chu's scale: linear between anchors, with 0 -> 0 and 1 -> 1.

    Anchors must rise together on both scales (the same rank order), as Chu's Table 2 orders his
    (notebook 08_domain_distance).
    """
    points = sorted((a.corrected, a.chu_distance) for a in anchors)
    xs, ys = [0.0] + [p[0] for p in points] + [1.0], [0.0] + [p[1] for p in points] + [1.0]
    if any(b <= a for a, b in zip(xs, xs[1:])) or any(b <= a for a, b in zip(ys, ys[1:])):
        raise ValueError("anchors must be in the same order on Lite0's and Chu's scales, between 0 and 1")
    return float(np.interp(float(corrected), xs, ys))


def distance_level(distance: float) -> str:
    """``"low"`` (< 0.2), ``"medium"`` (< 0.4) or ``"high"``: Chu's bins, for a distance on his scale (08)."""
    d = float(distance)
    if math.isnan(d) or d < -1e-6:
        raise ValueError(f"a cosine distance from ImageNet lies in [0, 1]; got {distance!r}")
    return next(level for level, upper in DISTANCE_LEVELS if d < upper)


def measure_anchors(model: keras.Model | None = None, anchors: Sequence[Anchor] = ANCHORS,
                    **settings: Any) -> dict[str, DomainDistance]:
    """Measure every anchor again (first spec that loads; ``ANCHOR_SETTINGS`` unless overridden) and the
    ImageNet-like photos (``"photos"``); notebook 08. An anchor whose data is not here is skipped with a warning."""
    opts = {**ANCHOR_SETTINGS, **settings}
    model = model or backbones.load_backbone(opts["backbone"], input_size=opts["image_size"])
    out = {}
    for anchor in anchors:
        spec = next((s for s in anchor.specs if Path(s).exists()), anchor.specs[-1])
        try:
            out[anchor.name] = dataset_distance(spec, model, opts["backbone"], opts["image_size"],
                                                opts["per_class"], opts["seed"])
        except images.DatasetError as err:
            warnings.warn(f"anchor {anchor.name} not measured here ({err}); stored value {anchor.corrected} used")
    photos = imagenet_like_photos(opts["image_size"])
    feats = evaluation.predict(features.feature_extractor(model), photos, backbones.get_preprocess(opts["backbone"]))
    out["photos"] = measure_features(feats, model, opts["image_size"], opts["backbone"])
    return out


def calibration_table(measured: dict[str, DomainDistance] | None = None) -> list[dict[str, Any]]:
    """One row per anchor: dataset, Chu's look-alike and his distance, our raw and corrected distances,
    the calibrated distance, its level, and its level when the anchor itself is left out (is the rank
    placement robust without it?). ``measured`` (from :func:`measure_anchors`) replaces the stored
    values and adds the photos row; without it the stored :data:`ANCHORS` are used."""
    rows = []
    for anchor in ANCHORS:
        got = (measured or {}).get(anchor.name)
        corrected = got.corrected if got else anchor.corrected
        others = [a for a in ANCHORS if a is not anchor]
        rows.append({"dataset": anchor.name, "chu_dataset": anchor.chu_dataset, "chu_distance": anchor.chu_distance,
                     "raw": got.distance if got else None, "corrected": corrected,
                     "calibrated": calibrated_distance(corrected),
                     "level": distance_level(calibrated_distance(corrected)),
                     "level_without_it": distance_level(calibrated_distance(corrected, others)), "why": anchor.why})
    if measured and "photos" in measured:
        p = measured["photos"]
        rows.insert(0, {"dataset": "ImageNet-like photos", "chu_dataset": "Yosinski", "chu_distance": 0.003,
                        "raw": p.distance, "corrected": p.corrected, "calibrated": calibrated_distance(p.corrected),
                        "level": distance_level(calibrated_distance(p.corrected)),
                        "level_without_it": distance_level(calibrated_distance(p.corrected)),
                        "why": "checks the ImageNet-mean estimate: should be about 0"})
    return rows


def format_calibration(rows: Sequence[dict[str, Any]]) -> str:
    """The calibration table as text, with Chu's Table 2 beside it (notebook 08, the closing note)."""
    lines = ["Chu et al. (2016), Table 2 (CaffeNet fc7):  " + ", ".join(f"{r[0]} {r[1]:.3f}" for r in CHU_TABLE2),
             f"{'dataset':<22}{'Chu look-alike':<16}{'Chu':>7}{'raw':>8}{'corrected':>11}{'calibrated':>12}  "
             "level   (left out)"]
    for r in rows:
        raw = "-" if r["raw"] is None else f"{r['raw']:.3f}"
        lines.append(f"{r['dataset']:<22}{r['chu_dataset']:<16}{r['chu_distance']:>7.3f}{raw:>8}"
                     f"{r['corrected']:>11.3f}{r['calibrated']:>12.3f}  {r['level']:<7} ({r['level_without_it']})")
    return "\n".join(lines)
