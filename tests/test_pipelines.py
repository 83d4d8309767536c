"""Tests of course_utils.pipelines: tf.data and ArrayBatches batches, shuffling, and the one augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from course_utils import pipelines as P


@pytest.fixture(scope="module")
def small_arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8), np.arange(10, dtype=np.int64) % 3


def _batches(dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(x), np.asarray(y)) for x, y in dataset]


def test_make_tf_dataset_shapes_and_preprocessing(small_arrays):
    pytest.importorskip("tensorflow")
    images, labels = small_arrays
    for preprocess in (lambda x: x / 127.5 - 1.0, lambda x: np.asarray(x) / 127.5 - 1.0):  # tensor op, numpy only
        batches = _batches(P.make_tf_dataset(images, labels, preprocess, batch_size=4))
        assert [x.shape for x, _ in batches] == [(4, 8, 8, 3), (4, 8, 8, 3), (2, 8, 8, 3)]
        assert all(x.dtype == np.float32 and y.dtype == np.int64 for x, y in batches)
        np.testing.assert_allclose(np.concatenate([x for x, _ in batches]), images / 127.5 - 1.0, atol=1e-6)
        assert np.array_equal(np.concatenate([y for _, y in batches]), labels)
    cached = P.make_tf_dataset(images, labels, None, batch_size=4, cache=True)
    first, second = _batches(cached), _batches(cached)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, second))
    assert np.array_equal(first[0][0], images[:4].astype(np.float32))


def test_make_tf_dataset_shuffle_and_augment_are_seeded(small_arrays):
    pytest.importorskip("tensorflow")
    images, labels = small_arrays
    ids = np.arange(10, dtype=np.int64)
    shuffled = P.make_tf_dataset(images, ids, None, batch_size=4, shuffle=True, seed=3)
    epoch1 = np.concatenate([y for _, y in _batches(shuffled)])
    epoch2 = np.concatenate([y for _, y in _batches(shuffled)])
    assert sorted(epoch1) == list(range(10)) and not np.array_equal(epoch1, ids)
    assert not np.array_equal(epoch1, epoch2)  # reshuffled every epoch
    again = np.concatenate([y for _, y in _batches(P.make_tf_dataset(images, ids, None, 4, shuffle=True, seed=3))])
    assert np.array_equal(again, epoch1)
    augmented = P.make_tf_dataset(images, labels, None, batch_size=10, augment=True, seed=1)
    x1 = _batches(augmented)[0][0]
    x2 = _batches(P.make_tf_dataset(images, labels, None, batch_size=10, augment=True, seed=1))[0][0]
    assert x1.shape == (10, 8, 8, 3) and x1.dtype == np.float32 and np.array_equal(x1, x2)
    assert not np.allclose(x1, images) and x1.min() >= 0 and x1.max() <= 255
    assert not np.array_equal(_batches(augmented)[0][0], x1)  # new randomness next epoch


def test_every_pipeline_calls_the_one_augment(small_arrays, monkeypatch):
    pytest.importorskip("tensorflow")
    images, labels = small_arrays
    seen = []

    def marker(batch, seed):
        seen.append(np.asarray(seed).tolist())
        return np.full(np.shape(batch), 7.0, np.float32)

    monkeypatch.setattr(P, "augment", marker)
    x_tf = _batches(P.make_tf_dataset(images, labels, None, batch_size=5, augment=True, seed=0))[0][0]
    x_array = P.ArrayBatches(images, labels, None, batch_size=5, augment=True, seed=0)[0][0]
    assert (x_tf == 7).all() and (x_array == 7).all() and len(seen) == 3  # two tf.data batches, one array batch
    assert seen[-1] == [0, 3, 0, 0]


# ---------------------------------------------------------------------------------------------- augment


def test_augment_is_deterministic_float32_and_depends_on_the_seed(small_arrays):
    images, _ = small_arrays
    out = P.augment(images, (1, 2))
    assert out.dtype == np.float32 and out.shape == images.shape
    assert np.array_equal(out, P.augment(images, (1, 2)))  # same seed, same output, bit for bit
    assert np.array_equal(out, P.augment(images.astype(np.float32), [1, 2]))  # uint8 or float: same result
    assert not np.array_equal(out, P.augment(images, (1, 3)))
    assert np.array_equal(P.augment(images, 4), P.augment(images, [4]))
    assert np.array_equal(P.augment(images, -1), P.augment(images, 2**64 - 1))  # tf.data seeds may be negative
    assert P.augmentation_seed((1, 2)) == P.augmentation_seed([1, 2]) != P.augmentation_seed((1, 3))
    assert 0 <= P.augmentation_seed(-5) < 2**31
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        P.augment(images[0], 0)


def test_augmentation_layers_are_the_three_keras_preprocessing_layers():
    keras = pytest.importorskip("keras")
    block = P.augmentation_layers(seed=10)
    assert isinstance(block, keras.Sequential) and block.name == "augmentation"
    flip, rotation, zoom = block.layers
    assert [type(layer) for layer in block.layers] == [keras.layers.RandomFlip, keras.layers.RandomRotation,
                                                         keras.layers.RandomZoom]
    assert flip.mode == "horizontal" and rotation.factor == (-P.ROTATION, P.ROTATION)
    assert zoom.height_factor == (-P.ZOOM, 0.0) and zoom.width_factor is None
    assert [layer.seed for layer in block.layers] == [10, 11, 12]


def test_augment_without_rotation_and_zoom_is_exactly_a_horizontal_flip(monkeypatch):
    monkeypatch.setattr(P, "ROTATION", 0.0)
    monkeypatch.setattr(P, "ZOOM", 0.0)
    images = np.random.default_rng(1).integers(0, 256, (16, 8, 8, 3)).astype(np.float32)
    out = P.augment(images, 11)
    flipped = [np.allclose(o, x[:, ::-1], atol=1e-3) for o, x in zip(out, images)]
    kept = [np.allclose(o, x, atol=1e-3) for o, x in zip(out, images)]
    assert all(f != k for f, k in zip(flipped, kept))  # every image is either mirrored or untouched
    assert 0 < sum(flipped) < 16  # and the seed mirrors some of them, not all


def _bar_images(n: int, size: int = 33, thickness: int = 3) -> np.ndarray:
    """n copies of a left-right symmetric image: a bright horizontal bar through the centre (a flip is a no-op)."""
    images = np.zeros((n, size, size, 3), np.float32)
    images[:, size // 2 - thickness // 2 : size // 2 + thickness // 2 + 1] = 255.0
    return images


def test_augment_rotates(monkeypatch):
    monkeypatch.setattr(P, "ZOOM", 0.0)
    images = _bar_images(8)
    out = P.augment(images, 3)
    centre = images.shape[1] // 2
    np.testing.assert_allclose(out[:, centre, centre], 255.0, atol=1.0)  # the centre stays where it is
    edge_rows = [int(np.argmax(o[:, 0, 0])) for o in out]  # where the bar meets the left border
    assert sum(row != centre for row in edge_rows) >= 6  # the bar is tilted in (almost) every image
    assert len(set(edge_rows)) > 2  # by different angles


def test_augment_zooms_in(monkeypatch):
    monkeypatch.setattr(P, "ROTATION", 0.0)
    images = _bar_images(8, thickness=9)
    out = P.augment(images, 4)
    width = out[:, :, images.shape[2] // 2, 0].sum(axis=1) / 255.0  # bar thickness in pixels after the zoom
    assert width.min() >= 9 - 0.01 and width.max() <= 9 / (1 - P.ZOOM) + 0.01  # zoom in by 0-15 %, never out
    assert (width > 9.5).sum() >= 4  # most images visibly zoomed in


def test_augment_equals_the_layers_inside_a_model(small_arrays):
    keras = pytest.importorskip("keras")
    images, _ = small_arrays
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, P.augmentation_layers(P.augmentation_seed((7, 1)))(inputs))
    np.testing.assert_array_equal(np.asarray(model(images.astype(np.float32), training=True)), P.augment(images, (7, 1)))
    assert not np.array_equal(np.asarray(model(images.astype(np.float32), training=True)), P.augment(images, (7, 1)))
    np.testing.assert_array_equal(model.predict(images.astype(np.float32), verbose=0), images)  # inactive in predict


def test_array_batches_shapes_preprocessing_shuffle_and_augment(small_arrays):
    keras = pytest.importorskip("keras")
    images, labels = small_arrays
    batches = P.ArrayBatches(images, labels, lambda x: x / 255.0, batch_size=4)
    assert isinstance(batches, keras.utils.PyDataset) and len(batches) == 3
    x, y = batches[2]
    assert x.shape == (2, 8, 8, 3) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(np.concatenate([batches[i][0] for i in range(3)]), images / 255.0, atol=1e-6)
    with pytest.raises(IndexError):
        batches[3]
    ids = np.arange(10, dtype=np.int64)
    shuffled = P.ArrayBatches(images, ids, None, batch_size=4, shuffle=True, seed=2)
    order1 = np.concatenate([shuffled[i][1] for i in range(3)])
    assert sorted(order1) == list(range(10)) and not np.array_equal(order1, ids)
    shuffled.on_epoch_end()
    order2 = np.concatenate([shuffled[i][1] for i in range(3)])
    assert sorted(order2) == list(range(10)) and not np.array_equal(order1, order2)
    fresh = P.ArrayBatches(images, ids, None, batch_size=4, shuffle=True, seed=2)
    assert np.array_equal(np.concatenate([fresh[i][1] for i in range(3)]), order1)
    augmented = P.ArrayBatches(images, ids, None, batch_size=4, augment=True, seed=5)
    assert np.array_equal(augmented[1][0], P.augment(images[4:8], (5, 3, 0, 1)))  # THE augment, (seed, 3, epoch, i)
    augmented.on_epoch_end()
    assert np.array_equal(augmented[1][0], P.augment(images[4:8], (5, 3, 1, 1)))


def test_make_batches_picks_tf_data_or_array_batches(small_arrays, monkeypatch):
    pytest.importorskip("tensorflow")
    import importlib.util

    import tensorflow as tf

    images, labels = small_arrays
    assert isinstance(P.make_batches(images, labels, None, batch_size=4), tf.data.Dataset)
    real_find_spec = importlib.util.find_spec
    def find_spec(name, *args):
        return None if name == "tensorflow" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    fallback = P.make_batches(images, labels, None, batch_size=4)
    assert isinstance(fallback, P.ArrayBatches) and len(fallback) == 3
