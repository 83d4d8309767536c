"""The one forward pass: a model's outputs for a whole array, batch by batch (notebook ``02_replace_softmax``).

Every prediction in the course goes through :func:`predict`: ImageNet top-K, class probabilities, bottleneck
features, cached activations. It calls the model directly in inference mode (``model(x, training=False)``),
so nothing is compiled per model: no ``tf.function`` is traced again for every new model or for a last,
smaller batch, and the outputs equal ``model.predict``'s to float32 round-off.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

if TYPE_CHECKING:  # type hints only: importing this module must not load TensorFlow
    import keras

Preprocess = Callable[[np.ndarray], Any]


def _outputs(model: keras.Model, batch: np.ndarray) -> list[np.ndarray]:
    from course_utils.quiet import keras  # lazy: importing this module must not load TensorFlow

    with warnings.catch_warnings():  # models built from `backbone.inputs` (a list) warn on a tensor
        warnings.filterwarnings("ignore", message="The structure of `inputs`")
        out = model(batch, training=False)
    out = out if isinstance(out, (list, tuple)) else [out]
    return [keras.ops.convert_to_numpy(o) for o in out]


def predict_all(model: keras.Model, x: np.ndarray, preprocess: Preprocess | None = None,
                batch_size: int = 64) -> list[np.ndarray]:
    """Every output of ``model`` for ``x`` in inference mode, as a list of float32 arrays (see :func:`predict`)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    x = np.asarray(x)
    parts = []
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        if preprocess is not None:
            batch = np.asarray(preprocess(batch.astype("float32")), dtype="float32")
        parts.append(_outputs(model, batch))
    if not parts:  # no images: empty outputs of the right shapes
        return [np.zeros((0,) + tuple(o.shape[1:]), dtype="float32") for o in model.outputs]
    return [np.concatenate(p).astype("float32") for p in zip(*parts)]


def predict(model: keras.Model, x: np.ndarray, preprocess: Preprocess | None = None,
            batch_size: int = 64) -> np.ndarray | list[np.ndarray]:
    """``model``'s outputs for ``x`` in inference mode, as float32 (a list when the model has several outputs).

    ``preprocess`` (e.g. ``backbones.get_preprocess(name)``) is applied per batch to uint8 images; leave it
    None when ``x`` is already the model's input (preprocessed images, or cached activations).
    """
    outputs = predict_all(model, x, preprocess, batch_size)
    return outputs if len(outputs) > 1 else outputs[0]


def format_report(report: dict) -> str:
    """Accuracy, per-class accuracy and the confusion matrix as text; a diverged run says so instead."""
    if report.get("diverged"):
        return f"{report['reason']} (so there is no test accuracy)"
    classes = report["classes"]
    width = max(len(c) for c in classes)
    lines = [f"test accuracy: {report['accuracy']:.3f}  ({report['n_test']} test images, "
             f"{report.get('n_train', '?')} train, {report.get('seconds', '?')} s)", "per-class accuracy:"]
    lines += [f"  {c:<{width}}  {acc:.3f}" for c, acc in report["per_class_accuracy"].items()]
    lines.append("confusion matrix (rows: true, columns: predicted):")
    lines.append("  " + " " * width + "  " + " ".join(f"{c[:5]:>5}" for c in classes))
    lines += [f"  {c:<{width}}  " + " ".join(f"{v:>5}" for v in row)
              for c, row in zip(classes, report["confusion_matrix"])]
    return "\n".join(lines)


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, per-class accuracy (recall) and the confusion matrix (rows: true class), as plain Python
    for JSON (notebook ``02_replace_softmax``)."""
    y_true, y_pred, n = np.asarray(y_true, int), np.asarray(y_pred, int), len(classes)
    cm = np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)
    totals = cm.sum(axis=1)
    per_class = {c: (float(cm[i, i] / totals[i]) if totals[i] else float("nan")) for i, c in enumerate(classes)}
    return {"accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else float("nan"),
            "per_class_accuracy": per_class, "confusion_matrix": cm.tolist(),
            "classes": list(classes), "n_test": int(len(y_true))}


def evaluate(model: keras.Model, test_set: Any, preprocess: Preprocess | None, batch_size: int = 64) -> dict:
    """``classification_report`` of ``model`` on an ``ImageSet`` (notebook ``01_why_finetune``);
    :class:`DivergedError` when its outputs are not finite (a diverged model has no accuracy)."""
    probs = predict(model, test_set.images, preprocess, batch_size)
    check_finite(probs, "the model's outputs on the test images")
    return classification_report(test_set.labels, probs.argmax(axis=1), test_set.classes)


def validation_metrics(model: keras.Model, x: np.ndarray, labels: np.ndarray,
                       preprocess: Preprocess | None = None) -> dict[str, float]:
    """``val_loss`` (sparse categorical cross-entropy, clipped as Keras does) and ``val_accuracy`` of
    ``model`` on held-out data, for learning curves (notebooks ``01_why_finetune``, ``04_freezing``)."""
    probs = predict(model, x, preprocess)
    labels = np.asarray(labels, int)
    picked = np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0)
    return {"val_loss": float(-np.mean(np.log(picked))), "val_accuracy": float(np.mean(probs.argmax(axis=1) == labels))}


class DivergedError(ValueError):
    """Training diverged: the loss or the outputs became NaN or infinite (notebook ``03_learning_rate``)."""


def check_finite(values: Any, what: str) -> None:
    """Raise :class:`DivergedError` naming ``what`` and where it first stopped being finite (notebook
    ``03_learning_rate``). ``values``: losses (a list) or an output array."""
    array = np.asarray(values, dtype="float64").ravel()
    bad = np.flatnonzero(~np.isfinite(array))
    if len(bad):
        where = f" (at {bad[0] + 1} of {len(array)})" if np.ndim(values) == 1 and len(array) > 1 else ""
        raise DivergedError(f"training diverged: {what} became {array[bad[0]]}{where}; "
                            "lower the learning rate (e.g. 10x)")


def diverged_report(classes: Sequence[str], n_test: int, reason: str) -> dict:
    """The report of a diverged run: ``diverged`` true and no accuracy (None, so it stays strict JSON)."""
    return {"diverged": True, "reason": str(reason), "accuracy": None, "per_class_accuracy": None,
            "confusion_matrix": None, "classes": list(classes), "n_test": int(n_test)}


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, standard deviation (population, as the plots draw it) and count (notebook ``07_experiments``)."""
    arr = np.asarray(list(values), dtype=float)
    if not len(arr):
        return float("nan"), float("nan"), 0
    return float(arr.mean()), float(arr.std()), int(len(arr))


# ----------------------------------------------------------------------------------------------------
# The one noise rule (issue 10; owner H4): a paired comparison of two methods on the same test images.
# Every "A beats B" in the course (notebooks, findings, `advice.verify`, plots) is decided here.

NOISE_RULE = ("paired comparison on the same test images: exact McNemar test (one seed) or paired bootstrap "
              "over images and seeds (several seeds); a difference counts when p < alpha")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The verdict of :func:`compare`: accuracies, their paired difference with a CI, p-value and verdict."""

    names: tuple[str, str]
    acc_a: float
    acc_b: float
    diff: float          # acc_a - acc_b, averaged over seeds
    ci_low: float        # (1 - alpha) bootstrap confidence interval of diff
    ci_high: float
    p_value: float       # exact McNemar (one seed) or two-sided paired bootstrap (several seeds)
    n_images: int
    n_seeds: int
    test: str            # "exact McNemar" or "paired bootstrap"
    alpha: float
    verdict: str         # "<A> better", "<B> better" or "within noise"

    @property
    def significant(self) -> bool:
        """True when the verdict is not "within noise"."""
        return self.verdict != "within noise"

    def __str__(self) -> str:
        a, b = self.names
        return (f"{a} {self.acc_a:.3f} vs {b} {self.acc_b:.3f}: diff {self.diff:+.3f} "
                f"[{1 - self.alpha:.0%} CI {self.ci_low:+.3f}, {self.ci_high:+.3f}], p = {self.p_value:.3g} "
                f"({self.test}, {self.n_images} images x {self.n_seeds} seeds) -> {self.verdict}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, with the rule's one-line result as ``"text"``."""
        return {**dataclasses.asdict(self), "names": list(self.names), "text": str(self)}


def _as_correct(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0 or arr.shape[0] == 0:
        raise ValueError(f"{name}: give per-image correctness of shape (n_images,) or (n_seeds, n_images), "
                         f"got shape {arr.shape}")
    if not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name}: per-image correctness must be 0/1 or True/False, e.g. predictions == labels")
    return arr.astype(np.int8)


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value from the discordant pairs (images only A / only B gets right)."""
    n = int(only_a) + int(only_b)
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * stats.binom.cdf(min(only_a, only_b), n, 0.5)))


def _bootstrap_diffs(d: np.ndarray, n_boot: int, seed: int, chunk: int = 500) -> np.ndarray:
    """Mean paired difference after resampling images and (when there are several) seeds with replacement."""
    rng = np.random.default_rng(seed)
    n_seeds, n_images = d.shape
    out = []
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        rows = rng.integers(0, n_seeds, (size, n_seeds)) if n_seeds > 1 else np.zeros((size, 1), int)
        per_seed = d[:, rng.integers(0, n_images, (size, n_images))].mean(axis=2)  # (n_seeds, size)
        out.append(np.take_along_axis(per_seed.T, rows, axis=1).mean(axis=1))
    return np.concatenate(out)


def compare(correct_a: Any, correct_b: Any, names: tuple[str, str] = ("A", "B"), alpha: float = 0.05,
            n_boot: int = 10_000, seed: int = 0) -> Comparison:
    """THE noise rule: is A's accuracy different from B's on the same test images? (notebook 08_domain_distance)

    ``correct_a``/``correct_b``: per-image correctness (``predictions == labels``), shape ``(n_images,)``
    or ``(n_seeds, n_images)``; image j is the same test image in both, and seed i of A is paired with
    seed i of B. One seed: exact McNemar test on the discordant images. Several seeds: paired bootstrap
    over images and seeds (so the seed-to-seed spread counts too). The CI is always the paired bootstrap's.
    Deterministic for a given ``seed``.
    """
    a, b = _as_correct(correct_a, names[0]), _as_correct(correct_b, names[1])
    if a.shape != b.shape:
        raise ValueError(f"compare needs paired results on the same test images and seeds: {names[0]} has "
                         f"shape {a.shape}, {names[1]} {b.shape}. Evaluate both on the same test split.")
    if not 0 < alpha < 1 or n_boot < 100:
        raise ValueError(f"need 0 < alpha < 1 and n_boot >= 100, got alpha={alpha}, n_boot={n_boot}")
    d = a - b
    diff = float(d.mean())
    boot = _bootstrap_diffs(d, n_boot, seed)
    low, high = (float(q) for q in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
    if a.shape[0] == 1:
        test, p = "exact McNemar", mcnemar_p(int((d > 0).sum()), int((d < 0).sum()))
    else:
        tail = min(int((boot <= 0).sum()), int((boot >= 0).sum()))
        test, p = "paired bootstrap", float(min(1.0, 2 * (tail + 1) / (n_boot + 1)))
    verdict = "within noise" if p >= alpha or diff == 0 else f"{names[0] if diff > 0 else names[1]} better"
    return Comparison(tuple(names), float(a.mean()), float(b.mean()), diff, low, high, p, a.shape[1],
                      a.shape[0], test, alpha, verdict)
