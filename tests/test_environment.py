"""course_utils.environment: the machine report of notebook 00_setup (packages, backend, devices, folders)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from course_utils import environment, settings

REPORT = {
    "python": "3.11.9 (Linux x86_64)",
    "packages": {"keras": "3.15.0", "jax": None},
    "keras_backend": "tensorflow",
    "backends_installed": ["tensorflow", "jax"],
    "accelerators": [],
    "cpu_cores": 2,
    "online": None,
    "mode": "quick",
    "data": "sample:eurosat (offline)",
    "cache": "/c",
    "tfds_dir": "/c/tfds",
    "weights": {"efficientnet_lite0": "pip package"},
}


def test_environment_report_has_every_section(monkeypatch):
    keras = pytest.importorskip("keras")
    monkeypatch.setenv("COURSE_DATA", "sklearn:digits")
    monkeypatch.setattr(settings, "is_online", lambda *a, **k: pytest.fail("check_online=False must not probe"))
    report = environment.environment_report(check_online=False, weights={"resnet50": "in the Keras cache"})
    assert list(report) == list(REPORT)
    assert report["online"] is None and report["mode"] == "quick"
    assert report["data"] == "sklearn:digits (from COURSE_DATA)"
    assert report["keras_backend"] == keras.backend.backend()
    assert report["packages"]["keras"] == keras.__version__ and list(report["packages"]) == list(environment.REPORT_PACKAGES)
    assert report["cpu_cores"] == environment.cpu_cores() >= 1
    assert report["cache"] == str(settings.cache_dir()) and report["tfds_dir"] == str(settings.tfds_data_dir())
    assert report["weights"] == {"resnet50": "in the Keras cache"}
    assert "tensorflow" in report["backends_installed"]


def test_environment_report_asks_settings_whether_online(monkeypatch):
    pytest.importorskip("keras")
    monkeypatch.delenv("COURSE_DATA", raising=False)
    monkeypatch.setenv("COURSE_QUICK", "1")
    monkeypatch.setattr(settings, "is_online", lambda timeout=2.0, host=None: True)
    report = environment.environment_report(check_online=True, timeout=0.1)
    assert report["online"] is True and report["data"].startswith(settings.ONLINE_SPEC + " (online")
    assert report["weights"] == {}


def test_format_environment_lines_are_exact():
    assert environment.format_environment(REPORT).splitlines() == [
        "python           3.11.9 (Linux x86_64)",
        "  keras                              3.15.0",
        "  jax                                -- not installed",
        "keras backend    tensorflow (installed: tensorflow, jax)",
        "accelerators     none: CPU only",
        "CPU cores        2",
        "online           not checked",
        "mode             quick",
        "data             sample:eurosat (offline)",
        "cache            /c",
        "tfds downloads   /c/tfds",
        "ImageNet weights:",
        "  efficientnet_lite0 pip package",
    ]
    offline = environment.format_environment({**REPORT, "online": False, "weights": {}, "accelerators": ["GPU:0"]})
    assert "online           no (offline: quick mode and efficientnet_lite0 still work)" in offline
    assert "accelerators     GPU:0" in offline and "ImageNet weights" not in offline


def test_package_versions_says_none_for_missing_packages():
    versions = environment.package_versions(("numpy", "surely-not-a-package-xyz"))
    assert versions["surely-not-a-package-xyz"] is None and versions["numpy"].count(".") >= 1


def test_environment_imports_only_settings_from_the_package():
    tree = ast.parse(Path(environment.__file__).read_text())
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "course_utils"
             for alias in node.names}
    assert {m for m in modules if m.startswith("course_utils.")} == {"course_utils.quiet"} and names == {"settings"}
