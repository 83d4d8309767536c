"""Tiny models and data shared by the Runner/study tests (not a test module): a 5-block CNN backbone
(``small_cnn``: stem, block1-3, top) and an easy synthetic split with a validation part."""

from __future__ import annotations

import numpy as np

from course_utils.data import ImageSet, Split
from course_utils.quiet import keras
from course_utils.small_cnn import small_cnn

SIZE = 16


def identity(x: np.ndarray) -> np.ndarray:
    """The preprocess of the tiny backbone: it rescales inside the model."""
    return x


def tiny_backbone(seed: int = 0) -> keras.Model:
    """``small_cnn`` without its head: input -> avg_pool; blocks stem, block1, block2, block3, top."""
    model = small_cnn(SIZE, 2, widths=(4, 6, 8), dropout=0.0, seed=seed)
    return keras.Model(model.inputs, model.get_layer("avg_pool").output, name=f"tiny{seed}")


def image_set(n_per_class: int, tag: str, classes: int = 3, seed: int = 0) -> ImageSet:
    """Classes differ by brightness of one channel, plus noise: learnable in a few steps."""
    rng = np.random.default_rng([seed, len(tag)])
    labels = np.repeat(np.arange(classes), n_per_class)
    images = rng.normal(80, 20, (len(labels), SIZE, SIZE, 3))
    images[np.arange(len(labels)), :, :, labels % 3] += 120
    return ImageSet(np.clip(images, 0, 255).astype("uint8"), labels.astype("int64"),
                    [f"c{i}" for i in range(classes)], [f"{tag}{i}" for i in range(len(labels))])


def easy_split(n_train: int = 6, n_test: int = 4, n_val: int = 2, classes: int = 3) -> Split:
    """Train/test/val ImageSets of the same easy task, with distinct ids."""
    val = image_set(n_val, "val", classes) if n_val else None
    return Split(image_set(n_train, "train", classes), image_set(n_test, "test", classes), "synthetic", [], val)
