"""The command line, as a user or a grader runs it: python -m course_utils predict|train|release."""

from __future__ import annotations

import json
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

    from course_utils import backbones, data

    model = keras.saving.load_model(saved)
    split = data.load_dataset(str(flowers_dir), image_size=96, per_class=10, test_per_class=6, seed=0)
    probs = model.predict(backbones.preprocess("efficientnet_lite0", split.test.images), verbose=0)
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


@pytest.mark.slow
def test_logreg_probe_reaches_the_issue_target_on_all_flowers(flowers_dir, tmp_path):
    """The foundation's acceptance bar: 500 train / 200 test photos at 224 px, test accuracy >= 0.93."""
    out = tmp_path / "r.json"
    assert cli.main(["train", "--data", str(flowers_dir), "--method", "logreg", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert (report["n_train"], report["n_test"]) == (500, 200)
    assert report["accuracy"] >= 0.93, report["accuracy"]
