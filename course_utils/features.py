"""Bottleneck features from a frozen network, cached on disk, and linear probes on them.

Explained in notebook ``05_bottleneck_features`` (F. Yu 2016: with few images per class, features of the
frozen network plus a linear SVM are a strong baseline; Pittaras et al. 2017: fusing several layers).
The cache key covers the backbone, its weights, the layer, the preprocessing, the image size and the exact
list of image ids, so a changed sample or layer never reuses stale features.
"""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

import numpy as np

from course_utils import backbones, evaluation
from course_utils import cache as array_cache
from course_utils.data import ImageSet
from course_utils.quiet import keras
from course_utils.settings import cache_dir


def feature_extractor(model: keras.Model, layers: Sequence[str] | str | None = None) -> keras.Model:
    """A model that outputs the pooled activations of ``layers`` (default: the penultimate pooled layer).

    Spatial (4-D) outputs are global-average-pooled; several layers are concatenated (Pittaras' fusion).
    """
    names = [layers] if isinstance(layers, str) else list(layers or [backbones.feature_layer(model)])
    outputs = []
    for name in names:
        out = model.get_layer(name).output
        if len(out.shape) == 4:
            out = keras.layers.GlobalAveragePooling2D(name=f"{name}_gap")(out)
        outputs.append(out)
    merged = outputs[0] if len(outputs) == 1 else keras.layers.Concatenate(name="fused")(outputs)
    return keras.Model(model.inputs, merged, name=f"{model.name}_features")


def cache_key(backbone: str, weights: str, layers: Sequence[str], image_size: int,
              ids: Sequence[str]) -> str:
    """A short hash of everything the features depend on."""
    blob = json.dumps({"backbone": backbone, "weights": weights, "layers": list(layers),
                       "preprocess": backbones.preprocessing_name(backbone), "size": image_size,
                       "ids": list(ids)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def extract_features(images: ImageSet, backbone: str = "efficientnet_lite0", layers: Sequence[str] | str | None = None,
                     weights: str = "imagenet", model: keras.Model | None = None, batch_size: int = 64,
                     cache: bool = True) -> np.ndarray:
    """Pooled features of every image, ``(N, D)`` float32, read from the on-disk cache when present.

    Pass ``model`` to reuse an already-loaded backbone; otherwise it is loaded with ``load_backbone``.
    The cache (``course_utils.cache``) verifies itself: a damaged or mismatched file is reported, deleted
    and computed again.
    """
    size = int(images.images.shape[1])
    layer_list = [layers] if isinstance(layers, str) else list(layers or [])

    def compute() -> np.ndarray:
        extractor = feature_extractor(model or backbones.load_backbone(backbone, weights=weights, input_size=size),
                                      layer_list or None)
        return evaluation.predict(extractor, images.images, backbones.get_preprocess(backbone), batch_size=batch_size)

    if not cache:
        return compute()
    key = cache_key(backbone, str(weights), layer_list or ["<penultimate>"], size, images.ids)
    return array_cache.cached(cache_dir("features") / f"{backbone}-{key}.npz", key, compute)


def make_probe(method: str = "logreg", C: float = 1.0, seed: int = 0, standardize: bool = False):
    """A scikit-learn classifier: ``LinearSVC`` (``svm``) or ``LogisticRegression`` (``logreg``).

    Pooled ReLU6 features already share one scale, so by default they go in raw; ``standardize=True`` puts
    a ``StandardScaler`` first (in our flowers runs it hurt by about one point: it amplifies noisy channels).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    if method == "svm":
        clf = LinearSVC(C=C, random_state=seed, max_iter=10000)
    elif method == "logreg":
        clf = LogisticRegression(C=C, max_iter=3000, random_state=seed)
    else:
        raise ValueError(f"method must be 'svm' or 'logreg', got {method!r}.")
    return make_pipeline(StandardScaler(), clf) if standardize else make_pipeline(clf)


def fit_probe(features: np.ndarray, labels: np.ndarray, method: str = "logreg", C: float | str = 1.0,
              seed: int = 0, standardize: bool = False):
    """Fit a linear probe on bottleneck features; returns the fitted scikit-learn pipeline.

    ``C=1.0`` is scikit-learn's default. ``C="cv"`` picks C from 0.01-10 by 3-fold cross-validation on the
    training features only (never on the test set); it costs about ten extra fits.
    """
    if len(np.unique(labels)) < 2:
        raise ValueError("A probe needs at least 2 classes in the training labels.")
    if C == "cv":
        C = choose_c(features, labels, method, seed, standardize)
    return make_probe(method, float(C), seed, standardize).fit(features, labels)


def choose_c(features: np.ndarray, labels: np.ndarray, method: str = "logreg", seed: int = 0,
             standardize: bool = False, grid: Sequence[float] = (0.01, 0.1, 1.0, 10.0)) -> float:
    """The C with the best 3-fold cross-validated accuracy on the training features."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    folds = min(3, int(np.bincount(labels).min()))
    if folds < 2:
        return 1.0
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = [cross_val_score(make_probe(method, c, seed, standardize), features, labels, cv=cv).mean()
              for c in grid]
    return float(grid[int(np.argmax(scores))])


def probe_sweep(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                test_labels: np.ndarray, per_class: Sequence[int], seeds: Sequence[int],
                methods: Sequence[str] = ("svm", "logreg"), C: float | str = 1.0,
                standardize: bool = False) -> dict[str, list[list[float]]]:
    """Test accuracy of linear probes (``fit_probe``) trained on ``n`` images per class, for each ``n`` in
    ``per_class`` and each seed (notebook ``05_bottleneck_features``: F. Yu's "with few images, a linear
    classifier on the features").

    The ``n`` images are ``data.stratified_sample(train_labels, n, seed)``, the same subsets
    ``training.per_class_finetune_sweep`` uses. Returns ``{method: accuracies}`` with ``accuracies[i][j]``
    for ``per_class[i]`` and ``seeds[j]``, the format of ``plots.sweep_curve``.
    """
    from threadpoolctl import threadpool_limits

    from course_utils.data import stratified_sample

    out: dict[str, list[list[float]]] = {m: [] for m in methods}
    # one BLAS thread: these fits are small, and BLAS threads competing with TensorFlow's make them far slower
    with threadpool_limits(1):
        for n in per_class:
            scores: dict[str, list[float]] = {m: [] for m in methods}
            for seed in seeds:
                idx = stratified_sample(train_labels, int(n), seed)
                for method in methods:
                    probe = fit_probe(train_features[idx], train_labels[idx], method, C=C, seed=seed,
                                      standardize=standardize)
                    scores[method].append(float(np.mean(probe.predict(test_features) == test_labels)))
            for method in methods:
                out[method].append(scores[method])
    return out
