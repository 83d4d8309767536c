"""The command line's shell (course_utils.cli): parsing, numbers out of range, bad data and options, each as
one ``error:`` line with exit code 2 before any work; warnings as one line each."""

from __future__ import annotations

import math

import numpy as np
import pytest

from _cli import TRAIN, error_line, run_cli, tiny  # noqa: F401 - tiny is a fixture
from course_utils import cli

def test_predict_missing_file_is_one_clear_line(tmp_path):
    result = run_cli("predict", str(tmp_path / "nope.jpg"))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no such image file") and "nope.jpg" in last
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, words", [
    (["--data", "/no/such/folder"], "no such folder"),
    (["--data", "tfds:not_a_real_dataset_name"], "not_a_real_dataset_name"),
    (["--data", "sklearn:digits", "--save", "model.h5"], ".keras"),
])
def test_train_bad_input_is_one_clear_line(args, words, capsys):
    assert cli.main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and words in err


def test_grade_command_warns_first_and_reports_an_unreadable_notebook(tmp_path, capsys):
    folder = tmp_path / "submissions"
    folder.mkdir()
    (folder / "x.ipynb").write_text("")
    out = tmp_path / "g" / "grades.csv"
    assert cli.main(["grade", str(folder), "--csv", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("warning: grading runs each student's notebook with your permissions")
    assert "container" in captured.err.splitlines()[0]
    assert captured.out.splitlines()[0].startswith("x.ipynb: ERROR cannot read x.ipynb")
    assert out.read_text().splitlines()[1].startswith("x.ipynb,0,0,,cannot read x.ipynb")


def test_grade_refuses_a_csv_path_that_is_a_folder_before_running_anything(tmp_path, capsys):
    assert cli.main(["grade", str(tmp_path), "--csv", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: --csv {tmp_path} is a folder")


@pytest.fixture
def earlier(tmp_path):
    """A file written by an earlier run, which a refused command must leave alone."""
    path = tmp_path / "earlier.json"
    path.write_text('{"accuracy": 0.9}')
    return path


@pytest.mark.parametrize("case, args, message", [
    ("json in /proc", ["--json", "/proc/x.json", "--save", "{tmp}/ok/m.keras"], "--json /proc/x.json: cannot write in /proc"),
    ("save under a file", ["--save", "{tmp}/earlier.json/m.keras"], "--save {tmp}/earlier.json/m.keras: {tmp}/earlier.json is a file"),
    ("json is a folder", ["--json", "{tmp}"], "--json {tmp} is a folder; give a file name"),
    ("save not .keras", ["--save", "{tmp}/m.h5"], "--save must end in .keras"),
    ("lr nan", ["--lr", "nan"], "argument --lr: must be a finite number, 0 < --lr <= 10, got 'nan'"),
    ("lr inf", ["--lr", "inf"], "argument --lr: must be a finite number, 0 < --lr <= 10, got 'inf'"),
    ("lr 1e9", ["--lr", "1e9"], "argument --lr: must be a finite number, 0 < --lr <= 10, got '1e9'"),
    ("unfreeze 100", ["--method", "finetune", "--unfreeze", "100"],
     "--unfreeze must be between 1 and 18 for efficientnet_lite0 (its blocks: stem ... top), got 100"),
    ("broken weights", ["--weights", "{tmp}/broken.keras"], "cannot load weights from {tmp}/broken.keras"),
])
def test_train_refuses_bad_input_before_any_work(case, args, message, tiny, tmp_path, earlier, capsys):
    (tmp_path / "broken.keras").write_bytes(b"PK\x03\x04 truncated")
    args = [a.format(tmp=tmp_path) for a in args]
    code = cli.main([*TRAIN, "--data", str(tiny), *args])
    out, err = capsys.readouterr()
    assert message.format(tmp=tmp_path) in error_line(code, err)
    assert "test accuracy" not in out and not out.strip()  # refused before the data were even loaded
    assert earlier.read_text() == '{"accuracy": 0.9}' and not (tmp_path / "ok" / "m.keras").exists()


@pytest.mark.parametrize("args, message", [
    (["predict", "x.jpg", "--top", "0"], "argument --top: must be a whole number, --top >= 1, got '0'"),
    (["predict", "{tmp}/x.jpg", "--model", "{tmp}/broken.keras"], "cannot load the model {tmp}/broken.keras"),
])
def test_predict_bad_options_are_one_error_line(args, message, tmp_path, capsys, photos):
    from PIL import Image

    Image.fromarray(photos["coffee"]).save(tmp_path / "x.jpg")
    (tmp_path / "broken.keras").write_bytes(b"PK\x03\x04 truncated")
    code = cli.main([a.format(tmp=tmp_path) for a in args])
    out, err = capsys.readouterr()
    assert message.format(tmp=tmp_path) in error_line(code, err) and not out


NUMERIC_FLAGS = {  # command -> {flag: (low, high, whole number, low excluded)}
    "train": {"--lr": (0, 10, False, True), "--backbone-lr": (0, 10, False, False), "--unfreeze": (1, None, True, False),
              "--per-class": (1, None, True, False), "--test-per-class": (1, None, True, False),
              "--size": (32, 1024, True, False), "--steps": (1, 10**6, True, False), "--epochs": (1, 10**4, True, False),
              "--seed": (0, 2**32 - 1, True, False)},
    "predict": {"--top": (1, None, True, False), "--size": (32, 1024, True, False)},
    "grade": {"--timeout": (1, None, True, False), "--notebook-timeout": (1, None, False, False)},
    "recommend": {"--per-class": (1, None, True, False), "--size": (32, 1024, True, False),
                  "--sample-per-class": (1, None, True, False), "--seed": (0, 2**32 - 1, True, False),
                  "--verify-size": (32, 1024, True, False), "--verify-seeds": (1, 100, True, False),
                  "--verify-steps": (1, 10**6, True, False), "--verify-lr": (0, 10, False, True),
                  "--test-per-class": (1, None, True, False)},
    "demo": {"--per-class": (1, None, True, False)},
}


REQUIRED = {"train": ["--data", "d"], "predict": ["x.jpg"], "grade": ["folder"], "recommend": ["--data", "d"],
            "demo": []}


def _fuzz_values(rng) -> list[str]:
    special = ["nan", "-nan", "NaN", "inf", "-inf", "Infinity", "1e309", "-0", "0", "1e-320", "2.5", "abc", ""]
    finite = [f"{rng.uniform(-2000, 2000):.4g}", f"{10 ** rng.uniform(-6, 12):.3g}", str(int(rng.integers(-3, 40)))]
    return [*rng.choice(special, 4, replace=False), *finite]


def _in_range(text: str, low, high, whole: bool, low_open: bool) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    if not math.isfinite(value) or (whole and value != int(value)):
        return False
    return (value > low if low_open else value >= low) and (high is None or value <= high)


def test_fuzz_numeric_flags_give_a_result_or_one_error_line(monkeypatch, capsys):
    """Random finite and non-finite values of every numeric flag: the command runs (a stub here, so the
    fuzz is quick) with a value in the flag's range, or stops with one ``error:`` line naming the flag;
    never a traceback, never a bad value reaching the work."""
    reached = []
    for command in NUMERIC_FLAGS:
        monkeypatch.setattr(cli, f"cmd_{command}", lambda args: reached.append(args) or 0)
    rng = np.random.default_rng(13)
    for command, flags in NUMERIC_FLAGS.items():
        for flag, (low, high, whole, low_open) in flags.items():
            for text in _fuzz_values(rng):
                reached.clear()
                code = cli.main([command, *REQUIRED[command], f"{flag}={text}"])
                out, err = capsys.readouterr()
                if _in_range(text, low, high, whole, low_open):
                    assert code == 0 and len(reached) == 1, (command, flag, text, err)
                    value = getattr(reached[0], flag.lstrip("-").replace("-", "_"))
                    value = value[0] if isinstance(value, list) else value  # a flag taking several values
                    assert math.isfinite(value) and value == float(text)
                else:
                    line = error_line(code, err)
                    assert f"argument {flag}:" in line and not reached, (command, flag, text, line)


def test_warnings_are_one_line_each(capsys, monkeypatch):
    import warnings as w

    def command(args):
        w.warn("per_class=9, but 1 class has fewer images", UserWarning)
        return 0

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv: type("A", (), {"func": staticmethod(command)})())
    assert cli.main(["demo"]) == 0
    assert capsys.readouterr().err == "warning: per_class=9, but 1 class has fewer images\n"


@pytest.fixture
def bad_specs(tmp_path, image_tree) -> dict[str, str]:
    (tmp_path / "empty").mkdir()
    return {
        "missing folder": str(tmp_path / "nope"),
        "single class": str(image_tree({"cats": 2}, "single")),
        "empty folder": str(tmp_path / "empty"),
        "empty class": str(image_tree({"cats": 2, "dogs": 0}, "hollow")),
        "unknown sklearn": "sklearn:iris",
        "unknown tfds name": "tfds:no_such_dataset_xyz",
    }


@pytest.mark.parametrize("case", ["missing folder", "single class", "empty folder", "empty class",
                                  "unknown sklearn", "unknown tfds name"])
def test_recommend_bad_data_is_one_clean_error(case, bad_specs, capsys):
    assert cli.main(["recommend", "--data", bad_specs[case]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err


@pytest.mark.parametrize("args, message", [(["--per-class", "0"], "argument --per-class"),
                                           (["--backbone", "no_such_net"], "unknown backbone"),
                                           (["--verify", "--verify-seeds", "0"], "verify-seeds")])
def test_recommend_bad_options_are_one_clean_error(args, message, capsys):
    assert cli.main(["recommend", "--data", "sklearn:digits", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err

