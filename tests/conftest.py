"""Shared pytest fixtures. Data fixtures: the shared flowers photos and small image folders built in tmp_path."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from _tiny import easy_split, tiny_backbone

# ../shared beside the repo; never copied into the repo.
SHARED_FLOWERS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flowers"
FLOWER_CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


@pytest.fixture(scope="session")
def flowers_dir() -> Path:
    """The shared flowers folder (train/ and test/, 5 classes, 100 + 40 photos each); skips when absent."""
    if not (SHARED_FLOWERS / "train").is_dir() or not (SHARED_FLOWERS / "test").is_dir():
        pytest.skip(f"shared flowers photos not found at {SHARED_FLOWERS} (../shared/data/flowers beside the repo)")
    return SHARED_FLOWERS


@pytest.fixture(scope="session")
def flowers_split(flowers_dir: Path):
    """All shared flowers decoded at 64x64 (loaded once per session)."""
    from course_utils.data import load_dataset

    return load_dataset(str(flowers_dir), image_size=64)


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """A few RGB uint8 photos that ship with scikit-image (no download)."""
    import skimage.data

    return {name: getattr(skimage.data, name)() for name in ("chelsea", "coffee", "astronaut", "rocket")}


def png16_bytes(array: np.ndarray) -> bytes:
    """A 16-bit PNG (grayscale (H, W) or RGB (H, W, 3) uint16), written by hand: PIL cannot write 16-bit RGB."""
    height, width = array.shape[:2]
    color_type = 2 if array.ndim == 3 else 0
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def png16():
    """The png16_bytes writer, for tests that need 16-bit PNGs."""
    return png16_bytes


def save_jpeg(array: np.ndarray, path: Path, **kwargs) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, "JPEG", quality=90, **kwargs)
    return path


@pytest.fixture
def image_tree(tmp_path: Path, photos):
    """Factory: image_tree({"train/cat": 3, "test/dog": 2}) writes that many small JPEGs per folder.

    Returns the root folder; {".": 3} puts images directly in the root, {"a": 0} makes an empty folder.
    """

    def build(layout: dict[str, int], root_name: str = "ds") -> Path:
        root = tmp_path / root_name
        root.mkdir(parents=True, exist_ok=True)
        sources = list(photos.values())
        for folder, count in layout.items():
            (root / folder).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                small = sources[i % len(sources)][::4, ::4]
                save_jpeg(np.ascontiguousarray(np.roll(small, 7 * i, axis=1)), root / folder / f"img{i:02d}.jpg")
        return root

    return build


@pytest.fixture
def bad_input_tree(tmp_path: Path, photos) -> dict:
    """train/{cat,coffee} + test/{cat,coffee} where train/cat holds every kind of awkward file.

    Returns the root, the names of the files that must be converted (kept) and skipped (warned about),
    and the junk files that must be skipped silently.
    """
    from PIL import Image

    root = tmp_path / "bad"
    cat_dir = root / "train" / "cat"
    cat_dir.mkdir(parents=True)
    cat, coffee = photos["chelsea"], photos["coffee"]
    save_jpeg(cat, cat_dir / "good.jpg")
    Image.fromarray(cat).convert("L").save(cat_dir / "gray.png")
    Image.fromarray(cat).convert("P", palette=Image.Palette.ADAPTIVE).save(cat_dir / "palette.png")
    Image.fromarray(cat).convert("CMYK").save(cat_dir / "cmyk.jpg", "JPEG", quality=95)
    rgba = np.dstack([cat, np.full(cat.shape[:2], 255, np.uint8)])
    rgba[:, : cat.shape[1] // 2, 3] = 0  # left half transparent
    Image.fromarray(rgba, "RGBA").save(cat_dir / "alpha.png")
    gray16 = (np.linspace(0, 65535, 300 * 300).reshape(300, 300)).astype(np.uint16)
    (cat_dir / "gray16.png").write_bytes(png16_bytes(gray16))
    (cat_dir / "rgb16.png").write_bytes(png16_bytes(cat.astype(np.uint16) * 257))
    (cat_dir / "empty.jpg").write_bytes(b"")
    good_bytes = (cat_dir / "good.jpg").read_bytes()
    (cat_dir / "truncated.jpg").write_bytes(good_bytes[: len(good_bytes) // 2])
    (cat_dir / "random.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (cat_dir / "notes.txt").write_text("photographer: me\n")
    (cat_dir / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (cat_dir / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    save_jpeg(coffee, root / "train" / "coffee" / "good.jpg")
    save_jpeg(cat[::-1], root / "test" / "cat" / "good.jpg")
    save_jpeg(coffee[::-1], root / "test" / "coffee" / "good.jpg")
    return {
        "root": root,
        "converted": ["good.jpg", "gray.png", "palette.png", "cmyk.jpg", "alpha.png", "gray16.png", "rgb16.png"],
        "skipped": ["empty.jpg", "truncated.jpg", "random.jpg", "notes.txt"],
        "junk": [".DS_Store", "Thumbs.db"],
    }


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Features and results go to a fresh folder per test session, never to the repo's data/ cache."""
    import os

    old = os.environ.get("COURSE_CACHE")
    os.environ["COURSE_CACHE"] = str(tmp_path_factory.mktemp("course_cache"))
    yield
    if old is None:
        os.environ.pop("COURSE_CACHE", None)
    else:
        os.environ["COURSE_CACHE"] = old


@pytest.fixture(scope="session")
def lite0_64():
    """EfficientNet-Lite0 with ImageNet weights at 64x64 input (small and fast for unit tests)."""
    from course_utils.backbones import load_backbone

    return load_backbone("efficientnet_lite0", input_size=64)


@pytest.fixture(scope="module")
def tiny_base():
    """A tiny pretrained-like backbone with blocks (tests/_tiny.py): runner and activation-cache tests."""
    return tiny_backbone()


@pytest.fixture(scope="module")
def tiny_split():
    """An easy synthetic Split for the tiny backbone (tests/_tiny.py)."""
    return easy_split()
