"""Student release and grading (course_utils.release). The notebooks' own rules, including that every check
fails in the student release, are in ``test_notebooks_conventions.py``."""

from __future__ import annotations

import csv
from pathlib import Path

import nbformat
import pytest

from course_utils import release
from course_utils.settings import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9]*.ipynb"))


def test_strip_solutions_keeps_indentation_and_code_around():
    source = ("x = 1\nif True:\n    ### BEGIN SOLUTION\n    y = x + 1\n    z = 3\n    ### END SOLUTION\n"
              "print(x)\n### BEGIN SOLUTION\nw = 2\n### END SOLUTION")
    out = release.strip_solutions(source)
    assert out == ("x = 1\nif True:\n    " + release.PLACEHOLDER + "\nprint(x)\n" + release.PLACEHOLDER)
    compile(out, "cell", "exec")


def test_unbalanced_markers_are_refused():
    with pytest.raises(ValueError, match="Unbalanced"):
        release.strip_solutions("### BEGIN SOLUTION\nx = 1\n")


# ------------------------------------------------------------------------ the answer key and re-injection


CHECK_X = "# CHECK\nfrom course_utils import grading\ngrading.check_equal(x, 1, 'x')"
CHECK_Y = "# CHECK\ngrading.check_equal(y, 2, 'y')"
CHECK_Z = "# CHECK\ngrading.check_equal(z, 3, 'z')"


def _notebook(cells: list[str], ids: list[str] | None = None):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    for cell, cell_id in zip(nb.cells, ids or []):
        cell["id"] = cell_id
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _instructor():
    """Three exercises, each a solution cell followed by its check cell."""
    cells = ["### BEGIN SOLUTION\nx = 1\n### END SOLUTION", CHECK_X,
             "### BEGIN SOLUTION\ny = 2\n### END SOLUTION", CHECK_Y,
             "### BEGIN SOLUTION\nz = 3\n### END SOLUTION", CHECK_Z]
    return _notebook(cells, ["sx", "cx", "sy", "cy", "sz", "cz"])


def test_the_answer_key_is_every_check_cell_in_order():
    key = release.answer_key(_instructor())
    assert [(c.exercise, c.cell_id, c.source, c.after) for c in key] == [
        ("ex1", "cx", CHECK_X, "sx"), ("ex2", "cy", CHECK_Y, "sy"), ("ex3", "cz", CHECK_Z, "sz")]
    assert key[0].checksum == release.checksum(CHECK_X + "  \n\n") != release.checksum(CHECK_X + " + 0")


def test_release_stamps_and_locks_each_check_cell_and_names_the_notebook():
    student = release.student_version(_instructor(), "03_lr")
    assert student.metadata[release.KEY] == {"notebook": "03_lr"}
    check = student.cells[3]
    assert check.metadata[release.KEY] == {"exercise": "ex2", "checksum": release.checksum(CHECK_Y)}
    assert (check.metadata["editable"], check.metadata["deletable"]) == (False, False)
    assert student.cells[2].source == release.PLACEHOLDER and release.KEY not in student.cells[2].metadata
    assert [c.id for c in student.cells] == ["sx", "cx", "sy", "cy", "sz", "cz"]


def _sources(nb) -> list[str]:
    return [cell.source for cell in nb.cells]


def test_edited_removed_and_added_checks_are_undone_and_reported():
    key = release.answer_key(_instructor())
    sub = release.student_version(_instructor(), "03_lr")
    sub.cells[1].source = "# CHECK\npass"                   # ex1 replaced with pass
    del sub.cells[3]                                        # ex2 deleted
    fake = nbformat.v4.new_code_cell(CHECK_Z.replace("3", "z"))  # a copy of ex3 that always passes
    fake.metadata[release.KEY] = {"exercise": "ex3"}
    sub.cells.append(fake)
    out, state = release.inject_checks(sub, key)
    assert state == {"ex1": "edited", "ex2": "removed", "ex3": "kept"}
    assert _sources(out) == [release.PLACEHOLDER, CHECK_X, release.PLACEHOLDER, CHECK_Y, release.PLACEHOLDER,
                             CHECK_Z, fake.source]
    assert [c.metadata.get(release.KEY, {}).get("exercise") for c in out.cells] == [
        None, "ex1", None, "ex2", None, "ex3", None]
    assert sub.cells[1].source == "# CHECK\npass"  # the submission itself is left alone


def test_checks_are_found_by_metadata_or_checksum_when_the_ids_changed():
    key = release.answer_key(_instructor())
    sub = release.student_version(_instructor())
    sub.cells[1]["id"], sub.cells[3]["id"], sub.cells[5]["id"] = "new1", "new2", "new3"
    sub.cells[3].metadata.pop(release.KEY)                 # ex2: found by its unchanged source
    sub.cells[5].metadata.pop(release.KEY)
    sub.cells[5].source = CHECK_Z + "\nassert True"        # ex3: no id, no stamp, edited: removed
    out, state = release.inject_checks(sub, key)
    assert state == {"ex1": "kept", "ex2": "kept", "ex3": "removed"}
    assert _sources(out)[5:] == [CHECK_Z, CHECK_Z + "\nassert True"]  # put back after the cell it followed


def test_a_submission_saved_without_cell_ids_is_matched_by_checksum():
    """nbformat 4.4 (older Jupyter, some converters) has no cell ids: the unchanged check is still found."""
    sub = release.student_version(_instructor())
    sub.nbformat_minor = 4
    for cell in sub.cells:
        del cell["id"]
        cell.metadata.pop(release.KEY, None)
    out, state = release.inject_checks(sub, release.answer_key(_instructor()))
    assert state == {"ex1": "kept", "ex2": "kept", "ex3": "kept"} and out.nbformat_minor == 5
    assert len({cell.id for cell in out.cells}) == 6
    nbformat.validate(out)


def test_a_check_turned_into_markdown_is_edited_and_put_back_as_code():
    sub = release.student_version(_instructor())
    sub.cells[1] = nbformat.v4.new_markdown_cell(CHECK_X)
    sub.cells[1]["id"] = "cx"
    out, state = release.inject_checks(sub, release.answer_key(_instructor()))
    assert state["ex1"] == "edited" and (out.cells[1].cell_type, out.cells[1].id) == ("code", "cx")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_tampered_course_notebook_gets_its_instructor_checks_back(path):
    """Every released course notebook: ex1 replaced with ``pass``, ex2 deleted, as a student could."""
    original = nbformat.read(path, as_version=4)
    key = release.answer_key(original)
    student = release.student_version(original, path.stem)
    checks_at = [i for i, cell in enumerate(student.cells) if release.is_check_cell(cell)]
    assert len(checks_at) == len(key) >= 1
    student.cells[checks_at[0]].source = "# CHECK\npass"
    if len(key) > 1:
        del student.cells[checks_at[1]]
    out, state = release.inject_checks(student, key)
    assert state == {c.exercise: {0: "edited", 1: "removed"}.get(i, "kept") for i, c in enumerate(key)}
    assert _sources(out) == _sources(release.student_version(original))


def test_a_submission_is_matched_to_its_instructor_notebook():
    keys = {"04_freezing": [], "04_freezing_extra": [], "05_bottleneck_features": []}
    stamped = _notebook([])
    stamped.metadata[release.KEY] = {"notebook": "05_bottleneck_features"}
    assert release.key_for(stamped, "whatever.ipynb", keys) == "05_bottleneck_features"
    assert release.key_for(_notebook([]), "alice_04_freezing_extra.ipynb", keys) == "04_freezing_extra"
    assert release.key_for(_notebook([]), "alice_04_freezing.ipynb", keys) == "04_freezing"
    assert release.key_for(_notebook([]), "alice.ipynb", keys) is None
    assert release.key_for(_notebook([]), "alice.ipynb", {"only": []}) == "only"


def test_the_csv_has_one_column_per_exercise(tmp_path):
    rows = [release._row("a.ipynb", {"ex1": True, "ex2": False}, state={"ex1": "kept", "ex2": "removed"}),
            release._row("b.ipynb", {f"ex{i}": True for i in range(1, 11)})]
    release._write_csv(tmp_path / "g.csv", rows)
    assert (tmp_path / "g.csv").read_text().splitlines() == [
        "notebook,passed,checks,score,error,tampered," + ",".join(f"ex{i}" for i in range(1, 11)),
        "a.ipynb,1,2,0.5,,ex2 removed,1,0,,,,,,,,",
        "b.ipynb,10,10,1.0,,," + ",".join(["1"] * 10)]


# ------------------------------------------------------------------------------ grading (executes notebooks)


def _write(nb, path: Path) -> Path:
    nbformat.write(nb, path)
    return path


def test_grading_runs_the_instructor_checks_not_the_submitted_ones(tmp_path):
    source, folder = tmp_path / "src", tmp_path / "submissions"
    source.mkdir(), folder.mkdir()
    _write(_instructor(), source / "03_lr.ipynb")
    (released,) = release.release(source / "03_lr.ipynb", tmp_path / "student")
    student = nbformat.read(released, as_version=4)
    honest = _notebook(["x = 1", "", "y = 2", "", "z = 3", ""])
    for i in (1, 3, 5):
        honest.cells[i] = student.cells[i]
    _write(honest, folder / "alice_03_lr.ipynb")
    cheat = nbformat.read(released, as_version=4)           # solves nothing, and fakes every check
    cheat.cells[4].source = "z = 3"                          # ex3 honestly solved
    cheat.cells[1].source = "# CHECK\npass"                 # ex1 replaced with pass
    cheat.cells.insert(4, nbformat.v4.new_code_cell("# CHECK\npass"))  # a check of its own
    del cheat.cells[3]                                       # ex2 deleted
    _write(cheat, folder / "bob.ipynb")
    rows = release.grade(folder, source, tmp_path / "g.csv", timeout=60, notebook_timeout=120)
    assert rows == [
        {"notebook": "alice_03_lr.ipynb", "passed": 3, "checks": 3, "score": 1.0, "error": "", "tampered": "",
         "ex1": 1, "ex2": 1, "ex3": 1},
        {"notebook": "bob.ipynb", "passed": 1, "checks": 3, "score": 0.333, "error": "",
         "tampered": "ex1 edited; ex2 removed", "ex1": 0, "ex2": 0, "ex3": 1}]


def test_a_batch_with_a_broken_and_an_endless_notebook_still_grades_the_good_one(tmp_path):
    source = _write(_notebook(["x = 1", CHECK_X, "y = 2", CHECK_Y], ["a", "cx", "b", "cy"]), tmp_path / "nb.ipynb")
    folder = tmp_path / "submissions"
    folder.mkdir()
    (folder / "a_broken.ipynb").write_text('{"cells": [ this is not json')
    _write(_notebook(["x = 1", CHECK_X, "while True:\n    pass", CHECK_Y], ["a", "cx", "b", "cy"]),
           folder / "b_endless.ipynb")
    _write(_notebook(["x = 1\nopen('mine.txt', 'w').write('x')", CHECK_X, "y = 3", CHECK_Y],
                     ["a", "cx", "b", "cy"]), folder / "c_good.ipynb")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    out = tmp_path / "grades.csv"
    seen = []

    def on_row(row):  # the CSV already holds every row finished so far
        with out.open() as handle:
            seen.append([r["notebook"] for r in csv.DictReader(handle)])

    rows = release.grade(folder, source, out, timeout=60, notebook_timeout=10, on_row=on_row)
    assert seen == [["a_broken.ipynb"], ["a_broken.ipynb", "b_endless.ipynb"],
                    ["a_broken.ipynb", "b_endless.ipynb", "c_good.ipynb"]]
    with out.open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["notebook"] for r in table] == ["a_broken.ipynb", "b_endless.ipynb", "c_good.ipynb"]
    broken, endless, good = table
    assert broken["error"].startswith("cannot read a_broken.ipynb: NotJSONError") and broken["score"] == ""
    assert endless["error"].startswith("timed out") and "10 s per notebook" in endless["error"]
    assert [endless[k] for k in ("passed", "checks", "score", "ex1", "ex2")] == ["1", "2", "", "1", "0"]
    assert [good[k] for k in ("passed", "checks", "score", "error", "ex1", "ex2")] == ["1", "2", "0.5", "", "1", "0"]
    assert rows[2]["score"] == 0.5
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # each ran in its own copy


def test_a_notebook_that_kills_its_kernel_gets_an_error_row(tmp_path):
    source = _write(_notebook(["x = 1", "# CHECK\nassert True"], ["a", "c"]), tmp_path / "nb.ipynb")
    folder = tmp_path / "submissions"
    folder.mkdir()
    _write(_notebook(["import os\nos._exit(1)", "# CHECK\nassert True"], ["a", "c"]), folder / "dies.ipynb")
    (row,) = release.grade(folder, source, tmp_path / "g.csv", timeout=30, notebook_timeout=30)
    assert row == {"notebook": "dies.ipynb", "passed": 0, "checks": 1, "score": "", "tampered": "", "ex1": 0,
                   "error": "the kernel died (the notebook crashed or exited Python)"}


def test_a_submission_no_instructor_notebook_matches_gets_an_error_row(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("02_a", "03_b"):
        _write(_notebook(["x = 1", CHECK_X]), source / f"{name}.ipynb")
    _write(_notebook(["x = 1"]), tmp_path / "alice.ipynb")
    row = release.grade_one(tmp_path / "alice.ipynb", release.answer_keys(source))
    assert row["error"] == ("no instructor notebook matches alice.ipynb: keep the released file name in it "
                            "(one of 02_a, 03_b) or grade with --source NOTEBOOK")
    assert (row["passed"], row["checks"], row["score"]) == (0, 0, "")


# Grading executes a notebook (minutes). nbval already runs every cell of every solution notebook, check cells
# included (pytest -m slow); these two prove the grading path end to end on one notebook with three exercises.
GRADED_END_TO_END = [REPO_ROOT / "notebooks" / "03_learning_rate.ipynb"]


@pytest.mark.slow
@pytest.mark.parametrize("path", GRADED_END_TO_END, ids=lambda p: p.stem)
def test_the_solution_notebooks_score_full_marks(path, tmp_path):
    """An instructor notebook, graded as a submission against itself (runs it in quick mode: minutes)."""
    folder = tmp_path / "submissions"
    folder.mkdir()
    _write(nbformat.read(path, as_version=4), folder / path.name)
    (row,) = release.grade(folder, path, cwd=path.parent)
    assert (row["passed"], row["score"], row["error"], row["tampered"]) == (row["checks"], 1.0, "", "")


@pytest.mark.slow
@pytest.mark.parametrize("path", GRADED_END_TO_END, ids=lambda p: p.stem)
def test_a_tampered_solution_notebook_fails_exactly_the_tampered_exercises(path, tmp_path):
    """The instructor's own notebook with ex1 replaced by ``pass`` and ex2 deleted: only those two fail."""
    nb = nbformat.read(path, as_version=4)
    checks_at = [i for i, cell in enumerate(nb.cells) if release.is_check_cell(cell)]
    nb.cells[checks_at[0]].source = "# CHECK\npass"
    del nb.cells[checks_at[1]]
    folder = tmp_path / "submissions"
    folder.mkdir()
    _write(nb, folder / f"alice_{path.name}")
    (row,) = release.grade(folder, path.parent, cwd=path.parent)
    assert (row["ex1"], row["ex2"], row["tampered"]) == (0, 0, "ex1 edited; ex2 removed")
    assert row["passed"] == row["checks"] - 2 and row["error"] == ""
