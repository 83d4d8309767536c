"""Tests for course_utils.activations (notebooks 04, 05, 07): the one ActivationCache."""

from __future__ import annotations

import numpy as np
import pytest

from _tiny import easy_split, identity, tiny_backbone
from course_utils import evaluation, surgery
from course_utils.activations import ActivationCache, fingerprint, normalize_boundary
from course_utils.cache import CacheWarning


@pytest.fixture(scope="module")
def base():
    return tiny_backbone()


@pytest.fixture(scope="module")
def split():
    return easy_split()


def test_one_pass_fills_every_registered_boundary_exactly(base, split):
    store = ActivationCache(base, identity, disk=False)
    store.register("block2_pool", "avg_pool")
    deep = store.get(split.train, "block2_pool")
    pooled = store.get(split.train, "avg_pool")
    assert (store.passes, store.images_computed) == (1, len(split.train.labels))
    np.testing.assert_array_equal(deep, evaluation.predict(surgery.cut(base, "block2_pool")[0], split.train.images))
    np.testing.assert_allclose(pooled, evaluation.predict(base, split.train.images), rtol=1e-6, atol=1e-7)


def test_subsets_and_reorderings_come_from_memory(base, split):
    store = ActivationCache(base, identity, disk=False)
    full = store.get(split.train, "avg_pool")
    subset = split.train.take([5, 0, 3])
    np.testing.assert_array_equal(store.get(subset, "avg_pool"), full[[5, 0, 3]])
    assert store.passes == 1


def test_disk_entries_are_reused_by_a_new_cache_without_a_pass(base, split, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    first = ActivationCache(base, identity, "tiny", "w", 16)
    values = first.get(split.test, "block2_pool")
    second = ActivationCache(base, identity, "tiny", "w", 16)
    np.testing.assert_array_equal(second.get(split.test, "block2_pool"), values)
    assert (first.passes, second.passes) == (1, 0)
    assert len(list((tmp_path / "activations").glob("tiny-block2_pool-*.npz"))) == 1


def test_a_damaged_entry_is_named_deleted_and_recomputed(base, split, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    values = ActivationCache(base, identity, "tiny", "w", 16).get(split.test, "avg_pool")
    (path,) = (tmp_path / "activations").glob("*.npz")
    path.write_bytes(path.read_bytes()[:100])
    again = ActivationCache(base, identity, "tiny", "w", 16)
    with pytest.warns(CacheWarning, match=path.name):
        np.testing.assert_array_equal(again.get(split.test, "avg_pool"), values)
    assert again.passes == 1


def test_the_key_covers_weights_ids_and_boundary(base, split):
    store, other = ActivationCache(base, identity, "tiny", "w", 16), ActivationCache(tiny_backbone(1), identity, "tiny", "w", 16)
    key = store.key("avg_pool", split.test.ids)
    assert key != other.key("avg_pool", split.test.ids)  # same name, other weights
    assert key != store.key("block2_pool", split.test.ids)
    assert key != store.key("avg_pool", split.test.ids[::-1])
    assert key == ActivationCache(base, identity, "tiny", "w", 16).key("avg_pool", split.test.ids)
    assert fingerprint(base) != fingerprint(tiny_backbone(1))


def test_pooled_boundaries(base, split):
    assert normalize_boundary(base, "gap:avg_pool") == "avg_pool"  # already pooled: one entry
    store = ActivationCache(base, identity, disk=False)
    store.register("gap:block2_pool", "block2_pool")
    pooled = store.get(split.test, "gap:block2_pool")
    spatial = store.get(split.test, "block2_pool")
    np.testing.assert_allclose(pooled, spatial.mean(axis=(1, 2)), rtol=1e-5, atol=1e-7)
    assert store.passes == 1


def test_no_images_give_an_empty_array_of_the_right_shape(base, split):
    empty = split.test.take([])
    assert ActivationCache(base, identity, disk=False).get(empty, "block2_pool").shape == (0, 2, 2, 6)


def test_a_boundary_registered_late_costs_a_second_pass(base, split):
    store = ActivationCache(base, identity, disk=False)
    store.get(split.test, "avg_pool")
    store.get(split.test, "block2_pool")
    assert (store.passes, store.images_computed) == (2, 2 * len(split.test.labels))
