"""Decoding images with PIL, and the course's one crop/resize policy (notebook ``00_setup``).

Every picture reaches a model the same way: training data (``data.load_dataset``), ``python -m course_utils
predict`` and the demo all call ``to_model_input``: convert to RGB, take the centre square of the whole
shorter side, resize it bilinearly to ``size`` x ``size``. Files go through ``decode_image`` first (EXIF
orientation, any PIL mode to RGB, a pixel limit against decompression bombs), which ends in ``to_model_input``.
Only numpy and PIL: no TensorFlow, so this works on every Keras backend.
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from course_utils.settings import progress_bar

PathLike = Union[str, "os.PathLike[str]"]
Problem = tuple[str, str]  # (file or id, reason)
PROGRESS_MIN_IMAGES = 200  # show a progress bar from this many images on (COURSE_PROGRESS=0 turns it off)
MAX_LISTED = 20  # bad files named in the warning
# Images with more pixels are skipped before decoding (PIL's own limit, Image.MAX_IMAGE_PIXELS, is 89 million):
# a decoding thread then holds at most about 40e6 x 4 bytes = 160 MB, whatever the file claims.
MAX_PIXELS = 40_000_000
_DATA_MODULES = frozenset({"course_utils.images", "course_utils.sources", "course_utils.data"})


class DatasetError(ValueError):
    """A dataset spec or folder that cannot be used; the message says what to do next (notebook 00_setup)."""


class BadImageWarning(UserWarning):
    """Some files could not be read as images and were skipped (notebook 00_setup)."""


class ImageTooLargeError(ValueError):
    """An image with more than MAX_PIXELS pixels: skipped before decoding, like a corrupt file (00_setup)."""


def check_count(name: str, value: int | None, allow_none: bool = False) -> None:
    """DatasetError unless ``value`` is a positive integer (or None, when ``allow_none``: "all images")."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        also = " or None (all images)" if allow_none else ""
        raise DatasetError(f"{name} must be a positive integer{also}, not {value!r}")


def caller_stacklevel() -> int:
    """The ``warnings.warn`` stacklevel of the first caller outside the data modules (images, sources,
    data), so that a warning points at the user's code (notebook ``00_setup``)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__") in _DATA_MODULES:
        frame, level = frame.f_back, level + 1
    return level


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


def _check_pixels(img: Image.Image) -> None:
    """ImageTooLargeError when the header announces more than MAX_PIXELS pixels (nothing decoded yet)."""
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise ImageTooLargeError(
            f"{width}x{height} pixels is more than the {MAX_PIXELS / 1e6:g} million this course decodes "
            "(a decompression bomb, or a huge scan); shrink it first"
        )


def _as_pil(image: np.ndarray | Image.Image) -> Image.Image:
    """A PIL image from a PIL image or an (H, W) / (H, W, 3|4) array (uint8 0-255, or float 0-255)."""
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(np.round(array.astype(np.float64)), 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def to_model_input(image: np.ndarray | Image.Image, size: int = 224) -> np.ndarray:
    """THE crop/resize policy: RGB uint8 ``(size, size, 3)`` from the centre square of the whole shorter side,
    resized bilinearly (notebook ``00_setup``). Training data, ``predict`` and the demo all use it, so a
    photo looks the same to the model everywhere. Transparency goes on white; grayscale becomes RGB.
    """
    check_count("size", size)
    rgb = _to_rgb(_as_pil(image))
    square = ImageOps.fit(rgb, (int(size), int(size)), method=Image.Resampling.BILINEAR)
    return np.asarray(square, dtype=np.uint8)


def decode_image(source: PathLike | bytes, image_size: int = 224) -> np.ndarray:
    """Read one image file (or its encoded bytes) as RGB uint8 (image_size, image_size, 3) (notebook 00_setup).

    Reads with PIL, applies the EXIF orientation, then ``to_model_input``. JPEGs are decoded at a reduced
    scale when much larger than needed (fast). Raises the PIL/OS error when the file cannot be read, and
    ImageTooLargeError, before decoding, for more than MAX_PIXELS pixels (a decompression bomb).
    """
    opened = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    with Image.open(opened) as img:
        _check_pixels(img)
        img.draft(None, (image_size, image_size))  # JPEG only: DCT scaling, result still >= image_size
        img.load()
        upright = _upright(img)
        return to_model_input(upright, image_size)


def decode_or_reason(source: PathLike | bytes, image_size: int = 224) -> tuple[np.ndarray | None, str | None]:
    """(image, None), or (None, why it cannot be read): ``decode_image`` that never raises. ``python -m
    course_utils predict`` uses it to report a bad file and go on with the next one (notebook 00_setup)."""
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


def decode_many(
    sources: Sequence[PathLike | bytes], names: Sequence[str], image_size: int, progress: bool | None = None
) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
    """Decode in threads (PIL releases the GIL): (images of the readable ones, ok mask, [(name, reason)]).

    ``names`` label the sources in the problems (a path, or an id such as ``tfds:NAME/train/7``). Nothing is
    warned here; ``warn_skipped`` says it once for a whole dataset (notebook ``00_setup``).
    """
    out = np.zeros((len(sources), image_size, image_size, 3), dtype=np.uint8)
    ok = np.zeros(len(sources), dtype=bool)
    problems: list[Problem] = []
    workers = max(1, min(8, os.cpu_count() or 1, len(sources)))
    with _progress_bar(len(sources), progress) as bar, ThreadPoolExecutor(workers) as pool:
        for i, (image, reason) in enumerate(pool.map(lambda s: decode_or_reason(s, image_size), sources)):
            if image is None:
                problems.append((names[i], reason))
            else:
                out[i], ok[i] = image, True
            bar.update(1)
    return (out if ok.all() else out[ok]), ok, problems


def warn_skipped(problems: Sequence[Problem]) -> None:
    """One BadImageWarning naming the skipped files and what to do (nothing when there are none)."""
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
        stacklevel=caller_stacklevel(),
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
    images, ok, problems = decode_many(names, names, image_size, progress)
    if warn:
        warn_skipped(problems)
    return images, np.flatnonzero(ok), [name for name, _ in problems]
