"""Where images come from: one dataset spec string opens a labelled pool of images (notebook ``00_setup``).

A dataset spec is one of:

* a folder: ``DIR/<class>/*.jpg`` (``data.load_dataset`` splits it into train/test, stratified), or
  ``DIR/train/<class>/*`` + ``DIR/test/<class>/*`` (``val``/``validation`` also accepted for test);
* ``tfds:NAME``, e.g. ``tfds:tf_flowers``, ``tfds:oxford_flowers102``, ``tfds:caltech_birds2011``
  (stored under ``settings.tfds_data_dir()``: ``$COURSE_DATA_DIR`` or ``<repo>/data/tfds``);
* ``sample:eurosat``: 300 EuroSAT RGB photos that ship with the course;
* ``sklearn:digits``: 8x8 grayscale digits, far from ImageNet, upscaled and converted to RGB.

``open_source(spec, image_size)`` lists a spec without decoding anything: a ``Source`` holds the class names
and a train ``Pool`` (and a test ``Pool`` when the dataset has its own test part); ``Pool.read(indices)``
decodes the chosen items. TensorFlow is imported only by the ``tfds:`` branch. Nothing on disk is modified.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from course_utils.images import DatasetError, PathLike, Problem, decode_many, to_model_input, warn_skipped
from course_utils.settings import PACKAGE_DIR, tfds_data_dir

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
JUNK_NAMES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx", "__pycache__", ".ds_store"})
TEST_FOLDER_NAMES = ("test", "val", "validation")
COURSE_TFDS = ("tf_flowers", "oxford_flowers102", "caltech_birds2011")
# Download sizes from the TFDS catalog, said before a first download (tfds itself knows them only online).
TFDS_DOWNLOAD_SIZES = {"tf_flowers": "218 MiB", "eurosat/rgb": "90 MiB", "oxford_flowers102": "329 MiB",
                       "caltech_birds2011": "1.1 GiB"}
SPEC_HELP = "a dataset spec is a folder, tfds:NAME, sample:eurosat or sklearn:digits"
SAMPLES = {"eurosat": "a 300-image EuroSAT RGB sample that ships with the course (MIT licence)"}


# --------------------------------------------------------------------------------------------------
# Listing folders


def _is_junk(name: str) -> bool:
    """Hidden files/folders and OS clutter, skipped without a word."""
    return name.startswith(".") or name.lower() in JUNK_NAMES


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _class_files(folder: Path) -> tuple[list[str], list[str]]:
    """Image files and other (non-junk) files under one class folder, sorted, subfolders included."""
    images: list[str] = []
    others: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _is_junk(d))
        for name in sorted(filenames):
            if not _is_junk(name):
                (images if _is_image_name(name) else others).append(os.path.join(dirpath, name))
    return images, others


def _class_dirs(root: Path) -> list[Path]:
    """The class subfolders of root; raises DatasetError when there are none or only one."""
    if not root.is_dir():
        raise DatasetError(f"no such folder {str(root)!r} (resolved to {root.resolve()}); {SPEC_HELP}")
    entries = sorted(root.iterdir(), key=lambda p: p.name)
    dirs = [p for p in entries if p.is_dir() and not _is_junk(p.name)]
    if not dirs:
        loose = [p for p in entries if p.is_file() and _is_image_name(p.name)]
        if loose:
            raise DatasetError(
                f"{root} has {len(loose)} images directly inside and no class subfolders. Put the images of "
                f"each class in their own subfolder, e.g. {root / 'cats'}/*.jpg and {root / 'dogs'}/*.jpg "
                "(the subfolder names become the class names)."
            )
        raise DatasetError(
            f"{root} has no class subfolders and no images. A dataset folder holds one subfolder per class "
            f"(e.g. {root / 'cats'}/*.jpg), or train/ and test/ folders that each hold them."
        )
    if len(dirs) == 1:
        raise DatasetError(
            f"{root} has only one class subfolder ({dirs[0].name!r}); a classifier needs at least 2 classes. "
            "Add a subfolder of images for each other class."
        )
    return dirs


def _scan_folder(root: Path) -> tuple[list[str], np.ndarray, list[str], list[Problem]]:
    """paths, labels, classes, and the non-image files found in class folders (to warn about)."""
    dirs = _class_dirs(root)
    paths: list[str] = []
    labels: list[int] = []
    ignored: list[Problem] = []
    for label, folder in enumerate(dirs):
        images, others = _class_files(folder)
        if not images:
            what = f"only non-image files ({len(others)})" if others else "no files"
            raise DatasetError(
                f"class folder {folder} has {what}. Add images to it (.jpg, .png, ...) or remove the folder; "
                f"every class subfolder of {root} is taken as a class."
            )
        paths += images
        labels += [label] * len(images)
        ignored += [(p, "not an image file (by its extension)") for p in others]
    loose = [p for p in sorted(root.iterdir()) if p.is_file() and _is_image_name(p.name) and not _is_junk(p.name)]
    ignored += [(str(p), "not inside a class subfolder") for p in loose]
    return paths, np.asarray(labels, dtype=np.int64), [d.name for d in dirs], ignored


def list_image_folder(path: PathLike) -> tuple[list[str], np.ndarray, list[str]]:
    """List ``path/<class>/**/*`` image files: (paths, int64 labels, sorted class names) (notebook 00_setup).

    Hidden files and OS clutter (.DS_Store, Thumbs.db, ...) are skipped silently; other non-image files
    are skipped with one BadImageWarning. Raises DatasetError for a missing folder, no class subfolders,
    a single class or an empty class folder. Nothing is decoded here.
    """
    paths, labels, classes, ignored = _scan_folder(Path(path).expanduser())
    warn_skipped(ignored)
    return paths, labels, classes


# --------------------------------------------------------------------------------------------------
# Sources: a pool of labelled items that can decode any subset of itself


Reader = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, list[Problem]]]


@dataclass
class Pool:
    """Labelled items, nothing decoded yet: ``read(indices)`` -> (uint8 images of the readable ones, ok mask,
    [(id, reason)] for the others). ``subset(indices)`` is a pool of some of them (notebook ``00_setup``)."""

    ids: list[str]
    labels: np.ndarray
    read: Reader

    def subset(self, indices: np.ndarray) -> Pool:
        indices = np.asarray(indices, dtype=np.int64)
        return Pool([self.ids[i] for i in indices], self.labels[indices], lambda sub: self.read(indices[sub]))


@dataclass
class Source:
    """A dataset spec, opened: class names, the train pool, the test pool (None: ``data.load_dataset`` splits
    the train pool) and the non-image files found while listing (warned about once, with the bad images)."""

    classes: list[str]
    train: Pool
    test: Pool | None  # None: split train with the seed
    ignored: list[Problem] = field(default_factory=list)


def _file_pool(paths: list[str], labels: np.ndarray, image_size: int) -> Pool:
    def read(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
        chosen = [paths[i] for i in idx]
        return decode_many(chosen, chosen, image_size)

    return Pool(list(paths), labels, read)


def _folder_source(root: Path, image_size: int) -> Source:
    """DIR/<class>/* (split later), or DIR/train/<class> + DIR/test/<class> (notebook 00_setup)."""
    sub = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    if "train" not in sub:
        paths, labels, classes, ignored = _scan_folder(root)
        return Source(classes, _file_pool(paths, labels, image_size), None, ignored)
    paths, labels, classes, ignored = _scan_folder(sub["train"])
    test_dir = next((sub[n] for n in TEST_FOLDER_NAMES if n in sub), None)
    if test_dir is None:
        return Source(classes, _file_pool(paths, labels, image_size), None, ignored)
    t_paths, t_labels, t_classes, t_ignored = _scan_folder(test_dir)
    if t_classes != classes:
        only_train = sorted(set(classes) - set(t_classes))
        only_test = sorted(set(t_classes) - set(classes))
        raise DatasetError(
            f"the class folders of {sub['train']} and {test_dir} differ (only in train: {only_train}; only in "
            f"test: {only_test}). Give both the same class subfolders, with the same names."
        )
    return Source(
        classes, _file_pool(paths, labels, image_size), _file_pool(t_paths, t_labels, image_size), ignored + t_ignored
    )


def sample_dir(name: str) -> Path:
    """The folder of a sample that ships inside the package, e.g. ``sample:eurosat`` (notebook 00_setup)."""
    return PACKAGE_DIR / "resources" / name


def _digits_source(image_size: int) -> Source:
    """sklearn's 8x8 digits (values 0-16) as RGB uint8 0-255, upscaled by ``to_model_input`` (notebook 00_setup)."""
    from sklearn.datasets import load_digits  # lazy: sklearn.datasets takes seconds to import; only digits need it

    digits = load_digits()
    pixels = np.clip(np.round(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)

    def read(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
        images = np.zeros((len(idx), image_size, image_size, 3), dtype=np.uint8)
        for k, i in enumerate(idx):
            images[k] = to_model_input(pixels[int(i)], image_size)
        return images, np.ones(len(idx), dtype=bool), []

    ids = [f"sklearn:digits/{i}" for i in range(len(pixels))]
    pool = Pool(ids, np.asarray(digits.target, dtype=np.int64), read)
    return Source([str(c) for c in digits.target_names], pool, None)


# --------------------------------------------------------------------------------------------------
# TensorFlow Datasets (imported lazily)


def _import_tfds() -> Any:
    try:
        if importlib.util.find_spec("tensorflow") is None:
            raise ImportError("tensorflow is not installed")
        from course_utils.quiet import tensorflow_datasets as tfds  # lazy: optional, loads TensorFlow
    except ImportError as exc:
        raise DatasetError(
            "tfds: specs need tensorflow-datasets (pip install tensorflow tensorflow-datasets); "
            "or use a folder spec, or sample:eurosat (ships with the course)"
        ) from exc
    return tfds


def _check_tfds_name(tfds: Any, name: str) -> None:
    """DatasetError with close names when NAME is not a registered TFDS builder (no network)."""
    base = re.split(r"[/:]", name, maxsplit=1)[0]
    known = list(tfds.list_builders(with_community_datasets=False))
    if base and base in known:
        return
    close = difflib.get_close_matches(base, known, n=5, cutoff=0.6)
    suggestions = ", ".join(f"tfds:{n}" for n in (close or COURSE_TFDS))
    raise DatasetError(
        f"unknown TFDS dataset {name!r}. Did you mean {suggestions}? The course uses tfds:tf_flowers, "
        "tfds:oxford_flowers102 and tfds:caltech_birds2011; tensorflow_datasets.list_builders() lists all "
        f"{len(known)} names. ({SPEC_HELP})"
    )


def _tfds_builder(tfds: Any, name: str) -> Any:
    """The builder, downloaded and prepared if needed; offline failures become a DatasetError."""
    data_dir = tfds_data_dir()
    try:
        builder = tfds.builder(name, data_dir=str(data_dir))
        if not builder.is_prepared():
            size = getattr(getattr(builder, "info", None), "download_size", None)
            size = size if size else TFDS_DOWNLOAD_SIZES.get(name, "the dataset")  # tfds knows it only online
            print(f"tfds:{name}: downloading {size} once into {data_dir}; later runs read it from there.",
                  flush=True)
            builder.download_and_prepare()
    except ImportError as exc:  # e.g. etils needs importlib_resources to download
        raise DatasetError(
            f"tfds:{name} cannot be downloaded: the Python package {exc.name!r} is missing "
            f"(pip install {(exc.name or '').replace('_', '-')}), then run again with internet access."
        ) from exc
    except Exception as exc:  # noqa: BLE001 - network, disk and manual-download errors all end here
        raise DatasetError(
            f"could not get tfds:{name} into {data_dir} ({type(exc).__name__}: {str(exc)[:300]}). "
            "Downloading needs internet access: run this once online, or copy an already prepared copy of "
            f"the dataset there (or set COURSE_DATA_DIR to a folder that has it), or use sample:eurosat (real "
            "photos that ship with the course) or a folder of your own."
        ) from exc
    return builder


def _tfds_pool(tfds: Any, builder: Any, name: str, split: str, image_size: int) -> Pool:
    """Labels now (one pass); encoded image bytes of the chosen indices later, decoded with PIL."""
    image_key, label_key = builder.info.supervised_keys
    dataset = builder.as_dataset(
        split=split, shuffle_files=False, decoders={image_key: tfds.decode.SkipDecoding()}
    )
    labels = np.fromiter(tfds.as_numpy(dataset.map(lambda ex: ex[label_key])), dtype=np.int64)
    ids = [f"tfds:{name}/{split}/{i}" for i in range(len(labels))]

    def read(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
        wanted = {int(i) for i in idx}
        blobs: dict[int, bytes] = {}
        if not wanted:
            return np.zeros((0, image_size, image_size, 3), dtype=np.uint8), np.zeros(0, dtype=bool), []
        for i, blob in enumerate(tfds.as_numpy(dataset.map(lambda ex: ex[image_key]))):
            if i in wanted:
                blobs[i] = bytes(blob)
            if len(blobs) == len(wanted):
                break
        return decode_many([blobs[int(i)] for i in idx], [ids[int(i)] for i in idx], image_size)

    return Pool(ids, labels, read)


def _tfds_source(name: str, image_size: int) -> Source:
    """tfds:NAME, using its train and test (or validation) splits when they exist (notebook 00_setup)."""
    tfds = _import_tfds()
    _check_tfds_name(tfds, name)
    builder = _tfds_builder(tfds, name)
    keys = builder.info.supervised_keys
    if not keys or len(keys) != 2 or not hasattr(builder.info.features[keys[1]], "names"):
        raise DatasetError(f"tfds:{name} is not an (image, class label) dataset; pick an image classification one")
    classes = list(builder.info.features[keys[1]].names)
    splits = set(builder.info.splits.keys())
    if "train" not in splits:
        raise DatasetError(f"tfds:{name} has no 'train' split (it has {sorted(splits)}); pick another dataset")
    test = next((s for s in TEST_FOLDER_NAMES if s in splits), None)
    train_pool = _tfds_pool(tfds, builder, name, "train", image_size)
    test_pool = _tfds_pool(tfds, builder, name, test, image_size) if test else None
    return Source(classes, train_pool, test_pool)


# --------------------------------------------------------------------------------------------------
# The spec


def open_source(spec: str, image_size: int) -> Source:
    """List a dataset spec (see the module docstring) without decoding: a ``Source`` whose pools decode to
    ``image_size`` px when read (notebook ``00_setup``). ``data.load_dataset`` samples and decodes it;
    ``data.class_counts`` only counts. Raises DatasetError, saying what to do, for a spec that cannot be used.
    """
    if not spec.strip():
        raise DatasetError(f"the dataset spec is empty; {SPEC_HELP}")
    if spec.startswith("tfds:"):
        return _tfds_source(spec[len("tfds:") :].strip(), image_size)
    if spec.startswith("sample:"):
        name = spec[len("sample:") :].strip()
        if name not in SAMPLES:
            raise DatasetError(f"unknown sample {spec!r}: the course ships {', '.join('sample:' + n for n in SAMPLES)}")
        return _folder_source(sample_dir(name), image_size)
    if spec.startswith("sklearn:"):
        if spec != "sklearn:digits":
            raise DatasetError(f"unknown spec {spec!r}: the only sklearn dataset is sklearn:digits ({SPEC_HELP})")
        return _digits_source(image_size)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _folder_source(path, image_size)
    if path.exists():
        raise DatasetError(f"{spec!r} is a file, not a folder; {SPEC_HELP}")
    raise DatasetError(f"no such folder {spec!r} (resolved to {path.resolve()}); {SPEC_HELP}")
