"""What each command does (course_utils.commands), run as a user or a grader runs it: predict, train, release,
grade, recommend."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _cli import TRAIN, error_line, run_cli, tiny  # noqa: F401 - tiny is a fixture
from course_utils import cli


def test_predict_names_the_coffee(tmp_path):
    import skimage.data
    from PIL import Image

    photo = tmp_path / "coffee.jpg"
    Image.fromarray(skimage.data.coffee()).save(photo)
    result = run_cli("predict", str(photo), "--top", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == str(photo) and len(lines) == 4
    assert any(name in result.stdout for name in ("espresso", "cup"))
    assert "%" in lines[1]


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


def test_release_command_writes_student_notebooks(tmp_path):
    code = cli.main(["release", str(tmp_path / "student")])
    assert code == 0
    written = sorted(p.name for p in (tmp_path / "student").glob("*.ipynb"))
    assert written and all(name[:2].isdigit() for name in written)
    for path in (tmp_path / "student").glob("*.ipynb"):
        assert "### BEGIN SOLUTION" not in path.read_text()


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


@pytest.mark.slow
def test_logreg_probe_reaches_the_issue_target_on_all_flowers(flowers_dir, tmp_path):
    """The foundation's acceptance bar: 500 train / 200 test photos at 224 px, test accuracy >= 0.93."""
    out = tmp_path / "r.json"
    assert cli.main(["train", "--data", str(flowers_dir), "--method", "logreg", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert (report["n_train"], report["n_test"]) == (500, 200)
    assert report["accuracy"] >= 0.93, report["accuracy"]


def test_one_image_per_class_says_how_many_each_class_needs(image_tree, capsys):
    root = image_tree({"cat": 1, "dog": 2}, "one")
    code = cli.main([*TRAIN, "--data", str(root)])
    line = error_line(code, capsys.readouterr().err)
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
    assert "training diverged" in error_line(code, err) and "no model was saved" in err
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
    assert result["verify"]["comparison"]["test"] == "exact McNemar"
    assert {side: pick["steps"] for side, pick in result["verify"]["chosen"].items()} == {"freeze": 4, "tune": 4}
    assert len(result["verify"]["validation"]["tune"]) == 2  # the default two rates, chosen on validation
    assert set(result["verify"]["accuracy"]) == {"freeze", "tune"}

