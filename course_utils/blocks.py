"""Which block each layer of a backbone belongs to, from layer names: freeze "the last k blocks".

Explained in notebooks ``02_replace_softmax`` and ``04_freezing``. Every layer belongs to the block named by
the first matching rule on its name:

* EfficientNet (lite0 and Keras B0-B7): ``stem_*`` / ``rescaling*`` / ``normalization*`` /
  ``preprocessing`` -> ``stem``; ``block2a_*`` -> ``block2a``; ``top_*`` -> ``top``.
* ResNet (v1, v2): ``conv1_*`` and ``pool1_*`` -> ``conv1``; ``conv3_block2_*`` -> ``conv3_block2``;
  ``post_*`` -> ``top``.
* MobileNetV2: ``Conv1`` / ``bn_Conv1`` / ``Conv1_relu`` -> ``stem``; ``expanded_conv_*`` ->
  ``expanded_conv``; ``block_5_*`` -> ``block_5``; ``Conv_1*`` / ``out_relu`` -> ``top``.
* VGG: ``block3_*`` -> ``block3``; ``flatten`` / ``fc1`` / ``fc2`` -> ``fc``.
* The classifier head of every model (``avg_pool``, global pooling, dropout, ``predictions``) -> ``top``.

Block names are not always name prefixes (``avg_pool`` is in ``top``), so select layers with
``block_of(layer.name) == block``, not ``startswith``. :func:`layer_blocks` also covers models with
other naming (Inception, DenseNet...): a layer no rule knows joins the block of the layer before it
(``stem`` for leading layers). :data:`HEAD_NAME` names the new classifier of ``surgery.replace_head`` and
``small_cnn``.
"""

from __future__ import annotations

import re

from course_utils.quiet import keras

__all__ = ["HEAD_NAME", "block_names", "block_of", "feature_layer", "layer_blocks"]

HEAD_NAME = "head"


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
    (re.compile(r"^(stem_|rescaling|normalization|preprocessing$)"), "stem"),
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
    """The block a layer belongs to, from its name (rules in the module docstring; notebook ``04_freezing``).

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
        "MobileNetV2 and VGG names (see course_utils.blocks and notebook 02_replace_softmax)"
    )


def layer_blocks(model: keras.Model) -> dict[str, str]:
    """Block of every non-input layer, in model order (notebook ``04_freezing``).

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

