"""Tests of course_utils.data: sampling, train/test/validation splits, seeds, bad input and arguments."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from course_utils import data as D
from course_utils import images
from course_utils.data import SmallClassWarning, load_dataset
from course_utils.images import BadImageWarning, DatasetError
from course_utils.sources import list_image_folder

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
    assert np.array_equal(split.train.images[3], images.decode_image(split.train.ids[3], 224))


def test_single_folder_split_is_stratified_disjoint_and_the_same_for_every_seed(flowers_dir):
    folder = str(flowers_dir / "train")  # DIR/<class>/*: split by load_dataset
    a = load_dataset(folder, image_size=16, seed=0)
    assert per_class(a.train.labels, 5) == [80] * 5 and per_class(a.test.labels, 5) == [20] * 5
    assert not set(a.train.ids) & set(a.test.ids)
    paths, _, _ = list_image_folder(folder)
    assert set(a.train.ids) | set(a.test.ids) == set(paths)
    again = load_dataset(folder, image_size=16, seed=0)
    assert again.test.ids == a.test.ids and np.array_equal(again.train.images, a.train.images)
    other_seed = load_dataset(folder, image_size=16, seed=7)
    assert other_seed.test.ids == a.test.ids and other_seed.train.ids == a.train.ids  # paired comparisons
    smaller = load_dataset(folder, image_size=16, seed=1, test_fraction=0.1)
    assert per_class(smaller.test.labels, 5) == [10] * 5
    assert set(smaller.test.ids) < set(a.test.ids)  # a smaller test part is a subset of a larger one


def test_per_class_sampling_exact_counts_and_reproducible(flowers_dir):
    split = load_dataset(str(flowers_dir), image_size=16, per_class=7, test_per_class=3, seed=5)
    assert per_class(split.train.labels, 5) == [7] * 5 and per_class(split.test.labels, 5) == [3] * 5
    same = load_dataset(str(flowers_dir), image_size=16, per_class=7, test_per_class=3, seed=5)
    assert same.train.ids == split.train.ids and same.test.ids == split.test.ids
    fewer = load_dataset(str(flowers_dir), image_size=16, per_class=4, test_per_class=3, seed=5)
    assert set(fewer.train.ids) < set(split.train.ids)  # a smaller sample is a subset of a larger one
    other = load_dataset(str(flowers_dir), image_size=16, per_class=7, test_per_class=3, seed=6)
    assert other.train.ids != split.train.ids  # seeds resample the training images...
    assert other.test.ids == split.test.ids  # ...never the test images
    assert np.array_equal(other.test.images, split.test.images)


def test_validation_is_carved_from_train_stratified_and_seeded(flowers_dir):
    whole = load_dataset(str(flowers_dir), image_size=16, per_class=10, test_per_class=2, seed=3)
    split = load_dataset(str(flowers_dir), image_size=16, per_class=10, test_per_class=2, seed=3, val_fraction=0.2)
    assert per_class(split.train.labels, 5) == [8] * 5 and per_class(split.val.labels, 5) == [2] * 5
    assert sorted(split.train.ids + split.val.ids) == sorted(whole.train.ids)  # carved out of the same 10
    assert split.test.ids == whole.test.ids and split.val.classes == FLOWER_CLASSES
    position = {i: k for k, i in enumerate(whole.train.ids)}
    assert all(np.array_equal(img, whole.train.images[position[i]]) for img, i in zip(split.val.images, split.val.ids))
    again = load_dataset(str(flowers_dir), image_size=16, per_class=10, test_per_class=2, seed=3, val_fraction=0.2)
    assert again.val.ids == split.val.ids
    other = load_dataset(str(flowers_dir), image_size=16, per_class=10, test_per_class=2, seed=4, val_fraction=0.2)
    assert other.val.ids != split.val.ids and other.test.ids == split.test.ids
    tiny = load_dataset(str(flowers_dir), image_size=16, per_class=2, test_per_class=1, val_fraction=0.01)
    assert per_class(tiny.val.labels, 5) == [1] * 5  # at least 1 per class
    assert whole.val is None and "Validation: 10 images" in D.describe(split) and "Validation" not in D.describe(whole)
    with pytest.raises(DatasetError, match=r"at least 2 training images per class.*val_fraction=0"):
        load_dataset(str(flowers_dir), image_size=16, per_class=1, test_per_class=1, val_fraction=0.2)


def test_class_counts_count_the_train_part_without_decoding(flowers_dir, image_tree, monkeypatch):
    assert D.class_counts(str(flowers_dir)) == dict.fromkeys(FLOWER_CLASSES, 100)  # its own test/ folder
    root = image_tree({"a": 10, "b": 6})
    monkeypatch.setattr(images, "decode_or_reason", lambda *a, **k: pytest.fail("class_counts must not decode"))
    assert D.class_counts(str(root)) == {"a": 8, "b": 5}  # round(0.2 * 6) = 1 goes to test
    assert D.class_counts(str(root), seed=9, test_fraction=0.5) == {"a": 5, "b": 3}
    monkeypatch.undo()
    split = load_dataset(str(root), image_size=16, test_fraction=0.5)
    assert per_class(split.train.labels, 2) == [5, 3]
    with pytest.raises(DatasetError, match="test_fraction"):
        D.class_counts(str(root), test_fraction=1.5)


def test_image_set_take_keeps_images_labels_and_ids_together(flowers_split):
    part = flowers_split.test.take([5, 0, 199])
    assert part.ids == [flowers_split.test.ids[i] for i in (5, 0, 199)] and part.labels.tolist() == [0, 0, 4]
    assert np.array_equal(part.images[2], flowers_split.test.images[199]) and len(part) == 3


def test_stratified_sample_warns_about_small_classes():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 6)
    with pytest.warns(SmallClassWarning, match=r"'b' \(3\)"):
        idx = D.stratified_sample(labels, 5, seed=0, classes=["a", "b", "c"])
    assert per_class(labels[idx], 3) == [5, 3, 5] and len(set(idx)) == len(idx)
    assert np.array_equal(idx, np.sort(idx))
    assert np.array_equal(D.stratified_sample(labels, 2, seed=3), D.stratified_sample(labels, 2, seed=3))
    with pytest.raises(DatasetError, match="positive integer"):
        D.stratified_sample(labels, 0, seed=0)

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


def test_class_with_only_unreadable_files(image_tree):
    root = image_tree({"a": 2, "b": 0})
    (root / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(BadImageWarning), pytest.raises(DatasetError, match=r"no readable training image.*\['b'\]"):
        load_dataset(str(root), image_size=16, test_fraction=0.0)
    (root / "b" / "broken.jpg").unlink()
    (root / "b" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"only non-image files \(1\)"):
        load_dataset(str(root), image_size=16)


def test_a_class_without_a_test_image_stops_before_training(image_tree):
    root = image_tree({"train/a": 2, "train/b": 2, "test/a": 1, "test/b": 0})
    (root / "test" / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(BadImageWarning), pytest.raises(DatasetError, match=r"no readable test image for classes \['b'\]"):
        load_dataset(str(root), image_size=16)


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
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"image_size": 0}, "image_size"),
    ]:
        with pytest.raises(DatasetError, match=message):
            load_dataset(str(tmp_path), **kwargs)  # arguments are checked before the folder
