"""course_utils.settings: the mode, the dataset a notebook uses, folders, seeding, the online probe, progress bars."""

from __future__ import annotations

import ast
import random
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from course_utils import settings


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("COURSE_DATA", "COURSE_QUICK", "COURSE_REPO_URL", "COURSE_PROGRESS", "COURSE_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_course_data_wins_over_everything(clean_env):
    clean_env.setenv("COURSE_DATA", "sklearn:digits")
    assert settings.choose_data(True, "tfds:x", online=True) == ("sklearn:digits", "from COURSE_DATA")
    assert settings.get_settings().data == "sklearn:digits"


@pytest.mark.parametrize("online, spec", [(True, "tfds:tf_flowers"), (False, "sample:eurosat")])
def test_quick_mode_picks_real_photos_online_and_offline(clean_env, online, spec):
    chosen, note = settings.choose_data(True, settings.FULL_DEFAULT_SPEC, online=online)
    assert chosen == spec
    assert ("online" in note) if online else ("offline" in note and "EuroSAT" in note)


def test_offline_machine_gets_the_shipped_sample(clean_env):
    clean_env.setattr(settings, "is_online", lambda *a, **k: False)
    s = settings.get_settings()
    assert (s.quick, s.data, s.image_size, s.per_class, s.test_per_class) == (True, "sample:eurosat", 160, 40, 20)
    assert "sample:eurosat" in s.describe() and "offline" in s.describe()


def test_full_mode_uses_tfds_flowers_without_checking_the_network(clean_env):
    clean_env.setenv("COURSE_QUICK", "0")
    clean_env.setattr(settings, "is_online", lambda *a, **k: pytest.fail("full mode must not probe the network"))
    s = settings.get_settings()
    assert (s.quick, s.data, s.image_size, s.per_class, s.seeds) == (False, "tfds:tf_flowers", 224, None, [0, 1, 2])


def test_repo_url_is_overridable(clean_env):
    assert settings.repo_url() == settings.REPO_URL
    clean_env.setenv("COURSE_REPO_URL", "file:///tmp/clone")
    assert settings.repo_url() == "file:///tmp/clone"


@pytest.mark.parametrize("value, enabled", [(None, True), ("1", True), ("0", False), ("off", False)])
def test_progress_bars_follow_course_progress(clean_env, value, enabled):
    if value is not None:
        clean_env.setenv("COURSE_PROGRESS", value)
    assert settings.progress_enabled() is enabled
    bar = settings.progress_bar(range(3), desc="x")
    assert bar.disable is (not enabled)
    assert list(bar) == [0, 1, 2]
    assert settings.progress_bar(range(3), disable=True).disable is True


def test_is_online_gives_up_quickly_on_an_unroutable_host():
    start = time.perf_counter()
    assert settings.is_online(timeout=0.5, host=("127.0.0.1", 9)) is False  # discard port: refused or silent
    assert time.perf_counter() - start < 2


def test_is_online_false_for_unresolvable_host_and_fast():
    start = time.perf_counter()
    assert settings.is_online(timeout=0.5, host=("nonexistent.invalid", 443)) is False
    assert time.perf_counter() - start < 2.0


def test_is_online_true_for_a_listening_socket():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        assert settings.is_online(timeout=1.0, host=server.getsockname()) is True
    finally:
        server.close()


@pytest.mark.parametrize("value, quick", [(None, True), ("1", True), ("yes", True), ("0", False), ("False", False),
                                          (" no ", False), ("off", False)])
def test_is_quick_reads_course_quick(clean_env, value, quick):
    if value is not None:
        clean_env.setenv("COURSE_QUICK", value)
    assert settings.is_quick() is quick


def test_quick_settings_take_the_callers_sizes_and_seeds(clean_env):
    clean_env.setenv("COURSE_DATA", "sklearn:digits")
    s = settings.get_settings(quick_image_size=96, quick_per_class=None, quick_test_per_class=5, seeds=[3, 4])
    assert (s.quick, s.image_size, s.per_class, s.test_per_class, s.seeds, s.batch_size) == (True, 96, None, 5, [3, 4], 32)
    assert s.describe() == ("mode: quick (offline, CPU)\ndata: sklearn:digits  (from COURSE_DATA)\n"
                            "images: 96x96 px, all train / 5 test images per class; seeds [3, 4]")


def test_full_mode_default_spec_is_the_callers(clean_env):
    clean_env.setenv("COURSE_QUICK", "0")
    s = settings.get_settings(full_default="tfds:oxford_flowers102")
    assert s.data == "tfds:oxford_flowers102" and "full-mode default" in s.data_note


def test_repo_root_is_the_checkout_and_package_dir_inside_it():
    assert (settings.REPO_ROOT / "pyproject.toml").is_file()
    assert settings.PACKAGE_DIR == settings.REPO_ROOT / "course_utils"
    assert Path(settings.__file__).resolve().parent == settings.PACKAGE_DIR


def test_tfds_data_dir_follows_course_data_dir(clean_env, tmp_path):
    assert settings.tfds_data_dir() == settings.REPO_ROOT / "data" / "tfds"
    clean_env.setenv("COURSE_DATA_DIR", str(tmp_path / "tfds"))
    assert settings.tfds_data_dir() == tmp_path / "tfds"
    clean_env.setenv("COURSE_DATA_DIR", "~/somewhere")
    assert settings.tfds_data_dir() == Path.home() / "somewhere"


def test_cache_dir_follows_course_cache_and_creates_subfolders(clean_env, tmp_path):
    clean_env.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    assert settings.cache_dir() == tmp_path / "cache" and (tmp_path / "cache").is_dir()
    assert settings.cache_dir("results/x") == tmp_path / "cache" / "results" / "x"
    assert (tmp_path / "cache" / "results" / "x").is_dir()


def test_seed_everything_makes_python_numpy_and_keras_repeat(clean_env):
    keras = pytest.importorskip("keras")

    def draw() -> tuple:
        return random.random(), float(np.random.rand()), float(keras.random.uniform((1,))[0])

    settings.seed_everything(5)
    first = draw()
    settings.seed_everything(5)
    assert draw() == first
    settings.seed_everything(6)
    assert draw() != first
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="non-negative integer"):
            settings.seed_everything(bad)


def test_settings_imports_nothing_later_in_the_package():
    """settings is the first module of the chain: it may import only the stdlib (and the leaf quiet, lazily)."""
    tree = ast.parse(Path(settings.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert {m for m in imported if m.startswith("course_utils")} == {"course_utils.quiet"}
    assert not imported & {"numpy", "keras", "tensorflow"}
