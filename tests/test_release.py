"""Student release and grading (course_utils.release). The notebooks' own rules, including that every check
fails in the student release, are in ``test_notebooks_conventions.py``."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from course_utils import release


def test_strip_solutions_keeps_indentation_and_code_around():
    source = ("x = 1\nif True:\n    ### BEGIN SOLUTION\n    y = x + 1\n    z = 3\n    ### END SOLUTION\n"
              "print(x)\n### BEGIN SOLUTION\nw = 2\n### END SOLUTION")
    out = release.strip_solutions(source)
    assert out == ("x = 1\nif True:\n    " + release.PLACEHOLDER + "\nprint(x)\n" + release.PLACEHOLDER)
    compile(out, "cell", "exec")


def test_unbalanced_markers_are_refused():
    with pytest.raises(ValueError, match="Unbalanced"):
        release.strip_solutions("### BEGIN SOLUTION\nx = 1\n")


# ------------------------------------------------------------------------------------------ grading (issue 13)


def _submission(folder: Path, name: str, cells: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / name)
    return folder / name


CHECK_X = "# CHECK\nfrom course_utils import grading\ngrading.check_equal(x, 1, 'x')"


def test_a_batch_with_a_broken_and_an_endless_notebook_still_grades_the_good_one(tmp_path):
    import csv

    folder = tmp_path / "submissions"
    folder.mkdir()
    (folder / "a_broken.ipynb").write_text('{"cells": [ this is not json')
    _submission(folder, "b_endless.ipynb", ["x = 1", CHECK_X, "while True:\n    pass", "# CHECK\nassert True"])
    _submission(folder, "c_good.ipynb", ["x = 1\nopen('mine.txt', 'w').write('x')", CHECK_X,
                                         "# CHECK\ngrading.check_equal(x, 2, 'x')"])
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    out = tmp_path / "grades.csv"
    seen = []

    def on_row(row):  # the CSV already holds every row finished so far
        with out.open() as handle:
            seen.append([r["notebook"] for r in csv.DictReader(handle)])

    rows = release.grade(folder, out, timeout=60, notebook_timeout=3, on_row=on_row)
    assert seen == [["a_broken.ipynb"], ["a_broken.ipynb", "b_endless.ipynb"],
                    ["a_broken.ipynb", "b_endless.ipynb", "c_good.ipynb"]]
    with out.open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["notebook"] for r in table] == ["a_broken.ipynb", "b_endless.ipynb", "c_good.ipynb"]
    broken, endless, good = table
    assert broken["error"].startswith("cannot read a_broken.ipynb: NotJSONError") and broken["score"] == ""
    assert endless["error"].startswith("timed out") and "3 s per notebook" in endless["error"]
    assert (endless["passed"], endless["checks"], endless["score"]) == ("1", "2", "")
    assert (good["passed"], good["checks"], good["score"], good["error"]) == ("1", "2", "0.5", "")
    assert rows[2]["score"] == 0.5
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # each ran in its own copy


def test_grade_command_warns_first_and_reports_an_unreadable_notebook(tmp_path, capsys):
    from course_utils import cli

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
    from course_utils import cli

    assert cli.main(["grade", str(tmp_path), "--csv", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: --csv {tmp_path} is a folder")


def test_a_notebook_that_kills_its_kernel_gets_an_error_row(tmp_path):
    folder = tmp_path / "submissions"
    folder.mkdir()
    _submission(folder, "dies.ipynb", ["import os\nos._exit(1)", "# CHECK\nassert True"])
    (row,) = release.grade(folder, tmp_path / "g.csv", timeout=30, notebook_timeout=30)
    assert row == {"notebook": "dies.ipynb", "passed": 0, "checks": 1, "score": "",
                   "error": "the kernel died (the notebook crashed or exited Python)"}
