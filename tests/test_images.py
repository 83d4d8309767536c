"""Tests of course_utils.images: decoding any file to RGB, the one crop/resize policy, skipping bad files."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from course_utils import images as I
from course_utils.images import BadImageWarning, DatasetError, ImageTooLargeError

REPO = Path(__file__).resolve().parents[1]


def bad_image_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, BadImageWarning)]


# ---------------------------------------------------------------------------------------------- decoding


def _rgb_reference(array: np.ndarray, size: int, tmp_path: Path) -> np.ndarray:
    path = tmp_path / "reference.png"
    Image.fromarray(array).save(path)
    return I.decode_image(path, size).astype(np.float64)


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
    out = I.decode_image(path, 32)
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
    out = I.decode_image(tmp_path / "palette.png", 20)
    assert (out[:, :8] == 255).all() and (out[:, -8:] == [0, 0, 255]).all()


def test_decode_image_resizes_shorter_side_and_crops_centre(tmp_path):
    stripes = np.zeros((60, 180, 3), np.uint8)  # wide: black | white | black thirds
    stripes[:, 60:120] = 255
    Image.fromarray(stripes).save(tmp_path / "wide.png")
    out = I.decode_image(tmp_path / "wide.png", 30)
    assert out.shape == (30, 30, 3) and out[:, 1:-1].min() == 255  # only the white centre third remains
    assert out.min() > 200  # (edge columns are filtered with their black neighbours)


def test_decode_image_applies_exif_orientation(tmp_path):
    halves = np.zeros((40, 80, 3), np.uint8)
    halves[:, 40:] = 255  # left black, right white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(halves).save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    out = I.decode_image(tmp_path / "rotated.jpg", 20).mean(axis=(1, 2))
    assert out[:8].mean() < 40 and out[-8:].mean() > 215  # upright: black on top, white below


def test_decode_images_skips_unreadable_with_one_warning(tmp_path, photos):
    good = tmp_path / "good.jpg"
    Image.fromarray(photos["coffee"]).save(good)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.warns(BadImageWarning) as record:
        images, kept, skipped = I.decode_images([good, empty, good], 24, progress=False)
    assert len(bad_image_warnings(record)) == 1 and "0 bytes" in bad_image_warnings(record)[0]
    assert images.shape == (2, 24, 24, 3) and kept.tolist() == [0, 2] and skipped == [str(empty)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert I.decode_images([empty], 24, warn=False)[2] == [str(empty)]


def test_images_over_the_pixel_limit_are_skipped_before_decoding(tmp_path, monkeypatch):
    Image.new("RGB", (300, 200)).save(tmp_path / "huge.png")
    Image.new("RGB", (100, 100)).save(tmp_path / "fine.png")
    monkeypatch.setattr(I, "MAX_PIXELS", 20_000)  # "huge" for the lowered limit; 100 x 100 is below it
    assert I.MAX_PIXELS < Image.MAX_IMAGE_PIXELS
    image, reason = I.decode_or_reason(str(tmp_path / "huge.png"), 16)
    assert image is None and reason == (
        "ImageTooLargeError: 300x200 pixels is more than the 0.02 million this course decodes "
        "(a decompression bomb, or a huge scan); shrink it first")
    with pytest.raises(ImageTooLargeError):
        I.decode_image(tmp_path / "huge.png", 16)
    with pytest.warns(BadImageWarning, match=r"huge.png: ImageTooLargeError") as record:
        _, kept, skipped = I.decode_images([tmp_path / "fine.png", tmp_path / "huge.png"], 16)
    assert kept.tolist() == [0] and skipped == [str(tmp_path / "huge.png")]
    assert record[0].filename == __file__  # the warning points at the caller, not at course_utils


# ---------------------------------------------------------------------------------------------- the one policy


def test_to_model_input_is_the_policy_decode_image_applies(photos, tmp_path):
    for name, photo in photos.items():
        Image.fromarray(photo).save(tmp_path / f"{name}.png")
        assert np.array_equal(I.to_model_input(photo, 48), I.decode_image(tmp_path / f"{name}.png", 48)), name
    rocket = photos["rocket"]  # 427 x 640: the centre 427 x 427 square (from x = 106.5), resized bilinearly
    height, width = rocket.shape[:2]
    left = (width - height) / 2
    box = (left, 0, left + height, height)
    square = Image.fromarray(rocket).resize((48, 48), Image.Resampling.BILINEAR, box=box)
    assert np.array_equal(I.to_model_input(rocket, 48), np.asarray(square))


def test_to_model_input_accepts_gray_alpha_float_and_pil(photos):
    gray = np.zeros((50, 40), np.uint8)
    gray[:, 20:] = 200
    out = I.to_model_input(gray, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8 and np.array_equal(out[..., 0], out[..., 2])
    rgba = np.zeros((10, 10, 4), np.uint8)  # fully transparent -> white
    assert (I.to_model_input(rgba, 4) == 255).all()
    coffee = photos["coffee"]
    assert np.array_equal(I.to_model_input(coffee.astype(np.float32), 32), I.to_model_input(coffee, 32))
    assert np.array_equal(I.to_model_input(Image.fromarray(coffee), 32), I.to_model_input(coffee, 32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        I.to_model_input(np.zeros((4, 4, 2), np.uint8), 8)
    with pytest.raises(DatasetError, match="size must be a positive integer"):
        I.to_model_input(coffee, 0)


def test_check_count_says_what_it_wants():
    I.check_count("n", 3)
    I.check_count("n", None, allow_none=True)
    for bad in (0, -1, 2.5, True, None):
        with pytest.raises(DatasetError, match=r"^n must be a positive integer, not"):
            I.check_count("n", bad)
    with pytest.raises(DatasetError, match=r"or None \(all images\), not 0"):
        I.check_count("n", 0, allow_none=True)


def test_import_loads_neither_tensorflow_nor_keras():
    code = ("import sys; import course_utils.images, course_utils.sources, course_utils.pipelines; "
            "heavy = [m for m in ('tensorflow', 'keras', 'sklearn', 'jax') if m in sys.modules]; "
            "assert not heavy, heavy")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
