"""course_utils.checks: numbers, config values, names and output paths are refused before any work."""

from __future__ import annotations

import argparse
import json
import math
import os

import pytest

from course_utils import checks


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "0", "-1", "10.5", "1e9", "abc", ""])
def test_learning_rate_type_refuses_nonsense_and_states_the_range(text):
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be a finite number, 0 < --lr <= 10, got"):
        checks.number("--lr", 0, checks.LR_MAX, low_open=True)(text)


def test_number_accepts_the_range_and_whole_numbers_only_when_asked():
    lr = checks.number("--lr", 0, 10, low_open=True)
    assert lr("10") == 10.0 and lr("1e-4") == 1e-4
    top = checks.number("--top", 1, integer=True)
    assert top("3") == 3 and isinstance(top("3.0"), int)
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be a whole number, --top >= 1, got '2.5'"):
        top("2.5")


@pytest.mark.parametrize("value, call, message", [
    ("0, 1", lambda v: checks.as_list(v, "seeds", "cfg.yaml", checks.as_int), "cfg.yaml: seeds must be a list"),
    ([0, "x"], lambda v: checks.as_list(v, "seeds", "cfg.yaml", checks.as_int), r"seeds\[1\] must be a whole number"),
    (float("nan"), lambda v: checks.as_float(v, "lr", "cfg.yaml", 0, 10, low_open=True), "lr must be a finite number"),
    (True, lambda v: checks.as_int(v, "batch_size", "cfg.yaml", 1), "batch_size must be a whole number"),
    ("yes", lambda v: checks.as_bool(v, "augment", "cfg.yaml"), "augment must be true or false"),
    ("", lambda v: checks.as_text(v, "dataset", "cfg.yaml"), "dataset must be a non-empty string"),
])
def test_config_values_name_the_key_and_the_file(value, call, message):
    with pytest.raises(checks.UsageError, match=message) as error:
        call(value)
    assert "cfg.yaml" in str(error.value)


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", "..", ".hidden", "", "x..y", None, True])
def test_names_are_names_not_paths(name):
    with pytest.raises(checks.UsageError, match="must be a plain name"):
        checks.as_name(name, "name", "cfg.yaml")


def test_plain_names_pass():
    assert checks.as_name("maybury_fig4-v2.1", "name", "cfg.yaml") == "maybury_fig4-v2.1"


def test_output_path_makes_folders_and_writes_nothing(tmp_path):
    path = checks.output_path(tmp_path / "new" / "deeper" / "r.json", "--json")
    assert path.parent.is_dir() and not path.exists() and os.listdir(path.parent) == []


@pytest.mark.parametrize("case, message", [
    ("folder", "is a folder; give a file name"),
    ("parent is a file", "is a file, not a folder"),
    ("suffix", "--save must end in .keras"),
    ("/proc", "cannot write in /proc"),
])
def test_bad_output_paths_are_refused(case, message, tmp_path):
    (tmp_path / "file").write_text("x")
    path, suffix = {"folder": (tmp_path, None), "parent is a file": (tmp_path / "file" / "r.json", None),
                    "suffix": (tmp_path / "m.h5", ".keras"), "/proc": ("/proc/x.json", None)}[case]
    flag = "--save" if suffix else "--json"
    with pytest.raises(checks.UsageError, match=message) as error:
        checks.output_path(path, flag, suffix)
    assert flag in str(error.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    with pytest.raises(checks.UsageError, match="cannot write in"):
        checks.output_path(folder / "r.json", "--json")


def test_strict_json_has_no_nan_and_is_written_atomically(tmp_path):
    import numpy as np

    value = {"accuracy": float("nan"), "loss": [1.0, math.inf], "n": np.int64(3), "x": np.float32(0.5)}
    path = checks.write_json(tmp_path / "r.json", value)
    text = path.read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}")) == {
        "accuracy": None, "loss": [1.0, None], "n": 3, "x": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_output_dir_is_made_and_checked_before_any_work(tmp_path):
    a_file = tmp_path / "site.html"
    a_file.write_text("not a folder")
    with pytest.raises(checks.UsageError, match=r"the site folder .*site.html is a file; give a folder"):
        checks.output_dir(a_file, "the site folder")
    with pytest.raises(checks.UsageError, match="cannot write the release folder .*choose a folder you can write"):
        checks.output_dir(a_file / "out", "the release folder")
    with pytest.raises(checks.UsageError, match="cannot write the release folder /proc/x"):
        checks.output_dir("/proc/x", "the release folder")
    made = checks.output_dir(tmp_path / "new" / "out", "the site folder")
    assert made.is_dir() and list(made.iterdir()) == []
