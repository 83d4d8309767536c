"""Tests for course_utils.activations (notebooks 04, 05, 07): the one ActivationCache."""

from __future__ import annotations

import numpy as np
import pytest

from _tiny import identity, tiny_backbone
from course_utils import evaluation, surgery
from course_utils.activations import ActivationCache, fingerprint, normalize_boundary
from course_utils.cache import CacheWarning


def test_one_pass_fills_every_registered_boundary_exactly(tiny_base, tiny_split):
    store = ActivationCache(tiny_base, identity, disk=False)
    store.register("block2_pool", "avg_pool")
    deep = store.get(tiny_split.train, "block2_pool")
    pooled = store.get(tiny_split.train, "avg_pool")
    assert (store.passes, store.images_computed) == (1, len(tiny_split.train.labels))
    np.testing.assert_array_equal(deep, evaluation.predict(surgery.cut(tiny_base, "block2_pool")[0], tiny_split.train.images))
    np.testing.assert_allclose(pooled, evaluation.predict(tiny_base, tiny_split.train.images), rtol=1e-6, atol=1e-7)


def test_subsets_and_reorderings_come_from_memory(tiny_base, tiny_split):
    store = ActivationCache(tiny_base, identity, disk=False)
    full = store.get(tiny_split.train, "avg_pool")
    subset = tiny_split.train.take([5, 0, 3])
    np.testing.assert_array_equal(store.get(subset, "avg_pool"), full[[5, 0, 3]])
    assert store.passes == 1


def test_disk_entries_are_reused_by_a_new_cache_without_a_pass(tiny_base, tiny_split, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    first = ActivationCache(tiny_base, identity, "tiny", "w", 16)
    values = first.get(tiny_split.test, "block2_pool")
    second = ActivationCache(tiny_base, identity, "tiny", "w", 16)
    np.testing.assert_array_equal(second.get(tiny_split.test, "block2_pool"), values)
    assert (first.passes, second.passes) == (1, 0)
    assert len(list((tmp_path / "activations").glob("tiny-block2_pool-*.npz"))) == 1


def test_a_damaged_entry_is_named_deleted_and_recomputed(tiny_base, tiny_split, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    values = ActivationCache(tiny_base, identity, "tiny", "w", 16).get(tiny_split.test, "avg_pool")
    (path,) = (tmp_path / "activations").glob("*.npz")
    path.write_bytes(path.read_bytes()[:100])
    again = ActivationCache(tiny_base, identity, "tiny", "w", 16)
    with pytest.warns(CacheWarning, match=path.name):
        np.testing.assert_array_equal(again.get(tiny_split.test, "avg_pool"), values)
    assert again.passes == 1


def test_the_key_covers_weights_ids_and_boundary(tiny_base, tiny_split):
    store = ActivationCache(tiny_base, identity, "tiny", "w", 16)
    other = ActivationCache(tiny_backbone(1), identity, "tiny", "w", 16)
    key = store.key("avg_pool", tiny_split.test.ids)
    assert key != other.key("avg_pool", tiny_split.test.ids)  # same name, other weights
    assert key != store.key("block2_pool", tiny_split.test.ids)
    assert key != store.key("avg_pool", tiny_split.test.ids[::-1])
    assert key == ActivationCache(tiny_base, identity, "tiny", "w", 16).key("avg_pool", tiny_split.test.ids)
    assert fingerprint(tiny_base) != fingerprint(tiny_backbone(1))


def test_pooled_boundaries(tiny_base, tiny_split):
    assert normalize_boundary(tiny_base, "gap:avg_pool") == "avg_pool"  # already pooled: one entry
    store = ActivationCache(tiny_base, identity, disk=False)
    store.register("gap:block2_pool", "block2_pool")
    pooled = store.get(tiny_split.test, "gap:block2_pool")
    spatial = store.get(tiny_split.test, "block2_pool")
    np.testing.assert_allclose(pooled, spatial.mean(axis=(1, 2)), rtol=1e-5, atol=1e-7)
    assert store.passes == 1


def test_no_images_give_an_empty_array_of_the_right_shape(tiny_base, tiny_split):
    empty = tiny_split.test.take([])
    assert ActivationCache(tiny_base, identity, disk=False).get(empty, "block2_pool").shape == (0, 2, 2, 6)


def test_a_boundary_registered_late_costs_a_second_pass(tiny_base, tiny_split):
    store = ActivationCache(tiny_base, identity, disk=False)
    store.get(tiny_split.test, "avg_pool")
    store.get(tiny_split.test, "block2_pool")
    assert (store.passes, store.images_computed) == (2, 2 * len(tiny_split.test.labels))
