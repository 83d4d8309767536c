"""Datasets for the course: one dataset spec string, listing, sampling, decoding and input pipelines.

Notebook ``00_setup`` explains dataset specs, loading and bad input; notebook ``02_replace_softmax``
explains the pipelines (``make_tf_dataset``, ``ArrayBatches``, ``make_batches``).

A dataset spec is one of:

* a folder: ``DIR/<class>/*.jpg`` (split into train/test with the seed, stratified), or
  ``DIR/train/<class>/*`` + ``DIR/test/<class>/*`` (``val``/``validation`` also accepted for test);
* ``tfds:NAME``, e.g. ``tfds:tf_flowers``, ``tfds:oxford_flowers102``, ``tfds:caltech_birds2011``
  (stored under ``$COURSE_DATA_DIR`` or ``<repo>/data/tfds``);
* ``sklearn:digits``: 8x8 grayscale digits, far from ImageNet, upscaled and converted to RGB.

Listing, sampling and decoding use only Python, numpy and PIL, so they work on Keras' JAX backend
without TensorFlow. TensorFlow is imported lazily by the ``tfds:`` branch and ``make_tf_dataset``;
Keras by ``ArrayBatches``. Importing this module imports neither. Nothing on disk is ever modified.
"""

from __future__ import annotations

import difflib
import importlib.util
import io
import math
import os
import re
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from course_utils.settings import progress_bar, tfds_data_dir

# ArrayBatches is created on first access (module __getattr__) because it subclasses a Keras class;
# it is left out of __all__ so that a star import stays cheap.
__all__ = [
    "BadImageWarning",
    "DatasetError",
    "ImageSet",
    "ImageTooLargeError",
    "SmallClassWarning",
    "Split",
    "decode_image",
    "decode_images",
    "decode_or_reason",
    "describe",
    "list_image_folder",
    "load_dataset",
    "make_batches",
    "make_tf_dataset",
    "stratified_sample",
    "tfds_data_dir",
]

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
PROGRESS_MIN_IMAGES = 200  # show a progress bar from this many images on (COURSE_PROGRESS=0 turns it off)
MAX_LISTED = 20  # bad files named in the warning
ZOOM_MIN = 0.85  # augmentation: a random square crop of 85-100 % of the side, resized back
CACHE_MAX_BYTES = 2**30  # make_tf_dataset caches preprocessed float32 batches only up to this size
# Images with more pixels are skipped before decoding (PIL's own limit, Image.MAX_IMAGE_PIXELS, is 89 million):
# a decoding thread then holds at most about 40e6 x 4 bytes = 160 MB, whatever the file claims.
MAX_PIXELS = 40_000_000

PathLike = Union[str, "os.PathLike[str]"]
Problem = tuple[str, str]  # (file or id, reason)


class DatasetError(ValueError):
    """A dataset spec or folder that cannot be used; the message says what to do next (notebook 00_setup)."""


class BadImageWarning(UserWarning):
    """Some files could not be read as images and were skipped (notebook 00_setup)."""


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


@dataclass
class Split:
    """A train and a test ImageSet from one dataset spec (notebook 00_setup)."""

    train: ImageSet
    test: ImageSet
    spec: str  # the dataset spec it came from
    skipped: list[str] = field(default_factory=list)  # files that could not be read (already warned about)


# --------------------------------------------------------------------------------------------------
# Listing folders


def _stacklevel() -> int:
    """The stacklevel of the first caller outside this module, so that warnings point at the user's code."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    return level


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
    _warn_bad(ignored)
    return paths, labels, classes


# --------------------------------------------------------------------------------------------------
# Sampling


def _class_orders(labels: np.ndarray, seed: int, stream: int = 0) -> dict[int, np.ndarray]:
    """One seeded random order of the indices of each class (independent of the other classes)."""
    labels = np.asarray(labels)
    return {
        int(c): np.random.default_rng([seed, stream, int(c)]).permutation(np.flatnonzero(labels == c))
        for c in np.unique(labels)
    }


def _check_count(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
        raise DatasetError(f"{name} must be a positive integer or None (all images), not {value!r}")


def stratified_sample(
    labels: Sequence[int] | np.ndarray, per_class: int, seed: int = 0, classes: Sequence[str] | None = None
) -> np.ndarray:
    """Sorted indices of ``per_class`` randomly chosen items of each class (notebook 00_setup).

    The same seed gives the same items, and a smaller ``per_class`` gives a subset of a larger one.
    A class with fewer items is used whole, with one SmallClassWarning saying how many it has.
    """
    _check_count("per_class", per_class)
    orders = _class_orders(np.asarray(labels), seed)
    short = {c: len(o) for c, o in orders.items() if len(o) < per_class}
    if short:
        named = ", ".join(f"{classes[c] if classes else c!r} ({n})" for c, n in short.items())
        warnings.warn(
            f"per_class={per_class}, but {len(short)} classes have fewer images: {named}; all of their images "
            "are used, so these classes are smaller than the others.",
            SmallClassWarning,
            stacklevel=_stacklevel(),
        )
    picked = [o[:per_class] for o in orders.values()]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def _split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded train/test split: round(test_fraction * n) of each class go to test
    (at least 1 and at most n-1 when a class has 2 or more items and test_fraction > 0)."""
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for order in _class_orders(labels, seed, stream=1).values():
        n = len(order)
        n_test = int(round(test_fraction * n))
        if test_fraction > 0 and n >= 2:
            n_test = min(max(n_test, 1), n - 1)
        test.append(order[:n_test])
        train.append(order[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


# --------------------------------------------------------------------------------------------------
# Decoding (PIL only)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: 16-bit scaled to 8-bit, transparency composited on white, CMYK/L/P converted."""
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0  # 16-bit -> 8-bit
        elif img.mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        img = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return img.convert("RGB")


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (phone photos); a broken EXIF block is ignored."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a bad EXIF block must not lose the picture
        return img


class ImageTooLargeError(ValueError):
    """An image with more than MAX_PIXELS pixels: skipped before decoding, like a corrupt file (00_setup)."""


def _check_pixels(img: Image.Image) -> None:
    """ImageTooLargeError when the header announces more than MAX_PIXELS pixels (nothing decoded yet)."""
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise ImageTooLargeError(
            f"{width}x{height} pixels is more than the {MAX_PIXELS / 1e6:g} million this course decodes "
            "(a decompression bomb, or a huge scan); shrink it first"
        )


def decode_or_reason(source: PathLike | bytes, image_size: int = 224) -> tuple[np.ndarray | None, str | None]:
    """(image, None), or (None, why it cannot be read): ``decode_image`` that never raises. ``python -m
    course_utils predict`` uses it to report a bad file and go on with the next one (notebook 00_setup)."""
    return _decode_one(source, image_size)


def decode_image(path: PathLike | bytes, image_size: int = 224) -> np.ndarray:
    """Read one image file (or its encoded bytes) as RGB uint8 (image_size, image_size, 3) (notebook 00_setup).

    Reads with PIL, applies the EXIF orientation, converts any mode to RGB (alpha on white, 16-bit scaled),
    resizes the shorter side to image_size and crops the centre square. JPEGs are decoded at a reduced
    scale when much larger than needed (fast). Raises the PIL/OS error when the file cannot be read, and
    ImageTooLargeError, before decoding, for more than MAX_PIXELS pixels (a decompression bomb).
    """
    source = io.BytesIO(path) if isinstance(path, (bytes, bytearray, memoryview)) else path
    with Image.open(source) as img:
        _check_pixels(img)
        img.draft(None, (image_size, image_size))  # JPEG only: DCT scaling, result still >= image_size
        img.load()
        rgb = _to_rgb(_upright(img))
    square = ImageOps.fit(rgb, (image_size, image_size), method=Image.Resampling.BILINEAR)
    return np.asarray(square, dtype=np.uint8)


def _decode_one(source: PathLike | bytes, image_size: int) -> tuple[np.ndarray | None, str | None]:
    """(image, None) or (None, reason)."""
    try:
        empty = len(source) == 0 if isinstance(source, (bytes, bytearray)) else os.path.getsize(source) == 0
        if empty:
            return None, "empty file (0 bytes)"
        return decode_image(source, image_size), None
    except UnidentifiedImageError:
        return None, "not an image PIL can read (corrupt, or another file type)"
    except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped and reported
        return None, f"{type(exc).__name__}: {exc}"[:200]


def _progress_bar(total: int, progress: bool | None) -> Any:
    if progress is None:
        progress = total >= PROGRESS_MIN_IMAGES
    return progress_bar(total=total, desc="decoding images", unit="img", disable=not progress, leave=False)


def _decode_many(
    sources: Sequence[PathLike | bytes], names: Sequence[str], image_size: int, progress: bool | None = None
) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
    """Decode in threads (PIL releases the GIL): (images of the readable ones, ok mask, problems)."""
    out = np.zeros((len(sources), image_size, image_size, 3), dtype=np.uint8)
    ok = np.zeros(len(sources), dtype=bool)
    problems: list[Problem] = []
    workers = max(1, min(8, os.cpu_count() or 1, len(sources)))
    with _progress_bar(len(sources), progress) as bar, ThreadPoolExecutor(workers) as pool:
        for i, (image, reason) in enumerate(pool.map(lambda s: _decode_one(s, image_size), sources)):
            if image is None:
                problems.append((names[i], reason))
            else:
                out[i], ok[i] = image, True
            bar.update(1)
    return (out if ok.all() else out[ok]), ok, problems


def _warn_bad(problems: Sequence[Problem]) -> None:
    """One BadImageWarning naming the skipped files and what to do."""
    if not problems:
        return
    lines = [f"  {name}: {reason}" for name, reason in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more (all listed in Split.skipped)")
    warnings.warn(
        f"skipped {len(problems)} files that are not readable images:\n" + "\n".join(lines) + "\n"
        "Delete or fix these files (re-save or re-download them), or move them out of the dataset folder; "
        "nothing was changed on disk.",
        BadImageWarning,
        stacklevel=_stacklevel(),
    )


def decode_images(
    paths: Sequence[PathLike], image_size: int = 224, progress: bool | None = None, warn: bool = True
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode many files: (uint8 (K, S, S, 3) images, indices of the K readable paths, skipped paths).

    Unreadable files are skipped and named in one BadImageWarning (unless warn=False). A tqdm bar shows
    from 200 images on; progress=False or the environment variable COURSE_PROGRESS=0 hides it.
    Explained in notebook 00_setup.
    """
    names = [str(p) for p in paths]
    images, ok, problems = _decode_many(names, names, image_size, progress)
    if warn:
        _warn_bad(problems)
    return images, np.flatnonzero(ok), [name for name, _ in problems]


# --------------------------------------------------------------------------------------------------
# Sources: a pool of labelled items that can decode any subset of itself


Reader = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, list[Problem]]]


@dataclass
class _Pool:
    """Labelled items; read(indices) -> (images of the readable ones, ok mask, problems)."""

    ids: list[str]
    labels: np.ndarray
    read: Reader

    def subset(self, indices: np.ndarray) -> _Pool:
        indices = np.asarray(indices, dtype=np.int64)
        return _Pool([self.ids[i] for i in indices], self.labels[indices], lambda sub: self.read(indices[sub]))


@dataclass
class _Source:
    classes: list[str]
    train: _Pool
    test: _Pool | None  # None: split train with the seed
    ignored: list[Problem] = field(default_factory=list)


def _file_pool(paths: list[str], labels: np.ndarray, image_size: int) -> _Pool:
    def read(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
        chosen = [paths[i] for i in idx]
        return _decode_many(chosen, chosen, image_size)

    return _Pool(list(paths), labels, read)


def _folder_source(root: Path, image_size: int) -> _Source:
    """DIR/<class>/* (split later), or DIR/train/<class> + DIR/test/<class> (notebook 00_setup)."""
    sub = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    if "train" not in sub:
        paths, labels, classes, ignored = _scan_folder(root)
        return _Source(classes, _file_pool(paths, labels, image_size), None, ignored)
    paths, labels, classes, ignored = _scan_folder(sub["train"])
    test_dir = next((sub[n] for n in TEST_FOLDER_NAMES if n in sub), None)
    if test_dir is None:
        return _Source(classes, _file_pool(paths, labels, image_size), None, ignored)
    t_paths, t_labels, t_classes, t_ignored = _scan_folder(test_dir)
    if t_classes != classes:
        only_train = sorted(set(classes) - set(t_classes))
        only_test = sorted(set(t_classes) - set(classes))
        raise DatasetError(
            f"the class folders of {sub['train']} and {test_dir} differ (only in train: {only_train}; only in "
            f"test: {only_test}). Give both the same class subfolders, with the same names."
        )
    return _Source(
        classes, _file_pool(paths, labels, image_size), _file_pool(t_paths, t_labels, image_size), ignored + t_ignored
    )


def sample_dir(name: str) -> Path:
    """The folder of a sample that ships inside the package, e.g. ``sample:eurosat`` (notebook 00_setup)."""
    return Path(__file__).resolve().parent / "resources" / name


def _digits_source(image_size: int) -> _Source:
    """sklearn's 8x8 digits (values 0-16) as RGB uint8 0-255, upscaled bilinearly (notebook 00_setup)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.clip(np.round(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)

    def upscale(i: int) -> np.ndarray:
        big = Image.fromarray(pixels[i], "L").resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(big.convert("RGB"), dtype=np.uint8)

    def read(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
        images = np.zeros((len(idx), image_size, image_size, 3), dtype=np.uint8)
        for k, i in enumerate(idx):
            images[k] = upscale(int(i))
        return images, np.ones(len(idx), dtype=bool), []

    ids = [f"sklearn:digits/{i}" for i in range(len(pixels))]
    pool = _Pool(ids, np.asarray(digits.target, dtype=np.int64), read)
    return _Source([str(c) for c in digits.target_names], pool, None)


# --------------------------------------------------------------------------------------------------
# TensorFlow Datasets (imported lazily)


def _import_tfds() -> Any:
    try:
        if importlib.util.find_spec("tensorflow") is None:
            raise ImportError("tensorflow is not installed")
        from course_utils.quiet import tensorflow_datasets as tfds
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


def _tfds_pool(tfds: Any, builder: Any, name: str, split: str, image_size: int) -> _Pool:
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
        return _decode_many([blobs[int(i)] for i in idx], [ids[int(i)] for i in idx], image_size)

    return _Pool(ids, labels, read)


def _tfds_source(name: str, image_size: int) -> _Source:
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
    return _Source(classes, train_pool, test_pool)


# --------------------------------------------------------------------------------------------------
# load_dataset


def _open_source(spec: str, image_size: int) -> _Source:
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


def _take(
    pool: _Pool, per_class: int | None, seed: int, classes: list[str]
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


def _image_set(pool: _Pool, images: np.ndarray, indices: np.ndarray, classes: list[str]) -> ImageSet:
    return ImageSet(images, pool.labels[indices].astype(np.int64), list(classes), [pool.ids[i] for i in indices])


def _check_args(
    image_size: int, per_class: int | None, seed: int, test_fraction: float, test_per_class: int | None
) -> None:
    _check_count("image_size", image_size)
    _check_count("per_class", per_class)
    _check_count("test_per_class", test_per_class)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DatasetError(f"seed must be a non-negative integer, not {seed!r}")
    if not 0.0 <= float(test_fraction) < 1.0:
        raise DatasetError(f"test_fraction must be in [0, 1), not {test_fraction!r} (0.2 keeps 20 % for testing)")


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
        have = ", ".join(f"{train.classes[i]} has {counts[i]}" for i in missing[:MAX_LISTED])
        raise DatasetError(
            f"{spec}: no test image for classes {names} ({have} readable). Each class needs at least 2 readable "
            "images when the dataset is split here: 1 to train on and 1 to test on. Add images to these "
            "classes, or remove them."
        )
    raise DatasetError(
        f"{spec}: no readable test image for classes {names}. Each class needs at least 1 readable image in "
        "the train folder and 1 in the test folder; add images to their test folders."
    )


def load_dataset(
    spec: str,
    image_size: int = 224,
    per_class: int | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    test_per_class: int | None = None,
) -> Split:
    """Load a dataset spec as decoded train/test ImageSets (notebook 00_setup).

    spec: a folder (``DIR/<class>/*``, or ``DIR/train/<class>`` + ``DIR/test/<class>``), ``tfds:NAME`` or
    ``sklearn:digits``. Without its own test part, a dataset is split stratified by class with ``seed``,
    ``test_fraction`` of each class going to test. ``per_class`` / ``test_per_class`` then keep that many
    randomly chosen images of each class of the train / test part (same seed, same images). Unreadable files
    are skipped and named in one BadImageWarning; structural problems raise DatasetError.
    """
    spec = str(spec)
    _check_args(image_size, per_class, seed, test_fraction, test_per_class)
    source = _open_source(spec, image_size)
    train_pool, test_pool = source.train, source.test
    if test_pool is None:
        train_idx, test_idx = _split_indices(train_pool.labels, float(test_fraction), seed)
        train_pool, test_pool = train_pool.subset(train_idx), train_pool.subset(test_idx)
    train_images, train_idx, train_problems = _take(train_pool, per_class, seed, source.classes)
    test_images, test_idx, test_problems = _take(test_pool, test_per_class, seed, source.classes)
    problems = source.ignored + train_problems + test_problems
    _warn_bad(problems)
    train = _image_set(train_pool, train_images, train_idx, source.classes)
    test = _image_set(test_pool, test_images, test_idx, source.classes)
    _check_classes_present(train, test, spec, source.test is None, float(test_fraction))
    return Split(train, test, spec, [name for name, _ in problems])


def _counts_text(image_set: ImageSet) -> str:
    counts = np.bincount(image_set.labels, minlength=len(image_set.classes))
    if len(counts) <= 10:
        detail = ", ".join(f"{c} {n}" for c, n in zip(image_set.classes, counts))
    else:
        detail = f"{counts.min()}-{counts.max()} per class"
    return f"{len(image_set)} images ({detail})"


def describe(split: Split) -> str:
    """One paragraph: spec, classes, images per class in train and test, image size, skipped files (00_setup)."""
    classes = split.train.classes
    names = ", ".join(classes[:10]) + (f", ... ({len(classes)} in all)" if len(classes) > 10 else "")
    size = "x".join(str(s) for s in split.train.images.shape[1:3]) or "?"
    skipped = (
        f"{len(split.skipped)} unreadable files were skipped (Split.skipped lists them)."
        if split.skipped
        else "No files were skipped."
    )
    return (
        f"{split.spec}: {len(classes)} classes ({names}). Train: {_counts_text(split.train)}. "
        f"Test: {_counts_text(split.test)}. Images are {size} RGB uint8. {skipped}"
    )


# --------------------------------------------------------------------------------------------------
# Pipelines (notebook 02_replace_softmax)


def _check_arrays(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DatasetError(f"images must be an (N, H, W, 3) array, got shape {images.shape}")
    if len(images) != len(labels):
        raise DatasetError(f"{len(images)} images but {len(labels)} labels; they must match")
    _check_count("batch_size", batch_size)
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
    """Per image: random horizontal flip, then a random square crop of ZOOM_MIN-100 % of the side resized back."""
    from course_utils.quiet import tensorflow as tf  # lazy: only this path needs TensorFlow

    n = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    u = tf.random.stateless_uniform([n, 4], seed=seed)
    flip = u[:, 0] < 0.5
    images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    side = ZOOM_MIN + (1.0 - ZOOM_MIN) * u[:, 1]
    top, left = u[:, 2] * (1.0 - side), u[:, 3] * (1.0 - side)
    boxes = tf.stack([top, left, top + side, left + side], axis=1)
    return tf.image.crop_and_resize(images, boxes, tf.range(n), [height, width], method="bilinear")


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
    shuffle reshuffles every epoch with the seed; augment adds a seeded random flip and small random
    crop/zoom per image (different each epoch). cache keeps the preprocessed batches after the first
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
        augment: seeded random horizontal flips (no crop/zoom, unlike make_tf_dataset).
        Extra keyword arguments (workers, use_multiprocessing, max_queue_size) go to PyDataset.
        """

        def __init__(
            self,
            images: np.ndarray,
            labels: np.ndarray,
            preprocess_fn: Callable[[Any], Any] | None = None,
            batch_size: int = 32,
            shuffle: bool = False,
            augment: bool = False,
            seed: int = 0,
            **kwargs: Any,
        ) -> None:
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
                flip = np.random.default_rng([self.seed, 3, self.epoch, index]).random(len(x)) < 0.5
                x[flip] = x[flip, :, ::-1]
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
    if name == "ArrayBatches":
        return _array_batches_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_batches(
    images: np.ndarray,
    labels: np.ndarray,
    preprocess_fn: Callable[[Any], Any] | None = None,
    batch_size: int = 32,
    shuffle: bool = False,
    augment: bool = False,
    seed: int = 0,
    cache: bool = True,
) -> Any:
    """make_tf_dataset when TensorFlow is installed, else ArrayBatches (notebook 02_replace_softmax)."""
    if importlib.util.find_spec("tensorflow") is None:
        return _array_batches_class()(images, labels, preprocess_fn, batch_size, shuffle, augment, seed)
    return make_tf_dataset(images, labels, preprocess_fn, batch_size, shuffle, augment, seed, cache)
