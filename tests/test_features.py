"""course_utils.features: bottleneck features and their self-verifying disk cache (notebook 05)."""

from __future__ import annotations

import numpy as np
import pytest

from course_utils import features
from course_utils.backbones import to_model_input
from course_utils.cache import CacheWarning
from course_utils.data import ImageSet


@pytest.fixture
def small_set(photos) -> ImageSet:
    images = np.stack([to_model_input(p, 64) for p in photos.values()])
    return ImageSet(images, np.array([0, 1, 0, 1]), ["a", "b"], [f"photo:{name}" for name in photos])


@pytest.mark.parametrize("damage", ["truncated", "bit flip", "random bytes", "right shape, wrong content"])
def test_a_damaged_feature_cache_is_named_deleted_and_recomputed(damage, small_set, lite0_64, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    first = features.extract_features(small_set, model=lite0_64)
    (path,) = (tmp_path / "features").glob("*.npz")
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif damage == "bit flip":
        i = data.index(first[2].tobytes()[:8])
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1:])
    elif damage == "random bytes":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    else:  # a valid .npz of the right shape whose numbers are wrong (the old format, or copied by hand)
        np.savez(path, features=np.zeros_like(first))
    with pytest.warns(CacheWarning, match=f"cache file {path} is unusable") as caught:
        again = features.extract_features(small_set, model=lite0_64)
    assert "allow_pickle" not in str(caught[0].message)
    np.testing.assert_allclose(again, first, rtol=1e-6)
    np.testing.assert_allclose(features.extract_features(small_set, model=lite0_64), first, rtol=1e-6)  # healed


def test_feature_cache_hit_needs_no_model(small_set, lite0_64, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    first = features.extract_features(small_set, model=lite0_64)
    monkeypatch.setattr(features.backbones, "load_backbone", lambda *a, **k: pytest.fail("recomputed"))
    np.testing.assert_array_equal(features.extract_features(small_set), first)
