"""Input pipelines: batches of (float32 preprocessed images, int64 labels) for ``fit`` and ``predict``, and
THE one augmentation (notebook ``02_replace_softmax``).

The course's only augmentation is defined once, as standard Keras preprocessing layers:
``augmentation_layers()`` is ``keras.Sequential([RandomFlip("horizontal"), RandomRotation, RandomZoom])``, the
block a plain-Keras model puts inside itself (notebook ``04_freezing``). ``augment(batch, seed)`` applies exactly
those layers to a numpy batch, seeded and deterministic; ``make_tf_dataset`` (tf.data), ``ArrayBatches`` (any
Keras backend) and the runner's image path all call it, so ``augment=True`` means the same everywhere.
``make_batches`` picks tf.data when TensorFlow is installed. TensorFlow and Keras are imported lazily (by the
functions that need them): importing this module imports neither.
"""

from __future__ import annotations

import importlib.util
import math
from functools import lru_cache
from typing import Any, Callable, Sequence

import numpy as np

from course_utils.images import DatasetError, check_count

ROTATION = 0.05  # RandomRotation factor: a random turn of up to 5 % of a full circle (18 degrees) either way
ZOOM = 0.15  # RandomZoom: zoom in by up to 15 % (shows 85-100 % of the side), never out (no filled border)
CACHE_MAX_BYTES = 2**30  # make_tf_dataset caches preprocessed float32 batches only up to this size


def _seed_entropy(seed: Sequence[int] | int) -> list[int]:
    """Non-negative ints for ``np.random.default_rng`` from any int seed(s) (tf.data's may be negative)."""
    values = [seed] if isinstance(seed, (int, np.integer)) else list(np.asarray(seed).ravel())
    return [int(v) % 2**64 for v in values]


def augmentation_seed(seed: Sequence[int] | int) -> int:
    """The ``augmentation_layers`` seed that ``augment(batch, seed)`` uses: one int below 2**31 drawn from
    ``seed`` (one int or several, e.g. (seed, epoch, batch index)) (notebook ``04_freezing``)."""
    return int(np.random.default_rng(_seed_entropy(seed)).integers(0, 2**31 - 3))


def augmentation_layers(seed: int | None = None) -> Any:
    """THE augmentation as standard Keras preprocessing layers (notebook ``04_freezing``):
    ``keras.Sequential([RandomFlip("horizontal"), RandomRotation(ROTATION), RandomZoom((-ZOOM, 0))])``.

    Put it inside a model (``x = augmentation_layers()(inputs)``): it acts only in ``fit`` (``training=True``)
    and passes images through unchanged in ``predict``/``evaluate``, and a saved model needs nothing but Keras.
    Images in 0-255 (before the backbone's preprocessing). ``seed``: the first layer's seed (the next two
    get ``seed + 1``, ``seed + 2``); a model's layers draw new transformations at every call.
    """
    from course_utils.quiet import keras  # lazy: importing pipelines must not load Keras/TensorFlow

    def layer_seed(offset: int) -> int | None:
        return None if seed is None else int(seed) + offset

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=layer_seed(0)),
        keras.layers.RandomRotation(ROTATION, fill_mode="reflect", seed=layer_seed(1)),
        keras.layers.RandomZoom((-ZOOM, 0.0), fill_mode="reflect", seed=layer_seed(2)),
    ], name="augmentation")


def augment(batch: np.ndarray, seed: Sequence[int] | int) -> np.ndarray:
    """THE augmentation applied to a numpy batch (notebook ``04_freezing``): float32, same shape, the same
    result for the same batch and seed. It is ``augmentation_layers(augmentation_seed(seed))`` called once
    with ``training=True``: per image a random horizontal flip (probability 1/2), a random rotation of up to
    ROTATION x 360 degrees (reflected border) and a random zoom-in of up to ZOOM. ``batch``: (N, H, W, C)
    values 0-255 (uint8 or float); ``seed``: one int or a sequence of ints (e.g. (seed, epoch, batch index)).
    The tf.data and PyDataset pipelines and the Runner's image path all call this function.
    """
    batch = np.asarray(batch, dtype=np.float32)
    if batch.ndim != 4:
        raise ValueError(f"augment takes a batch shaped (N, H, W, C), got shape {batch.shape}")
    layers = augmentation_layers(augmentation_seed(seed))  # fresh layers: their seed generators start at the seed
    return np.asarray(layers(batch, training=True), dtype=np.float32)


def _check_arrays(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DatasetError(f"images must be an (N, H, W, 3) array, got shape {images.shape}")
    if len(images) != len(labels):
        raise DatasetError(f"{len(images)} images but {len(labels)} labels; they must match")
    check_count("batch_size", batch_size)
    return images, labels


def _tf_preprocess(preprocess_fn: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    """preprocess_fn on float32 batch tensors; numpy-only functions run through tf.numpy_function."""
    from course_utils.quiet import tensorflow as tf  # lazy: only this path needs TensorFlow

    if preprocess_fn is None:
        return lambda x: x

    def apply(x: Any) -> Any:
        try:
            return tf.cast(preprocess_fn(x), tf.float32)
        except Exception:  # noqa: BLE001 - e.g. numpy code that cannot take a symbolic tensor
            y = tf.numpy_function(lambda a: np.asarray(preprocess_fn(a), dtype=np.float32), [x], tf.float32)
            y.set_shape(x.shape)
            return y

    return apply


def _tf_augment(images: Any, seed: Any) -> Any:
    """``augment`` inside a tf.data map, through ``tf.numpy_function``: the same numpy code as every pipeline."""
    from course_utils.quiet import tensorflow as tf  # lazy: only this path needs TensorFlow

    out = tf.numpy_function(augment, [images, seed], tf.float32, stateful=False)
    out.set_shape(images.shape)
    return out


def make_tf_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    preprocess_fn: Callable[[Any], Any] | None = None,
    batch_size: int = 32,
    shuffle: bool = False,
    augment: bool = False,
    seed: int = 0,
    cache: bool = True,
) -> Any:
    """tf.data pipeline of (float32 preprocessed images, int64 labels) batches (notebook 02_replace_softmax).

    preprocess_fn (the backbone's preprocessing) gets float32 (B, H, W, 3) batches with values 0-255.
    shuffle reshuffles every epoch with the seed; augment applies ``augment`` (a random flip, rotation and
    zoom per image) with a seeded, different seed for every batch of every epoch. cache keeps the preprocessed batches after the first
    epoch, for deterministic pipelines only (no shuffle, no augment: evaluation), since caching a shuffled
    stream would freeze its order, and only when they fit in CACHE_MAX_BYTES (float32 takes 4 bytes per
    pixel; the uint8 images are in memory anyway). Prefetches with AUTOTUNE.
    """
    from course_utils.quiet import tensorflow as tf  # lazy: only this path needs TensorFlow

    images, labels = _check_arrays(images, labels, batch_size)
    preprocess = _tf_preprocess(preprocess_fn)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    # no AutoGraph: these functions (and preprocess_fn) have no Python control flow on tensors
    @tf.autograph.experimental.do_not_convert
    def plain(x: Any, y: Any) -> tuple[Any, Any]:
        return preprocess(tf.cast(x, tf.float32)), y

    @tf.autograph.experimental.do_not_convert
    def augmented(batch: tuple[Any, Any], batch_seed: Any) -> tuple[Any, Any]:
        return preprocess(_tf_augment(tf.cast(batch[0], tf.float32), batch_seed)), batch[1]

    if augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(augmented, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        dataset = dataset.map(plain, num_parallel_calls=tf.data.AUTOTUNE)
        if cache and not shuffle and images.size * 4 <= CACHE_MAX_BYTES:
            dataset = dataset.cache()
    return dataset.prefetch(tf.data.AUTOTUNE)


@lru_cache(maxsize=None)
def _array_batches_class() -> type:
    """Build ArrayBatches on first use, so that importing this module does not import Keras."""
    from course_utils.quiet import keras  # lazy: importing this module must not load TensorFlow

    class ArrayBatches(keras.utils.PyDataset):
        """Batches from numpy arrays, for any Keras backend (no TensorFlow) (notebook 02_replace_softmax).

        Yields (float32 preprocessed images, int64 labels). shuffle: a new seeded order every epoch;
        augment: ``augment`` on every batch, seeded by (seed, epoch, batch index), as in make_tf_dataset.
        Extra keyword arguments (workers, use_multiprocessing, max_queue_size) go to PyDataset.
        """

        def __init__(self, images: np.ndarray, labels: np.ndarray, preprocess_fn: Callable[[Any], Any] | None = None,
                     batch_size: int = 32, shuffle: bool = False, augment: bool = False, seed: int = 0,
                     **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.images, self.labels = _check_arrays(images, labels, batch_size)
            self.preprocess_fn, self.batch_size = preprocess_fn, int(batch_size)
            self.shuffle, self.augment, self.seed = shuffle, augment, int(seed)
            self.epoch = 0
            self.order = self._epoch_order()

        def _epoch_order(self) -> np.ndarray:
            if not self.shuffle:
                return np.arange(len(self.labels))
            return np.random.default_rng([self.seed, 2, self.epoch]).permutation(len(self.labels))

        def __len__(self) -> int:
            return math.ceil(len(self.labels) / self.batch_size)

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            if index < 0:
                index += len(self)
            if not 0 <= index < len(self):
                raise IndexError(f"batch {index} out of range ({len(self)} batches)")
            idx = self.order[index * self.batch_size : (index + 1) * self.batch_size]
            x = self.images[idx].astype(np.float32)
            if self.augment:
                x = augment(x, (self.seed, 3, self.epoch, index))
            if self.preprocess_fn is not None:
                x = np.asarray(self.preprocess_fn(x), dtype=np.float32)
            return x, self.labels[idx]

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self.order = self._epoch_order()

    ArrayBatches.__module__ = __name__
    ArrayBatches.__qualname__ = "ArrayBatches"
    return ArrayBatches


def __getattr__(name: str) -> Any:
    """``pipelines.ArrayBatches``, built on first access (it subclasses a Keras class)."""
    if name == "ArrayBatches":
        return _array_batches_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_batches(images: np.ndarray, labels: np.ndarray, preprocess_fn: Callable[[Any], Any] | None = None,
                 batch_size: int = 32, shuffle: bool = False, augment: bool = False, seed: int = 0,
                 cache: bool = True) -> Any:
    """make_tf_dataset when TensorFlow is installed, else ArrayBatches (notebook 02_replace_softmax)."""
    if importlib.util.find_spec("tensorflow") is None:
        return _array_batches_class()(images, labels, preprocess_fn, batch_size, shuffle, augment, seed)
    return make_tf_dataset(images, labels, preprocess_fn, batch_size, shuffle, augment, seed, cache)
