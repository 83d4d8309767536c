"""Tests of course_utils.sources: dataset specs (folders, sklearn:digits, sample:eurosat, tfds) and their errors."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from PIL import Image

from course_utils import settings, sources
from course_utils.data import load_dataset
from course_utils.images import BadImageWarning, DatasetError, decode_image


def bad_image_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, BadImageWarning)]


def per_class(labels: np.ndarray, n_classes: int) -> list[int]:
    return np.bincount(labels, minlength=n_classes).tolist()


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

# ---------------------------------------------------------------------------------------------- folders


def test_non_image_files_listed_once_by_list_image_folder(image_tree):
    root = image_tree({"a": 2, "b": 2})
    (root / "a" / "notes.txt").write_text("x")
    (root / "b" / ".hidden.jpg").write_bytes(b"junk")
    with pytest.warns(BadImageWarning, match="notes.txt") as record:
        paths, labels, classes = sources.list_image_folder(root)
    assert len(bad_image_warnings(record)) == 1 and ".hidden" not in bad_image_warnings(record)[0]
    assert classes == ["a", "b"] and labels.tolist() == [0, 0, 1, 1] and labels.dtype == np.int64
    assert all(p.endswith(".jpg") for p in paths)


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

# ---------------------------------------------------------------------------------------------- sklearn:digits and sample:eurosat


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


def test_sample_eurosat_ships_with_the_package_and_needs_nothing_else(no_network):
    split = load_dataset("sample:eurosat", image_size=32)
    assert split.train.classes == ["AnnualCrop", "Forest", "Residential", "River", "SeaLake"]
    assert np.bincount(split.train.labels).tolist() == [40] * 5 and np.bincount(split.test.labels).tolist() == [20] * 5
    assert split.train.images.shape == (200, 32, 32, 3) and split.skipped == []
    assert (sources.sample_dir("eurosat") / "LICENSE").read_text().startswith("MIT License")
    assert no_network == []

# ---------------------------------------------------------------------------------------------- tfds


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
    assert np.array_equal(split.test.images[0], decode_image(splits["test"][0][index], 24))


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
    assert seen["data_dir"] == str(tmp_path / "tfds") and settings.tfds_data_dir() == tmp_path / "tfds"


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
