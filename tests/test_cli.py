"""The command line, as a user or a grader runs it: python -m course_utils predict|train|release|grade."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from course_utils import cli

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "course_utils", *args], capture_output=True, text=True,
                          env=ENV, timeout=600)


def test_predict_names_the_coffee(tmp_path):
    import skimage.data
    from PIL import Image

    photo = tmp_path / "coffee.jpg"
    Image.fromarray(skimage.data.coffee()).save(photo)
    result = _run("predict", str(photo), "--top", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == str(photo) and len(lines) == 4
    assert any(name in result.stdout for name in ("espresso", "cup"))
    assert "%" in lines[1]


def test_predict_missing_file_is_one_clear_line(tmp_path):
    result = _run("predict", str(tmp_path / "nope.jpg"))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no such image file") and "nope.jpg" in last
    assert "Traceback" not in result.stderr


def test_train_writes_json_and_a_loadable_model(flowers_dir, tmp_path, capsys):
    out, saved = tmp_path / "r.json", tmp_path / "m.keras"
    code = cli.main(["train", "--data", str(flowers_dir), "--method", "logreg", "--per-class", "10",
                     "--test-per-class", "6", "--size", "96", "--json", str(out), "--save", str(saved)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "test accuracy:" in printed and "confusion matrix" in printed
    report = json.loads(out.read_text())
    for key in ("accuracy", "per_class_accuracy", "confusion_matrix", "classes", "n_train", "n_test", "seconds"):
        assert key in report
    assert report["n_train"] == 50 and report["n_test"] == 30
    assert np.sum(report["confusion_matrix"]) == 30
    assert report["accuracy"] > 0.5

    import keras

    from course_utils import data

    model = keras.saving.load_model(saved)  # raw uint8 images in: the preprocessing is inside
    split = data.load_dataset(str(flowers_dir), image_size=96, per_class=10, test_per_class=6, seed=0)
    probs = model.predict(split.test.images, verbose=0)
    assert np.mean(probs.argmax(1) == split.test.labels) == pytest.approx(report["accuracy"])


@pytest.mark.parametrize("args, words", [
    (["--data", "/no/such/folder"], "no such folder"),
    (["--data", "tfds:not_a_real_dataset_name"], "not_a_real_dataset_name"),
    (["--data", "sklearn:digits", "--save", "model.h5"], ".keras"),
])
def test_train_bad_input_is_one_clear_line(args, words, capsys):
    assert cli.main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and words in err


def test_release_command_writes_student_notebooks(tmp_path):
    code = cli.main(["release", str(tmp_path / "student")])
    assert code == 0
    written = sorted(p.name for p in (tmp_path / "student").glob("*.ipynb"))
    assert written and all(name[:2].isdigit() for name in written)
    for path in (tmp_path / "student").glob("*.ipynb"):
        assert "### BEGIN SOLUTION" not in path.read_text()


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


def test_grade_command_runs_the_source_checks_and_names_the_tampered_ones(tmp_path, capsys):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in ("x = 1", "# CHECK\nassert x == 1", "# CHECK\nassert x == 2")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "key.ipynb")
    nb.cells[2].source = "# CHECK\npass"
    (tmp_path / "in").mkdir()
    nbformat.write(nb, tmp_path / "in" / "alice.ipynb")
    assert cli.main(["grade", str(tmp_path / "in"), "--source", str(tmp_path / "key.ipynb")]) == 0
    assert capsys.readouterr().out.splitlines() == ["alice.ipynb: 1/2 checks pass (failed: ex2 edited)"]


def test_grade_refuses_a_csv_path_that_is_a_folder_before_running_anything(tmp_path, capsys):
    assert cli.main(["grade", str(tmp_path), "--csv", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: --csv {tmp_path} is a folder")


@pytest.mark.slow
def test_logreg_probe_reaches_the_issue_target_on_all_flowers(flowers_dir, tmp_path):
    """The foundation's acceptance bar: 500 train / 200 test photos at 224 px, test accuracy >= 0.93."""
    out = tmp_path / "r.json"
    assert cli.main(["train", "--data", str(flowers_dir), "--method", "logreg", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert (report["n_train"], report["n_test"]) == (500, 200)
    assert report["accuracy"] >= 0.93, report["accuracy"]


# ------------------------------------------------------------------------------------------ bad input (issue 13)


def _error_line(code: int, err: str) -> str:
    """The one ``error:`` line of a refused command (exit code 2, no traceback)."""
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def tiny(image_tree):
    """Two classes of small JPEGs in train/ and test/."""
    return image_tree({"train/cat": 4, "train/dog": 4, "test/cat": 2, "test/dog": 2}, "tiny")


@pytest.fixture
def earlier(tmp_path):
    """A file written by an earlier run, which a refused command must leave alone."""
    path = tmp_path / "earlier.json"
    path.write_text('{"accuracy": 0.9}')
    return path


TRAIN = ["train", "--size", "32", "--steps", "2"]


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
    assert message.format(tmp=tmp_path) in _error_line(code, err)
    assert "test accuracy" not in out and not out.strip()  # refused before the data were even loaded
    assert earlier.read_text() == '{"accuracy": 0.9}' and not (tmp_path / "ok" / "m.keras").exists()


def test_one_image_per_class_says_how_many_each_class_needs(image_tree, capsys):
    root = image_tree({"cat": 1, "dog": 2}, "one")
    code = cli.main([*TRAIN, "--data", str(root)])
    line = _error_line(code, capsys.readouterr().err)
    assert "no test image for classes ['cat'] (cat has 1 readable)" in line
    assert "Each class needs at least 2 readable images" in line


def test_a_diverged_run_reports_no_accuracy_and_saves_no_model(tiny, tmp_path, capsys, monkeypatch):
    """Fine-tuning whose loss becomes NaN (forced here: EfficientNet-Lite0's ReLU6 keeps it finite at the
    largest --lr the command accepts) is reported as diverged, never as an accuracy."""
    from course_utils import recipes

    real_train = recipes.training.train

    def nan_train(*args, **kwargs):
        history = real_train(*args, **kwargs)
        history.history["loss"][-1] = float("nan")
        return history

    monkeypatch.setattr(recipes.training, "train", nan_train)
    out, saved = tmp_path / "r.json", tmp_path / "m.keras"
    code = cli.main([*TRAIN, "--data", str(tiny), "--method", "finetune", "--lr", "10", "--json", str(out),
                     "--save", str(saved)])
    printed, err = capsys.readouterr()
    assert "training diverged" in _error_line(code, err) and "no model was saved" in err
    assert "test accuracy:" not in printed and "training diverged" in printed
    report = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert report["diverged"] is True and report["accuracy"] is None and report["n_test"] == 4
    assert not saved.exists()


def test_saved_model_predicts_with_its_own_class_names(tiny, tmp_path, capsys):
    out, saved = tmp_path / "out" / "r.json", tmp_path / "out" / "m.keras"
    assert cli.main([*TRAIN, "--data", str(tiny), "--method", "logreg", "--json", str(out), "--save", str(saved)]) == 0
    printed = capsys.readouterr().out
    assert printed.index("model saved to") < printed.index("results written to")  # the model first
    photo = tiny / "test" / "cat" / "img00.jpg"
    assert cli.main(["predict", "--model", str(saved), str(photo), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(photo) and len(lines) == 3
    assert {line.split()[-1] for line in lines[1:]} == {"cat", "dog"}


def test_train_exports_a_saved_model_for_serving(tiny, tmp_path, capsys):
    import tensorflow as tf  # lazy: only this test loads a SavedModel

    from course_utils import images, recipes

    saved, served = tmp_path / "m.keras", tmp_path / "served"
    assert cli.main([*TRAIN, "--data", str(tiny), "--method", "head", "--save", str(saved),
                     "--export", str(served)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"SavedModel exported to {served}"
    photo = images.decode_image(tiny / "test" / "dog" / "img01.jpg", 32)[None]
    expected = recipes.predict_probabilities(recipes.load_model(saved)[0], photo, "efficientnet_lite0")
    loaded = tf.saved_model.load(str(served))  # keep it: its variables live as long as this object
    np.testing.assert_allclose(loaded.serve(tf.constant(photo)).numpy(), expected, atol=1e-5, rtol=0)
    assert json.loads((served / recipes.SAVED_INFO).read_text())["classes"] == ["cat", "dog"]


def test_predict_reports_bad_files_and_goes_on(tmp_path, capsys, photos):
    import struct
    import zlib

    from PIL import Image

    good = tmp_path / "good.jpg"
    Image.fromarray(photos["coffee"]).save(good)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    bomb = tmp_path / "bomb.png"  # 8000 x 6000 zeros: 48 megapixels in 47 kB

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = zlib.compress(bytes(8001) * 6000, 9)
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8000, 6000, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    code = cli.main(["predict", str(text), str(bomb), str(good), "--top", "1", "--size", "64"])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    errors = err.strip().splitlines()
    assert errors[0].startswith(f"error: {text}: not an image PIL can read")
    assert errors[1].startswith(f"error: {bomb}: ImageTooLargeError: 8000x6000 pixels is more than the 40 million")
    assert out.splitlines()[0] == str(good) and len(out.splitlines()) == 2  # the next file was still done


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
    assert message.format(tmp=tmp_path) in _error_line(code, err) and not out


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
                  "--verify-steps": (1, 10**6, True, False), "--test-per-class": (1, None, True, False)},
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
                    assert math.isfinite(value) and value == float(text)
                else:
                    line = _error_line(code, err)
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


# ------------------------------------------------------------------------------------------ recommend (H4)


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


def test_recommend_json_alone_prints_only_the_json(image_tree, capsys):
    root = image_tree({"train/cat": 6, "train/coffee": 6, "test/cat": 2, "test/coffee": 2}, "small")
    assert cli.main(["recommend", "--data", str(root), "--size", "64", "--sample-per-class", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images_per_class"] == 6 and result["cell"]["data"] == "low"
    assert result["chu_advice"] in {"freeze", "try both", "tune"} and result["advice"]
    assert result["course_extension"]["label"] == "course extension (not in Chu et al.)"


@pytest.mark.slow
def test_recommend_prints_writes_json_and_verifies(image_tree, tmp_path, capsys):
    root = image_tree({"train/cat": 6, "train/coffee": 6, "test/cat": 2, "test/coffee": 2}, "small")
    out = tmp_path / "rec.json"
    assert cli.main(["recommend", "--data", str(root), "--size", "64", "--sample-per-class", "3",
                     "--json", str(out), "--verify", "--verify-size", "64", "--verify-seeds", "1",
                     "--verify-steps", "4", "--test-per-class", "2"]) == 0
    text = capsys.readouterr().out
    for line in ("images per class: 6", "distance from ImageNet:", "Chu's Table 3 cell:", "x low data",
                 "advice: ", "noise rule (", "Chu's advice ("):
        assert line in text, text
    result = json.loads(out.read_text())
    assert result["images_per_class"] == 6 and 0 <= result["calibrated_distance"] <= 1
    assert result["verify"]["comparison"]["test"] == "exact McNemar" and result["verify"]["steps"] == 4
    assert set(result["verify"]["accuracy"]) == {"freeze", "tune"}
