"""The one forward pass: a model's outputs for a whole array, batch by batch (notebook ``02_replace_softmax``).

Every prediction in the course goes through :func:`predict`: ImageNet top-K, class probabilities, bottleneck
features, cached activations. It calls the model directly in inference mode (``model(x, training=False)``),
so nothing is compiled per model: no ``tf.function`` is traced again for every new model or for a last,
smaller batch, and the outputs equal ``model.predict``'s to float32 round-off.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

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
