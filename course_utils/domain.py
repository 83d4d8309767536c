"""How far a dataset is from ImageNet, and Chu et al.'s advice: freeze or fine-tune (notebooks
``08_domain_distance`` and ``09_capstone``).

Chu et al. (2016) choose how much of a pretrained network to fine-tune from two facts about the target
data: the number of training images per class and the *domain distance* from the source (ImageNet), the
cosine distance between the mean penultimate-layer features of source and target (their Table 2):

    distance = 1 - cos(mu_S, mu_T) = 1 - mu_S . mu_T / (|mu_S| |mu_T|)

where ``mu_T`` is the mean pooled penultimate feature vector of target images. The features come after a
ReLU, so they are non-negative, the cosine lies in [0, 1] and so does the distance (Chu's Table 3 bins:
low 0-0.2, medium 0.2-0.4, high 0.4-1).

**The source mean without ImageNet images.** The pooled penultimate layer of EfficientNet-Lite0 is
``avg_pool(relu6(top_bn(top_conv(x))))``. While it trained on ImageNet, ``top_bn`` recorded the mean and
variance of ``top_conv``'s output per channel, and it maps exactly those statistics to mean ``beta`` and
standard deviation ``|gamma| * sqrt(var / (var + eps))``. Modelling each channel over ImageNet images and
positions as ``N(beta, s^2)``, the ImageNet mean of the pooled feature (the spatial mean of the pooled
map equals the mean over positions, so pooling changes nothing) is, per channel, the closed form

    E[relu6(Y)] = h(beta, s, 0) - h(beta, s, 6),    h(m, s, a) = (m - a) Phi((m - a)/s) + s phi((m - a)/s)

(``E[max(Y - a, 0)]`` for ``Y ~ N(m, s^2)``; ``Phi``/``phi`` the normal CDF/PDF). Activations other than
(capped) ReLU use Gauss-Hermite quadrature instead. The normal model is the only approximation: on real
images, this formula applied to the images' own per-channel mean and standard deviation reproduces their
measured mean feature to a cosine distance below 0.01 (notebook ``08_domain_distance`` shows it).

**Cross-checks.** Two more measures, for the ordering only (they are on other scales):

- ``mmd``: the maximum mean discrepancy with a linear kernel, ``|mu_T - mu_S|``, relative to ``|mu_S|``.
  A linear kernel is the only one whose MMD needs nothing of the source but its mean; Gaussian-kernel MMD
  or a source-vs-target domain classifier would need ImageNet samples, which the network does not record.
- ``confidence``: the mean top-1 probability of the network's own ImageNet classifier on the target
  images (Hendrycks & Gimpel's maximum softmax probability): near domains get confident ImageNet
  predictions. It uses no BatchNorm statistics at all, so it checks the estimate independently.
  It depends on image size (smaller images give more confident predictions): compare at one size.

``recommend`` puts the distance and the images per class into Chu's Table 3 grid (``CHU_TABLE``) and
``verify`` trains both a frozen network and a fine-tuned one to see whether the advice held.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from course_utils import data

if TYPE_CHECKING:  # pragma: no cover - type hints only; keras is imported where it is used
    import keras

DEFAULT_BACKBONE = "efficientnet_lite0"
MEASURES = ("distance", "mmd", "confidence")
# Chu et al.'s Table 3 bins: distance low [0, 0.2), medium [0.2, 0.4), high [0.4, 1];
# images per class low 1-20, medium 21-99, high >= 100.
DISTANCE_LEVELS: tuple[tuple[str, float], ...] = (("low", 0.2), ("medium", 0.4), ("high", math.inf))
DATA_LEVELS: tuple[tuple[str, int], ...] = (("low", 20), ("medium", 99), ("high", 10**9))
LEVEL_RANGES = {"distance": {"low": "0-0.2", "medium": "0.2-0.4", "high": "0.4-1"},
                "data": {"low": "1-20", "medium": "21-99", "high": ">=100"}}
_HERMITE_NODES = 96


# ----------------------------------------------------------------------------------------------------
# The ImageNet mean feature, from the BatchNorm layer before the pooled features


def relu_gaussian_mean(mean: np.ndarray, std: np.ndarray, cap: float | None = 6.0) -> np.ndarray:
    """``E[min(max(Y, 0), cap)]`` for ``Y ~ N(mean, std^2)``, elementwise (closed form, 08_domain_distance).

    ``cap=6`` is ReLU6, ``cap=None`` a plain ReLU. Uses ``E[max(Y - a, 0)] = (m - a) Phi(z) + s phi(z)``,
    ``z = (m - a) / s``, and ``clip(Y, 0, cap) = max(Y, 0) - max(Y - cap, 0)``.
    """
    from scipy.stats import norm

    m = np.asarray(mean, dtype=np.float64)
    s = np.maximum(np.asarray(std, dtype=np.float64), 1e-12)

    def above(a: float) -> np.ndarray:
        z = (m - a) / s
        return (m - a) * norm.cdf(z) + s * norm.pdf(z)

    return above(0.0) - (above(float(cap)) if cap is not None else 0.0)


def gaussian_mean_through(activation: Any, mean: np.ndarray, std: np.ndarray,
                          nodes: int = _HERMITE_NODES) -> np.ndarray:
    """``E[activation(Y)]`` for ``Y ~ N(mean, std^2)`` per channel, by Gauss-Hermite quadrature.

    ``activation`` is any elementwise callable on arrays (a Keras activation layer, ``np.tanh``...).
    Used for backbones whose last activation is not a (capped) ReLU, e.g. swish in EfficientNetB0.
    """
    from course_utils.quiet import keras  # lazy: importing this module must not load TensorFlow

    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    values = np.asarray(mean, np.float64)[:, None] + np.asarray(std, np.float64)[:, None] * x[None, :]
    out = keras.ops.convert_to_numpy(activation(values.astype("float32"))).astype(np.float64)
    return out @ w / math.sqrt(2 * math.pi)


def _pool_activation_bn(model: "keras.Model") -> tuple[Any, Any]:
    """The activation and BatchNorm layers that feed the pooled feature layer: GAP(act(BN(.)))."""
    from course_utils.quiet import keras  # lazy: importing this module must not load TensorFlow

    from course_utils import backbones

    name = backbones.feature_layer(model)
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
    from course_utils.quiet import keras  # lazy: importing this module must not load TensorFlow

    var = getattr(layer, attr, None)
    if var is None:
        return np.full(int(layer.moving_mean.shape[0]), default)
    return keras.ops.convert_to_numpy(var).astype(np.float64)


def imagenet_mean_features(model: "keras.Model") -> np.ndarray:
    """The ImageNet mean of the pooled penultimate features, estimated from what the network recorded.

    ``top_bn`` turns ImageNet's recorded per-channel statistics into mean ``beta`` and standard deviation
    ``|gamma| sqrt(var / (var + eps))``; the mean after the activation follows in closed form for (capped)
    ReLU (:func:`relu_gaussian_mean`) and by quadrature otherwise (notebook ``08_domain_distance``).
    """
    from course_utils.quiet import keras  # lazy: importing this module must not load TensorFlow

    act, bn = _pool_activation_bn(model)
    var = _weight(bn, "moving_variance", 1.0)
    mean = _weight(bn, "beta", 0.0)
    std = np.abs(_weight(bn, "gamma", 1.0)) * np.sqrt(var / (var + bn.epsilon))
    plain_relu = isinstance(act, keras.layers.ReLU) and not act.negative_slope and not act.threshold
    if plain_relu:
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


def linear_mmd(source_mean: np.ndarray, target_mean: np.ndarray) -> float:
    """Linear-kernel MMD ``|mu_T - mu_S|`` relative to ``|mu_S|`` (scale-free; 0 for identical means)."""
    s, t = np.asarray(source_mean, np.float64), np.asarray(target_mean, np.float64)
    return float(np.linalg.norm(t - s) / np.linalg.norm(s))


@dataclass
class DomainDistance:
    """The distance of one sample of images from ImageNet, with the cross-check measures (08_domain_distance)."""

    distance: float      # Chu et al.: 1 - cos(mean ImageNet feature, mean target feature), in [0, 1]
    mmd: float           # linear-kernel MMD relative to the ImageNet mean's norm
    confidence: float    # mean top-1 ImageNet probability on the target images (high = near)
    n_images: int
    image_size: int
    backbone: str
    target_mean: np.ndarray = field(repr=False)

    def measures(self) -> dict[str, float]:
        """The three measures by name (``MEASURES``)."""
        return {name: float(getattr(self, name)) for name in MEASURES}


def _imagenet_probabilities(model: "keras.Model", feats: np.ndarray) -> np.ndarray:
    """ImageNet class probabilities from pooled features: the model's last (Dense, softmax) layer."""
    from course_utils.quiet import keras  # lazy: importing this module must not load TensorFlow
    from scipy.special import softmax

    head = model.layers[-1]
    if not isinstance(head, keras.layers.Dense):
        raise ValueError(f"{model.name!r} does not end in a Dense ImageNet classifier; load the full backbone")
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in (head.kernel, head.bias))
    return softmax(feats.astype(np.float64) @ kernel + bias, axis=1)


def measure_images(images: data.ImageSet, model: "keras.Model", backbone: str = DEFAULT_BACKBONE) -> DomainDistance:
    """Distance, MMD and ImageNet confidence of ``images`` from ImageNet (notebook ``08_domain_distance``).

    ``model`` is the full ImageNet classifier of ``backbone`` (``backbones.load_backbone``). Features go
    through ``features.extract_features``, so they are cached on disk like every bottleneck feature.
    """
    from course_utils import features

    if len(images) == 0:
        raise ValueError("no images to measure: the sample is empty")
    feats = features.extract_features(images, backbone, model=model)
    source, target = imagenet_mean_features(model), feats.mean(axis=0)
    probs = _imagenet_probabilities(model, feats)
    return DomainDistance(cosine_distance(source, target), linear_mmd(source, target),
                          float(probs.max(axis=1).mean()), len(images), int(images.images.shape[1]),
                          backbone, target)


def dataset_distance(spec: str, model: "keras.Model | None" = None, backbone: str = DEFAULT_BACKBONE,
                     image_size: int = 224, per_class: int | None = 20, seed: int = 0) -> DomainDistance:
    """:func:`measure_images` on ``per_class`` training images of each class of a dataset spec.

    Raises ``data.DatasetError`` (a ValueError) for a spec that cannot be loaded (notebook 08_domain_distance).
    """
    from course_utils import backbones

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


# ----------------------------------------------------------------------------------------------------
# Chu et al.'s Table 3


@dataclass(frozen=True)
class Advice:
    """One cell of the recommendation grid: what to train, and why (notebook ``08_domain_distance``).

    ``depth``: ``"none"`` (freeze the backbone, train the new head: Chu's F(1-7)), ``"top"`` (also
    fine-tune the top 2 blocks), ``"half"`` (the top half of the blocks) or ``"all"`` (every layer).
    """

    depth: str
    text: str

    @property
    def topology(self) -> str:
        """``"freeze"`` or ``"finetune"``."""
        return "freeze" if self.depth == "none" else "finetune"

    @property
    def short(self) -> str:
        """A few words for plots: "freeze", "fine-tune top 2", "fine-tune top half", "fine-tune all"."""
        return {"none": "freeze", "top": "fine-tune top 2", "half": "fine-tune top half",
                "all": "fine-tune all"}[self.depth]

    def train_last(self, n_blocks: int) -> int:
        """How many of the backbone's last blocks to train (``surgery.freeze(train_last=...)``)."""
        return {"none": 0, "top": min(2, n_blocks), "half": n_blocks // 2, "all": n_blocks}[self.depth]


_FREEZE_LOW = ("Freeze the pretrained network and train only the new softmax head (Chu's F(1-7)); "
               "with this few images per class, fine-tuning millions of weights overfits and gains nothing.")
CHU_TABLE: dict[tuple[str, str], Advice] = {
    # (distance level, data level) -> advice; the course's reading of Chu et al. (2016), Table 3:
    # copy every pretrained layer, fine-tune more of them the farther the domain and the more the data.
    ("low", "low"): Advice("none", _FREEZE_LOW),
    ("low", "medium"): Advice("none", "Freeze the network and train the new head: ImageNet features already "
                                      "fit a near domain; fine-tuning the top blocks gains little here."),
    ("low", "high"): Advice("top", "Fine-tune the top 2 blocks at a 10x lower learning rate than the new head; "
                                   "a near domain needs only the most specific features adapted."),
    ("medium", "low"): Advice("none", _FREEZE_LOW),
    ("medium", "medium"): Advice("top", "Fine-tune the top 2 blocks at a 10x lower learning rate than the new "
                                        "head, after training the head on frozen features."),
    ("medium", "high"): Advice("half", "Fine-tune the top half of the network at a 10x lower learning rate; "
                                       "enough data to adapt mid-level features to the new domain."),
    ("high", "low"): Advice("top", "Fine-tune the top 2 blocks at a 10x lower learning rate: frozen ImageNet "
                                   "features fit a far domain poorly, but too few images for deeper tuning."),
    ("high", "medium"): Advice("half", "Fine-tune the top half of the network at a 10x lower learning rate; "
                                       "a far domain needs its mid-level features adapted."),
    ("high", "high"): Advice("all", "Fine-tune every layer (keep the pretrained weights as the start; do not "
                                    "re-initialise), at a 10x lower rate for the pretrained layers."),
}


def distance_level(distance: float) -> str:
    """``"low"`` (< 0.2), ``"medium"`` (< 0.4) or ``"high"`` (Chu's Table 3 distance bins)."""
    d = float(distance)
    if math.isnan(d) or d < -1e-6:
        raise ValueError(f"a cosine distance from ImageNet lies in [0, 1]; got {distance!r}")
    return next(level for level, upper in DISTANCE_LEVELS if d < upper)


def data_level(images_per_class: int) -> str:
    """``"low"`` (1-20), ``"medium"`` (21-99) or ``"high"`` (>= 100 images per class; Chu's Table 3)."""
    if isinstance(images_per_class, bool) or int(images_per_class) != images_per_class or images_per_class < 1:
        raise ValueError(f"images per class must be a positive integer, got {images_per_class!r}")
    return next(level for level, upper in DATA_LEVELS if images_per_class <= upper)


def chu_cell(distance: float, images_per_class: int) -> tuple[str, str]:
    """(distance level, data level): the cell of Chu et al.'s Table 3 (notebook ``08_domain_distance``)."""
    return distance_level(distance), data_level(images_per_class)


def train_class_counts(spec: str, seed: int = 0, test_fraction: float = 0.2) -> dict[str, int]:
    """Images per class in the train split ``data.load_dataset`` would use, counted without decoding.

    A folder with ``train/`` (or a tfds dataset with a test split) counts its train part; otherwise the
    ``1 - test_fraction`` share that the seeded split keeps. Raises ``data.DatasetError`` for a bad spec.
    """
    # data has no public counting function yet; these two helpers list files/labels and decode nothing.
    source = data._open_source(str(spec), 8)
    labels = source.train.labels
    if source.test is None:
        labels = labels[data._split_indices(labels, test_fraction, seed)[0]]
    counts = np.bincount(labels, minlength=len(source.classes))
    return dict(zip(source.classes, (int(c) for c in counts)))


@dataclass
class Recommendation:
    """Images per class, distance, Chu's cell and the advice (``recommend``, notebooks 08 and 09)."""

    spec: str
    images_per_class: int
    distance: float
    distance_level: str
    data_level: str
    advice: str
    topology: str            # "freeze" or "finetune"
    method: str              # recipes.Recipe method that follows the advice: "head" or "finetune"
    unfreeze: int            # blocks to fine-tune (recipes.Recipe.unfreeze); 0 when frozen
    backbone: str
    measures: dict[str, float] = field(default_factory=dict)
    class_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the ``--json`` file of ``recommend``)."""
        return asdict(self)

    def describe(self) -> str:
        """The lines the command line prints."""
        counts = list(self.class_counts.values()) or [self.images_per_class]
        m = self.measures
        return "\n".join([
            f"data: {self.spec} ({len(counts)} classes)",
            f"images per class: {self.images_per_class} (the train split has {min(counts)}-{max(counts)}, "
            f"median {int(np.median(counts))})",
            f"distance from ImageNet: {self.distance:.3f} (Chu et al.: 1 - cosine of the mean penultimate "
            f"features, {m.get('n_images', '?')} images at {m.get('image_size', '?')} px, {self.backbone})",
            f"cross-checks: linear-kernel MMD {m.get('mmd', float('nan')):.2f} (relative), ImageNet "
            f"confidence {m.get('confidence', float('nan')):.2f} (mean top-1 probability; higher = nearer)",
            f"Chu's Table 3 cell: {self.distance_level} distance ({LEVEL_RANGES['distance'][self.distance_level]})"
            f" x {self.data_level} data ({LEVEL_RANGES['data'][self.data_level]} images per class)",
            f"advice: {self.advice}",
            f"recipe: python -m course_utils train --data {self.spec} --method {self.method}"
            + (f" --unfreeze {self.unfreeze}" if self.method == "finetune" else ""),
        ])


def advise(distance: float, images_per_class: int, n_blocks: int) -> tuple[str, str, Advice, int]:
    """(distance level, data level, advice, blocks to fine-tune) for a backbone with ``n_blocks`` blocks."""
    cell = chu_cell(distance, images_per_class)
    advice = CHU_TABLE[cell]
    return cell[0], cell[1], advice, advice.train_last(n_blocks)


def recommend(spec: str, per_class: int | None = None, backbone: str = DEFAULT_BACKBONE,
              image_size: int = 224, sample_per_class: int = 20, seed: int = 0,
              model: "keras.Model | None" = None) -> Recommendation:
    """Measure a dataset and look up Chu et al.'s advice (notebooks ``08_domain_distance``, ``09_capstone``).

    Images per class: the median over classes of the train split, or ``per_class`` when you plan to use
    fewer. The distance uses ``sample_per_class`` random training images per class at ``image_size``.
    """
    from course_utils import backbones

    if per_class is not None and (isinstance(per_class, bool) or int(per_class) != per_class or per_class < 1):
        raise ValueError(f"per_class must be a positive integer (images per class you will train on), "
                         f"got {per_class!r}")
    counts = train_class_counts(spec, seed=seed)
    n = int(np.median(list(counts.values())))
    n = min(n, int(per_class)) if per_class else n
    model = model or backbones.load_backbone(backbone, input_size=image_size)
    dist = dataset_distance(spec, model, backbone, image_size, sample_per_class, seed)
    d_level, n_level, advice, unfreeze = advise(dist.distance, n, len(backbones.block_names(model)))
    measures = {**dist.measures(), "n_images": dist.n_images, "image_size": dist.image_size}
    return Recommendation(str(spec), n, dist.distance, d_level, n_level, advice.text, advice.topology,
                          "head" if advice.topology == "freeze" else "finetune", unfreeze, backbone,
                          measures, counts)


# ----------------------------------------------------------------------------------------------------
# Checking the advice by experiment


@dataclass
class Verification:
    """Test accuracy of freeze (new head only) and fine-tune per seed, and whether the advice held."""

    recommended: str                 # "freeze" or "finetune"
    accuracy: dict[str, list[float]]  # {"freeze": [per seed], "finetune": [per seed]}
    n_test: int
    per_class: int
    image_size: int
    unfreeze: int
    seeds: list[int]
    steps: int | None = None          # training updates of each method (None: the recipes' default epochs)

    @property
    def noise(self) -> float:
        """What counts as no difference: one test image (1/n_test) or the mean std across seeds."""
        spread = float(np.mean([np.std(v) for v in self.accuracy.values()])) if len(self.seeds) > 1 else 0.0
        return max(1.0 / max(self.n_test, 1), spread)

    @property
    def verdict(self) -> str:
        """``"held"``, ``"within noise"`` or ``"did not hold"``."""
        other = "finetune" if self.recommended == "freeze" else "freeze"
        diff = float(np.mean(self.accuracy[self.recommended]) - np.mean(self.accuracy[other]))
        if abs(diff) <= self.noise:
            return "within noise"
        return "held" if diff > 0 else "did not hold"

    def describe(self) -> str:
        """One line per method, then the verdict."""
        budget = f"{self.steps} training steps each" if self.steps else "the recipes' default epochs"
        lines = [f"verify: {self.per_class} train images per class, {self.image_size} px, {budget}, "
                 f"{self.n_test} test images, seeds {self.seeds}"]
        for name, accs in self.accuracy.items():
            label = "freeze (new head only)" if name == "freeze" else f"fine-tune last {self.unfreeze} blocks"
            mark = "  <- recommended" if name == self.recommended else ""
            lines.append(f"  {label:<28} accuracy {np.mean(accs):.3f} +- {np.std(accs):.3f}{mark}")
        lines.append(f"the advice {self.verdict} (noise level {self.noise:.3f})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the verdict."""
        return {**asdict(self), "verdict": self.verdict, "noise": self.noise}


def verify(spec: str, recommendation: Recommendation, per_class: int | None = None, image_size: int = 128,
           seeds: Sequence[int] = (0, 1), test_per_class: int | None = 20, data_seed: int = 0,
           steps: int | None = 40) -> Verification:
    """Train freeze (``head``) and fine-tune (``finetune``) on the same small sample; compare test accuracy.

    ``per_class`` defaults to the recommendation's images per class. Both methods get the same ``steps``
    SGD updates (fine-tuning first fits the head on frozen features, as ``recipes.run`` does); fine-tuning
    trains the recommended number of blocks, or the top 2 when the advice is to freeze. Every seed uses the
    same images (a paired comparison); seeds change the initialisation and the batch order (notebook
    ``08_domain_distance``).
    """
    from course_utils import recipes

    per_class = int(per_class or recommendation.images_per_class)
    split = data.load_dataset(spec, image_size=image_size, per_class=per_class, seed=data_seed,
                              test_per_class=test_per_class)
    unfreeze = recommendation.unfreeze or 2
    accuracy: dict[str, list[float]] = {"freeze": [], "finetune": []}
    for seed in seeds:
        for name, method in (("freeze", "head"), ("finetune", "finetune")):
            recipe = recipes.Recipe(method=method, backbone=recommendation.backbone, unfreeze=unfreeze,
                                    steps=steps, seed=int(seed))
            report = recipes.run(split, recipe)[1]
            accuracy[name].append(float("nan") if report["accuracy"] is None else report["accuracy"])  # diverged
    return Verification(recommendation.topology, accuracy, len(split.test), per_class, image_size, unfreeze,
                        [int(s) for s in seeds], steps)
