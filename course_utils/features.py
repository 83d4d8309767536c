"""Bottleneck features from a frozen network, cached on disk, and linear probes on them.

Explained in notebook ``05_bottleneck_features`` (F. Yu 2016: with few images per class, features of the
frozen network plus a linear SVM are a strong baseline; Pittaras et al. 2017: fusing several layers).
Features come from the one ``activations.ActivationCache``, whose key covers the backbone, its weights, the
layer, the preprocessing, the image size and the exact list of image ids.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from course_utils import backbones
from course_utils.activations import POOLED, ActivationCache, boundary_output
from course_utils.blocks import feature_layer
from course_utils.data import ImageSet, stratified_sample
from course_utils.quiet import keras


def feature_extractor(model: keras.Model, layers: Sequence[str] | str | None = None) -> keras.Model:
    """A model that outputs the pooled activations of ``layers`` (default: the penultimate pooled layer),
    notebook ``05_bottleneck_features``. Spatial (4-D) outputs are global-average-pooled; several layers
    are concatenated (Pittaras' fusion)."""
    names = [layers] if isinstance(layers, str) else list(layers or [feature_layer(model)])
    outputs = [boundary_output(model, f"{POOLED}{name}") for name in names]
    merged = outputs[0] if len(outputs) == 1 else keras.layers.Concatenate(name="fused")(outputs)
    return keras.Model(model.inputs, merged, name=f"{model.name}_features")


def extract_features(images: ImageSet, backbone: str = "efficientnet_lite0", layers: Sequence[str] | str | None = None,
                     weights: str = "imagenet", model: keras.Model | None = None,
                     cache: bool = True) -> np.ndarray:
    """Pooled features of every image, ``(N, D)`` float32 (notebook ``05_bottleneck_features``).

    ``layers`` (default: the pooled penultimate layer) are global-average-pooled when spatial and
    concatenated (Pittaras' fusion). Pass ``model`` to reuse an already-loaded backbone. They come from the
    one :class:`activations.ActivationCache` (on disk when ``cache``): the penultimate features are the
    same entry the Runner's frozen-head runs use, so they are computed and stored once.
    """
    size = int(images.images.shape[1])
    model = model or backbones.load_backbone(backbone, weights=weights, input_size=size)
    store = ActivationCache(model, backbones.get_preprocess(backbone), backbone, str(weights), size, disk=cache)
    names = [layers] if isinstance(layers, str) else list(layers or [])
    boundaries = store.register(*(f"{POOLED}{name}" for name in names)) if names else [feature_layer(model)]
    parts = [store.get(images, b) for b in boundaries]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def make_probe(method: str = "logreg", C: float = 1.0, seed: int = 0, standardize: bool = False):
    """A scikit-learn classifier: ``LinearSVC`` (``svm``) or ``LogisticRegression`` (``logreg``).

    Pooled ReLU6 features already share one scale, so by default they go in raw; ``standardize=True`` puts
    a ``StandardScaler`` first (in our flowers runs it hurt by about one point: it amplifies noisy channels).
    """
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
    ``studies.per_class_finetune_sweep`` uses. Returns ``{method: accuracies}`` with ``accuracies[i][j]``
    for ``per_class[i]`` and ``seeds[j]``, the format of ``plots.sweep_curve``.
    """
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


# --------------------------------------------------------------------------------------------------
# Pittaras et al. 2017: late fusion of per-layer classifiers (notebook 05_bottleneck_features)

PITTARAS_LAYERS = ("block7a_project_bn", "avg_pool", "head")  # the last three layers of a replace_head model


def layer_features(images: ImageSet, model: keras.Model, preprocess, layers: Sequence[str],
                   name: str = "", cache: bool = False) -> list[np.ndarray]:
    """Each layer's pooled output for every image, one ``(N, D_layer)`` array per layer, from ONE forward
    pass of ``model`` (any model, e.g. a fine-tuned one) through an :class:`activations.ActivationCache`
    (notebook ``05_bottleneck_features``). Unlike ``extract_features`` the layers stay separate, for
    :func:`late_fusion_probe`. ``cache=True`` also stores them on disk, keyed by the weights' fingerprint."""
    if not layers:
        raise ValueError("name at least one layer, e.g. features.PITTARAS_LAYERS")
    size = int(images.images.shape[1])
    store = ActivationCache(model, preprocess, name or model.name, "", size, disk=cache)
    boundaries = store.register(*(f"{POOLED}{layer}" for layer in layers))
    return [store.get(images, b) for b in boundaries]


def late_fusion_probe(train_parts: Sequence[np.ndarray], train_labels: np.ndarray,
                      test_parts: Sequence[np.ndarray], C: float | str = 1.0, seed: int = 0,
                      standardize: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
    """Pittaras et al.'s late fusion (notebook ``05_bottleneck_features``): one ``LogisticRegression``
    (``fit_probe``) per layer, each on its own layer's features, and the arithmetic mean of their predicted
    probabilities. Returns ``(fused, per_layer)``: ``(n_test, n_classes)`` probabilities, and each layer's
    own. Early fusion (``extract_features(..., layers=[...])``, concatenated features) is the other way."""
    if not train_parts or len(train_parts) != len(test_parts):
        raise ValueError(f"give one train and one test array per layer; got {len(train_parts)} train and "
                         f"{len(test_parts)} test arrays")
    with threadpool_limits(1):  # small fits: one BLAS thread, as in probe_sweep
        per_layer = [fit_probe(tr, train_labels, "logreg", C=C, seed=seed, standardize=standardize).predict_proba(te)
                     for tr, te in zip(train_parts, test_parts)]
    return np.mean(per_layer, axis=0), per_layer
