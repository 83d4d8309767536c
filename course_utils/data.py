"""Datasets as decoded arrays: ``load_dataset`` turns a dataset spec into a train/test (and validation) Split.

Explained in notebook ``00_setup``. ``sources.open_source`` lists a spec (a folder, ``tfds:NAME``,
``sample:eurosat``, ``sklearn:digits``); this module samples it, stratified by class, and decodes only the
chosen images (``images.to_model_input``: the one crop/resize policy).

Seeds: the test images never depend on ``seed`` (every seed is tested on the same images, so runs can be
compared image by image); ``seed`` resamples the training images (``per_class``) and the validation carve.
Only numpy and PIL here: no TensorFlow, so this works on every Keras backend. Nothing on disk is modified.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from course_utils.images import DatasetError, Problem, caller_stacklevel, check_count, warn_skipped
from course_utils.sources import Pool, open_source

TEST_SEED = 0  # the train/test split and the test_per_class sample use this, whatever ``seed`` is
_TRAIN_STREAM, _TEST_STREAM, _VAL_STREAM = 0, 1, 3  # independent random streams of one seed


class SmallClassWarning(UserWarning):
    """A class has fewer images than the requested number per class; all of them are used (notebook 00_setup)."""


@dataclass
class ImageSet:
    """Decoded images with their labels (notebook 00_setup)."""

    images: np.ndarray  # uint8, (N, H, W, 3), RGB, already resized to the requested size
    labels: np.ndarray  # int64, (N,)
    classes: list[str]  # class names, index = label
    ids: list[str]  # one stable identifier per image (file path, or "tfds:NAME/split/index")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        """The images at ``indices``, in that order, with their labels and ids (same classes)."""
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet(self.images[indices], self.labels[indices], list(self.classes), [self.ids[i] for i in indices])


@dataclass
class Split:
    """The train, test and (with ``val_fraction``) validation ImageSets of one dataset spec (notebook 00_setup)."""

    train: ImageSet
    test: ImageSet
    spec: str  # the dataset spec it came from
    skipped: list[str] = field(default_factory=list)  # files that could not be read (already warned about)
    val: ImageSet | None = None  # carved out of the training images (load_dataset's val_fraction)


# --------------------------------------------------------------------------------------------------
# Sampling


def _class_orders(labels: np.ndarray, seed: int, stream: int = 0) -> dict[int, np.ndarray]:
    """One seeded random order of the indices of each class (independent of the other classes)."""
    labels = np.asarray(labels)
    return {
        int(c): np.random.default_rng([seed, stream, int(c)]).permutation(np.flatnonzero(labels == c))
        for c in np.unique(labels)
    }


def stratified_sample(
    labels: Sequence[int] | np.ndarray, per_class: int, seed: int = 0, classes: Sequence[str] | None = None
) -> np.ndarray:
    """Sorted indices of ``per_class`` randomly chosen items of each class (notebook 00_setup).

    The same seed gives the same items, and a smaller ``per_class`` gives a subset of a larger one.
    A class with fewer items is used whole, with one SmallClassWarning saying how many it has.
    """
    check_count("per_class", per_class)
    orders = _class_orders(np.asarray(labels), seed)
    short = {c: len(o) for c, o in orders.items() if len(o) < per_class}
    if short:
        named = ", ".join(f"{classes[c] if classes else c!r} ({n})" for c, n in short.items())
        warnings.warn(
            f"per_class={per_class}, but {len(short)} classes have fewer images: {named}; all of their images "
            "are used, so these classes are smaller than the others.",
            SmallClassWarning,
            stacklevel=caller_stacklevel(),
        )
    picked = [o[:per_class] for o in orders.values()]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def _split_indices(
    labels: np.ndarray, fraction: float, seed: int, stream: int = _TEST_STREAM
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split (kept, carved out): round(fraction * n) of each class are carved out
    (at least 1 and at most n-1 when a class has 2 or more items and fraction > 0)."""
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for order in _class_orders(labels, seed, stream).values():
        n = len(order)
        n_test = int(round(fraction * n))
        if fraction > 0 and n >= 2:
            n_test = min(max(n_test, 1), n - 1)
        test.append(order[:n_test])
        train.append(order[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


# --------------------------------------------------------------------------------------------------
# load_dataset


def _take(
    pool: Pool, per_class: int | None, seed: int, classes: list[str]
) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
    """Decode all items, or per_class of each class; unreadable picks are replaced by the class's next ones.

    Returns (images, pool indices, problems), sorted by pool index.
    """
    if per_class is None:
        chosen = np.arange(len(pool.labels))
    else:
        chosen = stratified_sample(pool.labels, per_class, seed, classes)
    images, ok, problems = pool.read(chosen)
    parts, kept = [images], [chosen[ok]]
    if per_class is not None:
        orders = _class_orders(pool.labels, seed)
        used = {c: min(per_class, len(o)) for c, o in orders.items()}
        failed = chosen[~ok]
        while len(failed):
            extra: list[int] = []
            for c, k in zip(*np.unique(pool.labels[failed], return_counts=True)):
                extra += list(orders[int(c)][used[int(c)] : used[int(c)] + k])
                used[int(c)] += int(k)
            if not extra:
                break
            more = np.asarray(extra, dtype=np.int64)
            images, ok, new_problems = pool.read(more)
            parts.append(images)
            kept.append(more[ok])
            problems += new_problems
            failed = more[~ok]
    indices = np.concatenate(kept)
    order = np.argsort(indices, kind="stable")
    return np.concatenate(parts)[order], indices[order], problems


def _image_set(pool: Pool, images: np.ndarray, indices: np.ndarray, classes: list[str]) -> ImageSet:
    return ImageSet(images, pool.labels[indices].astype(np.int64), list(classes), [pool.ids[i] for i in indices])


def _check_args(
    image_size: int, per_class: int | None, seed: int, test_fraction: float, test_per_class: int | None,
    val_fraction: float,
) -> None:
    check_count("image_size", image_size)
    check_count("per_class", per_class, allow_none=True)
    check_count("test_per_class", test_per_class, allow_none=True)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DatasetError(f"seed must be a non-negative integer, not {seed!r}")
    if not 0.0 <= float(test_fraction) < 1.0:
        raise DatasetError(f"test_fraction must be in [0, 1), not {test_fraction!r} (0.2 keeps 20 % for testing)")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), not {val_fraction!r} (0.2 keeps 20 % of train to validate)")


def _check_classes_present(train: ImageSet, test: ImageSet, spec: str, split_here: bool, test_fraction: float) -> None:
    """Every class needs a training image and (unless test_fraction=0 asks for no test part) a test image;
    otherwise DatasetError saying how many images each class needs (before any training starts)."""
    counts = np.bincount(train.labels, minlength=len(train.classes))
    empty = [c for c, n in zip(train.classes, counts) if n == 0]
    if empty:
        raise DatasetError(
            f"{spec}: no readable training image left for classes {empty} (see the BadImageWarning above); "
            "add readable images to them or remove those classes."
        )
    test_counts = np.bincount(test.labels, minlength=len(test.classes))
    missing = [i for i, n in enumerate(test_counts) if n == 0]
    if not missing or (split_here and test_fraction == 0):
        return
    names = [train.classes[i] for i in missing]
    if split_here:
        have = ", ".join(f"{train.classes[i]} has {counts[i]}" for i in missing[:20])
        raise DatasetError(
            f"{spec}: no test image for classes {names} ({have} readable). Each class needs at least 2 readable "
            "images when the dataset is split here: 1 to train on and 1 to test on. Add images to these "
            "classes, or remove them."
        )
    raise DatasetError(
        f"{spec}: no readable test image for classes {names}. Each class needs at least 1 readable image in "
        "the train folder and 1 in the test folder; add images to their test folders."
    )


def _carve_validation(train: ImageSet, val_fraction: float, seed: int, spec: str) -> tuple[ImageSet, ImageSet | None]:
    """(train, val): ``val_fraction`` of each class's training images, seeded and stratified, go to val."""
    if val_fraction == 0:
        return train, None
    counts = np.bincount(train.labels, minlength=len(train.classes))
    single = [c for c, n in zip(train.classes, counts) if n < 2]
    if single:
        raise DatasetError(
            f"{spec}: val_fraction={val_fraction} needs at least 2 training images per class (1 to train on, 1 to "
            f"validate on); classes {single} have 1. Raise per_class, add images, or use val_fraction=0."
        )
    kept, carved = _split_indices(train.labels, val_fraction, seed, _VAL_STREAM)
    return train.take(kept), train.take(carved)


def load_dataset(
    spec: str,
    image_size: int = 224,
    per_class: int | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    test_per_class: int | None = None,
    val_fraction: float = 0.0,
) -> Split:
    """Load a dataset spec as decoded train/test (and validation) ImageSets (notebook 00_setup).

    spec: a folder (``DIR/<class>/*``, or ``DIR/train/<class>`` + ``DIR/test/<class>``), ``tfds:NAME``,
    ``sample:eurosat`` or ``sklearn:digits``. Without its own test part, a dataset is split stratified by
    class, ``test_fraction`` of each class going to test. ``test_per_class`` keeps that many of each class
    of the test part. The test images never depend on ``seed``: every seed is tested on the same images.
    ``per_class`` keeps that many randomly chosen training images of each class (``seed`` picks them; a smaller
    ``per_class`` gives a subset of a larger one); then ``val_fraction`` of them (at least 1 per class, chosen
    with ``seed``) become ``Split.val``, the images to pick hyper-parameters on. Unreadable files are skipped
    and named in one BadImageWarning; structural problems raise DatasetError.
    """
    spec = str(spec)
    _check_args(image_size, per_class, seed, test_fraction, test_per_class, val_fraction)
    source = open_source(spec, image_size)
    train_pool, test_pool = source.train, source.test
    if test_pool is None:
        train_idx, test_idx = _split_indices(train_pool.labels, float(test_fraction), TEST_SEED)
        train_pool, test_pool = train_pool.subset(train_idx), train_pool.subset(test_idx)
    train_images, train_idx, train_problems = _take(train_pool, per_class, seed, source.classes)
    test_images, test_idx, test_problems = _take(test_pool, test_per_class, TEST_SEED, source.classes)
    problems = source.ignored + train_problems + test_problems
    warn_skipped(problems)
    train = _image_set(train_pool, train_images, train_idx, source.classes)
    test = _image_set(test_pool, test_images, test_idx, source.classes)
    _check_classes_present(train, test, spec, source.test is None, float(test_fraction))
    train, val = _carve_validation(train, float(val_fraction), seed, spec)
    return Split(train, test, spec, [name for name, _ in problems], val)


def class_counts(spec: str, seed: int = 0, test_fraction: float = 0.2) -> dict[str, int]:
    """Images per class in the train part ``load_dataset`` would use (before ``per_class`` and the validation
    carve), counted without decoding (notebook ``08_domain_distance``). A dataset with its own test part
    counts its train part; otherwise the ``1 - test_fraction`` share the split keeps. The split does not
    depend on ``seed``, so neither do the counts; ``seed`` is checked like ``load_dataset``'s. Raises
    DatasetError for a bad spec.
    """
    _check_args(1, None, seed, test_fraction, None, 0.0)
    source = open_source(str(spec), 8)
    labels = source.train.labels
    if source.test is None:
        labels = labels[_split_indices(labels, float(test_fraction), TEST_SEED)[0]]
    counts = np.bincount(labels, minlength=len(source.classes))
    return dict(zip(source.classes, (int(c) for c in counts)))


def _counts_text(image_set: ImageSet) -> str:
    counts = np.bincount(image_set.labels, minlength=len(image_set.classes))
    if len(counts) <= 10:
        detail = ", ".join(f"{c} {n}" for c, n in zip(image_set.classes, counts))
    else:
        detail = f"{counts.min()}-{counts.max()} per class"
    return f"{len(image_set)} images ({detail})"


def describe(split: Split) -> str:
    """One paragraph: spec, classes, images per class in train, validation (when carved) and test, image size,
    skipped files (notebook 00_setup)."""
    classes = split.train.classes
    names = ", ".join(classes[:10]) + (f", ... ({len(classes)} in all)" if len(classes) > 10 else "")
    size = "x".join(str(s) for s in split.train.images.shape[1:3]) or "?"
    skipped = (
        f"{len(split.skipped)} unreadable files were skipped (Split.skipped lists them)."
        if split.skipped
        else "No files were skipped."
    )
    val = f"Validation: {_counts_text(split.val)}. " if split.val is not None else ""
    return (
        f"{split.spec}: {len(classes)} classes ({names}). Train: {_counts_text(split.train)}. {val}"
        f"Test: {_counts_text(split.test)}. Images are {size} RGB uint8. {skipped}"
    )
