"""Tests of course_utils.data: dataset specs, sampling, decoding, bad input, errors and pipelines."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from course_utils import data as D
from course_utils.data import BadImageWarning, DatasetError, SmallClassWarning, load_dataset

REPO = Path(__file__).resolve().parents[1]
FLOWER_CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """(size, mtime_ns, sha1) of every file under root."""
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def bad_image_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, BadImageWarning)]


def per_class(labels: np.ndarray, n_classes: int) -> list[int]:
    return np.bincount(labels, minlength=n_classes).tolist()


# ---------------------------------------------------------------------------------------------- import


def test_import_does_not_import_tensorflow_or_keras():
    code = (
        "import sys; import course_utils.data as d; "
        "heavy = [m for m in ('tensorflow', 'keras', 'tensorflow_datasets', 'sklearn', 'jax') if m in sys.modules]; "
        "print(heavy); assert not heavy, heavy"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------- shared flowers


def test_shared_flowers_counts_classes_shape_dtype(flowers_split):
    split = flowers_split
    assert split.train.classes == FLOWER_CLASSES and split.test.classes == FLOWER_CLASSES
    assert split.train.images.shape == (500, 64, 64, 3) and split.test.images.shape == (200, 64, 64, 3)
    assert split.train.images.dtype == np.uint8 and split.test.images.dtype == np.uint8
    assert split.train.labels.dtype == np.int64
    assert per_class(split.train.labels, 5) == [100] * 5 and per_class(split.test.labels, 5) == [40] * 5
    assert split.skipped == []
    assert len(set(split.train.ids)) == 500 and not set(split.train.ids) & set(split.test.ids)
    assert all("/train/" in i for i in split.train.ids) and all("/test/" in i for i in split.test.ids)
    for image_set in (split.train, split.test):  # label i <-> folder classes[i]
        assert all(Path(i).parent.name == image_set.classes[y] for i, y in zip(image_set.ids, image_set.labels))
    assert split.train.images.std() > 20  # real pictures, not blank


def test_describe_summarises_the_split(flowers_split):
    text = D.describe(flowers_split)
    for part in ["5 classes", "daisy 100", "tulips 40", "500 images", "200 images", "64x64", "No files were skipped"]:
        assert part in text, (part, text)


def test_full_size_images_match_decode_image(flowers_dir):
    split = load_dataset(str(flowers_dir), image_size=224, per_class=2, test_per_class=1)
    assert split.train.images.shape == (10, 224, 224, 3) and split.test.images.shape == (5, 224, 224, 3)
    assert np.array_equal(split.train.images[3], D.decode_image(split.train.ids[3], 224))


def test_single_folder_split_is_stratified_disjoint_and_seeded(flowers_dir):
    folder = str(flowers_dir / "train")  # DIR/<class>/*: split by load_dataset
    a = load_dataset(folder, image_size=16, seed=0)
    assert per_class(a.train.labels, 5) == [80] * 5 and per_class(a.test.labels, 5) == [20] * 5
    assert not set(a.train.ids) & set(a.test.ids)
    paths, _, _ = D.list_image_folder(folder)
    assert set(a.train.ids) | set(a.test.ids) == set(paths)
    again = load_dataset(folder, image_size=16, seed=0)
    assert again.test.ids == a.test.ids and np.array_equal(again.train.images, a.train.images)
    other = load_dataset(folder, image_size=16, seed=1, test_fraction=0.1)
    assert per_class(other.test.labels, 5) == [10] * 5
    assert set(other.test.ids) - set(a.test.ids)  # another seed, other test images


def test_per_class_sampling_exact_counts_and_reproducible(flowers_dir):
    split = load_dataset(str(flowers_dir), image_size=16, per_class=7, test_per_class=3, seed=5)
    assert per_class(split.train.labels, 5) == [7] * 5 and per_class(split.test.labels, 5) == [3] * 5
    same = load_dataset(str(flowers_dir), image_size=16, per_class=7, test_per_class=3, seed=5)
    assert same.train.ids == split.train.ids and same.test.ids == split.test.ids
    fewer = load_dataset(str(flowers_dir), image_size=16, per_class=4, test_per_class=3, seed=5)
    assert set(fewer.train.ids) < set(split.train.ids)  # a smaller sample is a subset of a larger one
    other = load_dataset(str(flowers_dir), image_size=16, per_class=7, test_per_class=3, seed=6)
    assert other.train.ids != split.train.ids


def test_stratified_sample_warns_about_small_classes():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 6)
    with pytest.warns(SmallClassWarning, match=r"'b' \(3\)"):
        idx = D.stratified_sample(labels, 5, seed=0, classes=["a", "b", "c"])
    assert per_class(labels[idx], 3) == [5, 3, 5] and len(set(idx)) == len(idx)
    assert np.array_equal(idx, np.sort(idx))
    assert np.array_equal(D.stratified_sample(labels, 2, seed=3), D.stratified_sample(labels, 2, seed=3))
    with pytest.raises(DatasetError, match="positive integer"):
        D.stratified_sample(labels, 0, seed=0)


# ---------------------------------------------------------------------------------------------- sklearn:digits


def test_sklearn_digits_rgb_uint8_at_requested_size():
    split = load_dataset("sklearn:digits", image_size=40, per_class=4, test_per_class=2)
    assert split.train.classes == [str(d) for d in range(10)]
    assert split.train.images.shape == (40, 40, 40, 3) and split.train.images.dtype == np.uint8
    assert split.test.images.shape == (20, 40, 40, 3)
    assert per_class(split.train.labels, 10) == [4] * 10
    images = split.train.images
    assert np.array_equal(images[..., 0], images[..., 1]) and np.array_equal(images[..., 0], images[..., 2])
    assert images.min() == 0 and images.max() > 200  # 0-16 scaled to 0-255
    assert not set(split.train.ids) & set(split.test.ids) and split.train.ids[0].startswith("sklearn:digits/")


# ---------------------------------------------------------------------------------------------- decoding


def _rgb_reference(array: np.ndarray, size: int, tmp_path: Path) -> np.ndarray:
    path = tmp_path / "reference.png"
    Image.fromarray(array).save(path)
    return D.decode_image(path, size).astype(np.float64)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "I;16", "RGB16"])
def test_decode_image_converts_every_mode_to_rgb(mode, photos, png16, tmp_path):
    rgb = photos["astronaut"][::4, ::4]  # 128 x 128
    path = tmp_path / f"image_{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}"
    if mode == "I;16":
        gray16 = np.linspace(0, 65535, 128 * 128).reshape(128, 128).astype(np.uint16)
        path.write_bytes(png16(gray16))
        expected = np.repeat((gray16 / 257.0)[..., None], 3, axis=2)
        small = Image.fromarray(expected.astype(np.uint8)).resize((32, 32), Image.Resampling.BILINEAR)
        expected = np.asarray(small, dtype=float)
    elif mode == "RGB16":
        path.write_bytes(png16(rgb.astype(np.uint16) * 257))
        expected = _rgb_reference(rgb, 32, tmp_path)
    elif mode == "RGBA":
        rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
        rgba[:, :64, 3] = 0  # left half fully transparent -> white
        Image.fromarray(rgba, "RGBA").save(path)
        expected = _rgb_reference(np.where(rgba[..., 3:] == 0, 255, rgb).astype(np.uint8), 32, tmp_path)
    else:
        Image.fromarray(rgb).convert(mode).save(path, **({"quality": 95} if mode == "CMYK" else {}))
        source = np.asarray(Image.fromarray(rgb).convert("L").convert("RGB")) if mode == "L" else rgb
        expected = _rgb_reference(source, 32, tmp_path)
    out = D.decode_image(path, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert np.abs(out - expected).mean() < 8, (mode, np.abs(out - expected).mean())
    if mode in ("L", "I;16"):
        assert np.array_equal(out[..., 0], out[..., 2])
    if mode == "RGBA":
        assert (out[:, :12] == 255).all()  # transparent half composited on white


def test_decode_image_palette_transparency_on_white(tmp_path):
    indices = np.zeros((20, 40), np.uint8)
    indices[:, 20:] = 1
    image = Image.fromarray(indices, "P")
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # 0: red, 1: blue
    image.save(tmp_path / "palette.png", transparency=0)  # red is transparent
    out = D.decode_image(tmp_path / "palette.png", 20)
    assert (out[:, :8] == 255).all() and (out[:, -8:] == [0, 0, 255]).all()


def test_decode_image_resizes_shorter_side_and_crops_centre(tmp_path):
    stripes = np.zeros((60, 180, 3), np.uint8)  # wide: black | white | black thirds
    stripes[:, 60:120] = 255
    Image.fromarray(stripes).save(tmp_path / "wide.png")
    out = D.decode_image(tmp_path / "wide.png", 30)
    assert out.shape == (30, 30, 3) and out[:, 1:-1].min() == 255  # only the white centre third remains
    assert out.min() > 200  # (edge columns are filtered with their black neighbours)


def test_decode_image_applies_exif_orientation(tmp_path):
    halves = np.zeros((40, 80, 3), np.uint8)
    halves[:, 40:] = 255  # left black, right white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(halves).save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    out = D.decode_image(tmp_path / "rotated.jpg", 20).mean(axis=(1, 2))
    assert out[:8].mean() < 40 and out[-8:].mean() > 215  # upright: black on top, white below


def test_decode_images_skips_unreadable_with_one_warning(tmp_path, photos):
    good = tmp_path / "good.jpg"
    Image.fromarray(photos["coffee"]).save(good)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.warns(BadImageWarning) as record:
        images, kept, skipped = D.decode_images([good, empty, good], 24, progress=False)
    assert len(bad_image_warnings(record)) == 1 and "0 bytes" in bad_image_warnings(record)[0]
    assert images.shape == (2, 24, 24, 3) and kept.tolist() == [0, 2] and skipped == [str(empty)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert D.decode_images([empty], 24, warn=False)[2] == [str(empty)]


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_files_converted_or_skipped_with_one_warning(bad_input_tree):
    root = bad_input_tree["root"]
    before = snapshot(root)
    with pytest.warns(BadImageWarning) as record:
        split = load_dataset(str(root), image_size=32)
    messages = bad_image_warnings(record)
    assert len(messages) == 1, messages
    message = messages[0]
    assert "skipped 4 files" in message and "Delete or fix" in message
    for name in bad_input_tree["skipped"]:
        assert name in message
    for name in bad_input_tree["junk"]:
        assert name not in message and not any(s.endswith(name) for s in split.skipped)
    assert sorted(Path(s).name for s in split.skipped) == sorted(bad_input_tree["skipped"])
    kept = sorted(Path(i).name for i, y in zip(split.train.ids, split.train.labels) if split.train.classes[y] == "cat")
    assert kept == sorted(bad_input_tree["converted"])
    assert split.train.images.shape == (8, 32, 32, 3) and split.test.images.shape == (2, 32, 32, 3)
    assert "4 unreadable files" in D.describe(split)
    assert snapshot(root) == before  # nothing deleted or modified on disk


def test_per_class_replaces_unreadable_picks(bad_input_tree):
    root = bad_input_tree["root"]
    for seed in range(4):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            split = load_dataset(str(root), image_size=16, per_class=5, seed=seed)
        assert any(issubclass(w.category, SmallClassWarning) and "'coffee' (1)" in str(w.message) for w in record)
        cat = split.train.classes.index("cat")
        assert int((split.train.labels == cat).sum()) == 5  # 7 readable of 11: always 5 after refilling


def test_non_image_files_listed_once_by_list_image_folder(image_tree):
    root = image_tree({"a": 2, "b": 2})
    (root / "a" / "notes.txt").write_text("x")
    (root / "b" / ".hidden.jpg").write_bytes(b"junk")
    with pytest.warns(BadImageWarning, match="notes.txt") as record:
        paths, labels, classes = D.list_image_folder(root)
    assert len(bad_image_warnings(record)) == 1 and ".hidden" not in bad_image_warnings(record)[0]
    assert classes == ["a", "b"] and labels.tolist() == [0, 0, 1, 1] and labels.dtype == np.int64
    assert all(p.endswith(".jpg") for p in paths)


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "layout, advice",
    [
        ({"a": 2, "b": 0}, ["has no files", "Add images", "remove the folder"]),
        ({"a": 3}, ["only one class", "at least 2 classes"]),
        (
            {"train/a": 2, "train/b": 2, "test/a": 1, "test/c": 1},
            ["only in train: ['b']", "only in test: ['c']", "same class subfolders"],
        ),
        ({".": 3}, ["3 images directly inside", "own subfolder"]),
        ({}, ["no class subfolders", "one subfolder per class"]),
    ],
    ids=["empty-class", "single-class", "train-test-differ", "no-subfolders", "empty-folder"],
)
def test_bad_folder_layouts_raise_dataset_error(layout, advice, image_tree):
    root = image_tree(layout)
    with pytest.raises(DatasetError) as error:
        load_dataset(str(root), image_size=16)
    for part in advice:
        assert part in str(error.value), (part, str(error.value))


def test_class_with_only_unreadable_files(image_tree):
    root = image_tree({"a": 2, "b": 0})
    (root / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(BadImageWarning), pytest.raises(DatasetError, match=r"no readable training image.*\['b'\]"):
        load_dataset(str(root), image_size=16, test_fraction=0.0)
    (root / "b" / "broken.jpg").unlink()
    (root / "b" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"only non-image files \(1\)"):
        load_dataset(str(root), image_size=16)


@pytest.mark.parametrize(
    "spec, advice",
    [
        ("no/such/folder", ["no such folder 'no/such/folder'", "tfds:NAME, sample:eurosat or sklearn:digits"]),
        ("sample:mnist", ["unknown sample 'sample:mnist'", "sample:eurosat"]),
        ("", ["the dataset spec is empty", "sample:eurosat"]),
        ("  ", ["the dataset spec is empty"]),
        ("sklearn:iris", ["only sklearn dataset is sklearn:digits"]),
    ],
)
def test_bad_specs_raise_dataset_error(spec, advice):
    with pytest.raises(DatasetError) as error:
        load_dataset(spec)
    for part in advice:
        assert part in str(error.value)


def test_file_spec_and_bad_arguments(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        load_dataset(str(tmp_path / "x.jpg"))
    assert issubclass(DatasetError, ValueError)
    for kwargs, message in [
        ({"per_class": 0}, "per_class"),
        ({"test_per_class": 2.5}, "test_per_class"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"seed": -1}, "seed"),
        ({"image_size": 0}, "image_size"),
    ]:
        with pytest.raises(DatasetError, match=message):
            load_dataset(str(tmp_path), **kwargs)  # arguments are checked before the folder


# ---------------------------------------------------------------------------------------------- tfds


@pytest.fixture
def no_network(monkeypatch):
    """Record and refuse every attempt to open a connection or resolve a name."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access is blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_unknown_tfds_name_suggests_close_names_offline(no_network):
    pytest.importorskip("tensorflow_datasets")
    start = time.perf_counter()
    with pytest.raises(DatasetError) as error:
        load_dataset("tfds:not_a_dataset")
    assert "unknown TFDS dataset 'not_a_dataset'" in str(error.value) and "tfds:tf_flowers" in str(error.value)
    with pytest.raises(DatasetError, match=r"Did you mean tfds:tf_flowers"):
        load_dataset("tfds:tf_flowerz")
    assert time.perf_counter() - start < 20  # the builder lookup is local (~0.2 s measured)
    assert no_network == []


class _FakeBuilder:
    """Stands in for a prepared tfds builder: encoded JPEGs + labels in memory."""

    def __init__(self, splits: dict[str, tuple[list[bytes], list[int]]], prepared: bool = True, error=None):
        from types import SimpleNamespace

        label = SimpleNamespace(names=["cat", "coffee"])
        self.splits, self.prepared, self.error = splits, prepared, error
        self.info = SimpleNamespace(supervised_keys=("image", "label"), features={"label": label}, splits=dict(splits))

    def is_prepared(self) -> bool:
        return self.prepared

    def download_and_prepare(self) -> None:
        raise self.error

    def as_dataset(self, split, shuffle_files=False, decoders=None):
        import tensorflow as tf

        blobs, labels = self.splits[split]
        return tf.data.Dataset.from_tensor_slices({"image": blobs, "label": np.asarray(labels, np.int64)})


def _jpeg_blobs(photos, count: int) -> tuple[list[bytes], list[int]]:
    import io

    blobs, labels = [], []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(photos["chelsea" if i % 2 == 0 else "coffee"][:: 4 + i % 3, ::4]).save(buffer, "JPEG")
        blobs.append(buffer.getvalue())
        labels.append(i % 2)
    return blobs, labels


def test_tfds_branch_uses_train_test_splits(monkeypatch, photos, no_network):
    tfds = pytest.importorskip("tensorflow_datasets")
    splits = {"train": _jpeg_blobs(photos, 12), "test": _jpeg_blobs(photos, 6)}
    splits["train"][0][5] = b"broken"  # one unreadable record
    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: _FakeBuilder(splits))
    with pytest.warns(BadImageWarning, match="tfds:tf_flowers/train/5"):
        split = load_dataset("tfds:tf_flowers", image_size=24, per_class=5, test_per_class=2)
    assert split.train.classes == ["cat", "coffee"] and split.train.images.shape == (10, 24, 24, 3)
    assert per_class(split.train.labels, 2) == [5, 5] and per_class(split.test.labels, 2) == [2, 2]
    assert all(i.startswith("tfds:tf_flowers/test/") for i in split.test.ids)
    assert split.skipped == ["tfds:tf_flowers/train/5"] and "tfds:tf_flowers/train/5" not in split.train.ids
    index = int(split.test.ids[0].rsplit("/", 1)[1])
    assert np.array_equal(split.test.images[0], D.decode_image(splits["test"][0][index], 24))


def test_tfds_branch_without_test_split_splits_with_seed(monkeypatch, photos):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: _FakeBuilder({"train": _jpeg_blobs(photos, 20)}))
    split = load_dataset("tfds:tf_flowers", image_size=16, test_fraction=0.2)
    assert per_class(split.train.labels, 2) == [8, 8] and per_class(split.test.labels, 2) == [2, 2]
    assert all(i.startswith("tfds:tf_flowers/train/") for i in split.train.ids + split.test.ids)
    assert not set(split.train.ids) & set(split.test.ids)


@pytest.mark.parametrize(
    "error, advice",
    [
        (ConnectionError("Failed to resolve 'storage.googleapis.com'"), ["internet access", "COURSE_DATA_DIR"]),
        (ModuleNotFoundError("No module named 'x_y'", name="x_y"), ["'x_y' is missing", "pip install x-y"]),
    ],
    ids=["offline", "missing-package"],
)
def test_tfds_download_failure_becomes_dataset_error(error, advice, monkeypatch, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "tfds"))
    seen = {}

    def fake_builder(name, data_dir=None):
        seen["data_dir"] = data_dir
        return _FakeBuilder({}, prepared=False, error=error)

    monkeypatch.setattr(tfds, "builder", fake_builder)
    with pytest.raises(DatasetError) as caught:
        load_dataset("tfds:oxford_flowers102")
    for part in advice:
        assert part in str(caught.value)
    assert seen["data_dir"] == str(tmp_path / "tfds") and D.tfds_data_dir() == tmp_path / "tfds"


# ---------------------------------------------------------------------------------------------- pipelines


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
        batches = _batches(D.make_tf_dataset(images, labels, preprocess, batch_size=4))
        assert [x.shape for x, _ in batches] == [(4, 8, 8, 3), (4, 8, 8, 3), (2, 8, 8, 3)]
        assert all(x.dtype == np.float32 and y.dtype == np.int64 for x, y in batches)
        np.testing.assert_allclose(np.concatenate([x for x, _ in batches]), images / 127.5 - 1.0, atol=1e-6)
        assert np.array_equal(np.concatenate([y for _, y in batches]), labels)
    cached = D.make_tf_dataset(images, labels, None, batch_size=4, cache=True)
    first, second = _batches(cached), _batches(cached)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, second))
    assert np.array_equal(first[0][0], images[:4].astype(np.float32))


def test_make_tf_dataset_shuffle_and_augment_are_seeded(small_arrays):
    pytest.importorskip("tensorflow")
    images, labels = small_arrays
    ids = np.arange(10, dtype=np.int64)
    shuffled = D.make_tf_dataset(images, ids, None, batch_size=4, shuffle=True, seed=3)
    epoch1 = np.concatenate([y for _, y in _batches(shuffled)])
    epoch2 = np.concatenate([y for _, y in _batches(shuffled)])
    assert sorted(epoch1) == list(range(10)) and not np.array_equal(epoch1, ids)
    assert not np.array_equal(epoch1, epoch2)  # reshuffled every epoch
    again = np.concatenate([y for _, y in _batches(D.make_tf_dataset(images, ids, None, 4, shuffle=True, seed=3))])
    assert np.array_equal(again, epoch1)
    augmented = D.make_tf_dataset(images, labels, None, batch_size=10, augment=True, seed=1)
    x1 = _batches(augmented)[0][0]
    x2 = _batches(D.make_tf_dataset(images, labels, None, batch_size=10, augment=True, seed=1))[0][0]
    assert x1.shape == (10, 8, 8, 3) and np.array_equal(x1, x2)
    assert not np.allclose(x1, images) and x1.min() >= 0 and x1.max() <= 255
    assert not np.array_equal(_batches(augmented)[0][0], x1)  # new randomness next epoch


def test_array_batches_shapes_preprocessing_shuffle_and_flips(small_arrays):
    keras = pytest.importorskip("keras")
    images, labels = small_arrays
    batches = D.ArrayBatches(images, labels, lambda x: x / 255.0, batch_size=4)
    assert isinstance(batches, keras.utils.PyDataset) and len(batches) == 3
    x, y = batches[2]
    assert x.shape == (2, 8, 8, 3) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(np.concatenate([batches[i][0] for i in range(3)]), images / 255.0, atol=1e-6)
    with pytest.raises(IndexError):
        batches[3]
    ids = np.arange(10, dtype=np.int64)
    shuffled = D.ArrayBatches(images, ids, None, batch_size=4, shuffle=True, seed=2)
    order1 = np.concatenate([shuffled[i][1] for i in range(3)])
    assert sorted(order1) == list(range(10)) and not np.array_equal(order1, ids)
    shuffled.on_epoch_end()
    order2 = np.concatenate([shuffled[i][1] for i in range(3)])
    assert sorted(order2) == list(range(10)) and not np.array_equal(order1, order2)
    fresh = D.ArrayBatches(images, ids, None, batch_size=4, shuffle=True, seed=2)
    assert np.array_equal(np.concatenate([fresh[i][1] for i in range(3)]), order1)
    flipped = D.ArrayBatches(images, ids, None, batch_size=10, augment=True, seed=0)[0][0]
    is_flip = [np.array_equal(flipped[i], images[i, :, ::-1]) for i in range(10)]
    is_same = [np.array_equal(flipped[i], images[i]) for i in range(10)]
    assert all(a or b for a, b in zip(is_flip, is_same)) and 0 < sum(is_flip) < 10


def test_make_batches_picks_tf_data_or_array_batches(small_arrays, monkeypatch):
    pytest.importorskip("tensorflow")
    import importlib.util

    import tensorflow as tf

    images, labels = small_arrays
    assert isinstance(D.make_batches(images, labels, None, batch_size=4), tf.data.Dataset)
    real_find_spec = importlib.util.find_spec
    def find_spec(name, *args):
        return None if name == "tensorflow" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    fallback = D.make_batches(images, labels, None, batch_size=4)
    assert isinstance(fallback, D.ArrayBatches) and len(fallback) == 3


# --------------------------------------------------------------------------------------------------
# Bounded decoding and classes without a test image (issue 13)


def test_images_over_the_pixel_limit_are_skipped_before_decoding(image_tree, monkeypatch):
    root = image_tree({"a": 3, "b": 3})
    Image.new("RGB", (300, 200)).save(root / "a" / "huge.png")  # "huge" for the lowered limit below
    monkeypatch.setattr(D, "MAX_PIXELS", 20_000)  # the small photos have at most 17 120 pixels
    assert D.MAX_PIXELS < Image.MAX_IMAGE_PIXELS
    with pytest.warns(BadImageWarning, match=r"huge.png: ImageTooLargeError: 300x200 pixels is more than"):
        split = load_dataset(str(root), image_size=16, test_fraction=0.34)
    assert len(split.train) + len(split.test) == 6 and any("huge.png" in s for s in split.skipped)
    image, reason = D.decode_or_reason(str(root / "a" / "huge.png"), 16)
    assert image is None and reason.startswith("ImageTooLargeError")


def test_a_class_without_a_test_image_stops_before_training(image_tree):
    root = image_tree({"train/a": 2, "train/b": 2, "test/a": 1, "test/b": 0})
    (root / "test" / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(BadImageWarning), pytest.raises(DatasetError, match=r"no readable test image for classes \['b'\]"):
        load_dataset(str(root), image_size=16)


def test_first_tfds_download_says_its_size_first_then_samples_with_a_fixed_seed(monkeypatch, photos, capsys,
                                                                                   tmp_path):
    """Quick mode online: tf_flowers (train split only) is downloaded once, after one line saying how big it
    is, then sampled per class with the seed: the same images every time."""
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "tfds"))
    builder = _FakeBuilder({"train": _jpeg_blobs(photos, 24)}, prepared=False)
    events = []

    def download_and_prepare():
        events.append(("download", capsys.readouterr().out))
        builder.prepared = True

    builder.download_and_prepare = download_and_prepare
    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: builder)
    first = load_dataset("tfds:tf_flowers", image_size=16, per_class=4, test_per_class=2, seed=3)
    assert events == [("download", f"tfds:tf_flowers: downloading 218 MiB once into {tmp_path / 'tfds'}; "
                                   "later runs read it from there.\n")]
    second = load_dataset("tfds:tf_flowers", image_size=16, per_class=4, test_per_class=2, seed=3)
    assert len(events) == 1 and capsys.readouterr().out == "", "a prepared dataset is not downloaded again"
    assert np.bincount(first.train.labels).tolist() == [4, 4] and np.bincount(first.test.labels).tolist() == [2, 2]
    assert first.train.ids == second.train.ids and first.test.ids == second.test.ids
    assert not set(first.train.ids) & set(first.test.ids)
    other = load_dataset("tfds:tf_flowers", image_size=16, per_class=4, test_per_class=2, seed=4)
    assert other.train.ids != first.train.ids


def test_sample_eurosat_ships_with_the_package_and_needs_nothing_else(no_network):
    split = load_dataset("sample:eurosat", image_size=32)
    assert split.train.classes == ["AnnualCrop", "Forest", "Residential", "River", "SeaLake"]
    assert np.bincount(split.train.labels).tolist() == [40] * 5 and np.bincount(split.test.labels).tolist() == [20] * 5
    assert split.train.images.shape == (200, 32, 32, 3) and split.skipped == []
    assert (D.sample_dir("eurosat") / "LICENSE").read_text().startswith("MIT License")
    assert no_network == []
