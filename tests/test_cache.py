"""course_utils.cache: a verified array cache that heals itself (features and sweep activations)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from course_utils import cache


@pytest.fixture
def stored(tmp_path):
    values = np.arange(24, dtype="float32").reshape(6, 4)
    return cache.save(tmp_path / "entry.npz", values, "key-1"), values


def _damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "bit flip":  # inside the stored array (np.savez does not compress)
        i = data.index(np.float32(13).tobytes())
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:])
    elif how == "random bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "plain npz, right shape":  # valid file, wrong content, e.g. an older format or a hand-made one
        np.savez(path, features=np.zeros((6, 4), "float32"))
    elif how == "other key":
        cache.save(path, np.zeros((6, 4), "float32"), "key-2")


def test_round_trip(stored):
    path, values = stored
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(cache.load(path, "key-1"), values)


@pytest.mark.parametrize("how", ["truncated", "bit flip", "random bytes", "empty", "plain npz, right shape",
                                 "other key"])
def test_a_bad_file_is_named_deleted_and_recomputed(stored, how):
    path, values = stored
    _damage(path, how)
    with pytest.warns(cache.CacheWarning, match=str(path)) as caught:
        again = cache.cached(path, "key-1", lambda: values * 1)
    message = str(caught[0].message)
    assert "deleted it, recomputing" in message and "allow_pickle" not in message, message
    np.testing.assert_array_equal(again, values)
    np.testing.assert_array_equal(cache.load(path, "key-1"), values)  # healed: the next read is silent


def test_missing_file_is_silent_and_compute_runs_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.ones(3)

    for _ in range(2):
        np.testing.assert_array_equal(cache.cached(tmp_path / "c.npz", "k", compute), np.ones(3))
    assert len(calls) == 1


def test_no_temporary_files_are_left(stored):
    path, _ = stored
    assert [p.name for p in path.parent.iterdir()] == ["entry.npz"]


def test_the_package_never_unpickles_arrays():
    from pathlib import Path

    package = Path(cache.__file__).parent
    offenders = [p.name for p in package.glob("*.py") if "allow_pickle=True" in p.read_text()]
    assert offenders == []
