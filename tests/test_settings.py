"""course_utils.settings: the mode, the dataset a notebook uses, the repository URL and progress bars."""

from __future__ import annotations

import pytest

from course_utils import settings


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("COURSE_DATA", "COURSE_QUICK", "COURSE_REPO_URL", "COURSE_PROGRESS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_course_data_wins_over_everything(clean_env):
    clean_env.setenv("COURSE_DATA", "sklearn:digits")
    assert settings._choose_data(True, "tfds:x", online=True) == ("sklearn:digits", "from COURSE_DATA")
    assert settings.get_settings().data == "sklearn:digits"


@pytest.mark.parametrize("online, spec", [(True, "tfds:tf_flowers"), (False, "sample:eurosat")])
def test_quick_mode_picks_real_photos_online_and_offline(clean_env, online, spec):
    chosen, note = settings._choose_data(True, settings.FULL_DEFAULT_SPEC, online=online)
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
    import time

    start = time.perf_counter()
    assert settings.is_online(timeout=0.5, host=("127.0.0.1", 9)) is False  # discard port: refused or silent
    assert time.perf_counter() - start < 2
