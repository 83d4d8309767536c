"""Small CNNs trained from scratch: the baseline that pretrained networks are compared with.

Explained in notebook ``01_why_finetune`` (Maybury 2015, Table 1: a network trained from scratch on a small
target set does far worse than a fine-tuned pretrained one). The model takes uint8-range RGB images and
scales them itself (a ``Rescaling`` layer), so give it raw images with no backbone preprocessing. Layers
are named like the other backbones' blocks (``block1_conv``, ..., ``avg_pool``, ``head``), so
``surgery.freeze`` and ``training.make_optimizer`` treat it like any backbone.
"""

from __future__ import annotations

from collections.abc import Sequence

from course_utils.blocks import HEAD_NAME
from course_utils.quiet import keras


def small_cnn(input_size: int, num_classes: int, widths: Sequence[int] = (16, 32, 64, 128),
              dropout: float = 0.3, seed: int = 0) -> keras.Model:
    """A small VGG-style CNN with random weights (about 100k parameters with the default widths).

    One block per entry of ``widths``: 3x3 convolution -> BatchNorm -> ReLU, then 2x2 max-pooling (not
    after the last block). The first convolution has stride 2, so the network stays cheap on a CPU at
    128-224 px. Then global average pooling, dropout and a ``num_classes``-way softmax named ``head``.
    Input: float or uint8 images with values 0..255, shape ``(input_size, input_size, 3)``.
    Notebook ``01_why_finetune`` trains it from scratch on the small target set.
    """
    if num_classes < 2:
        raise ValueError(f"A classifier needs at least 2 classes, got num_classes={num_classes}.")
    if not widths or any(int(w) < 1 for w in widths):
        raise ValueError(f"widths must be a non-empty list of positive integers, got {list(widths)}")
    if int(input_size) < 2 ** len(widths):
        raise ValueError(f"input_size {input_size} is too small for {len(widths)} blocks "
                         f"(each halves the resolution); use at least {2 ** len(widths)}.")
    inputs = keras.Input((int(input_size), int(input_size), 3), name="input_layer")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="rescaling")(inputs)
    for i, width in enumerate(widths, start=1):
        x = keras.layers.Conv2D(int(width), 3, strides=2 if i == 1 else 1, padding="same", use_bias=False,
                                kernel_initializer=keras.initializers.HeNormal(seed=seed + i),
                                name=f"block{i}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = keras.layers.ReLU(name=f"block{i}_relu")(x)
        if i < len(widths):
            x = keras.layers.MaxPooling2D(name=f"block{i}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, seed=seed, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name=HEAD_NAME,
                                 kernel_initializer=keras.initializers.GlorotUniform(seed=seed))(x)
    return keras.Model(inputs, outputs, name=f"small_cnn_{num_classes}way")
