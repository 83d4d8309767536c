"""Student release and grading (course_utils.release): solutions stripped, every check fails unsolved.

The heavy test executes each generated student notebook in quick mode and demands that every ``# CHECK``
cell errors: an instructor's check must never pass on an unsolved exercise.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from course_utils import release

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_strip_solutions_keeps_indentation_and_code_around():
    source = ("x = 1\nif True:\n    ### BEGIN SOLUTION\n    y = x + 1\n    z = 3\n    ### END SOLUTION\n"
              "print(x)\n### BEGIN SOLUTION\nw = 2\n### END SOLUTION")
    out = release.strip_solutions(source)
    assert out == ("x = 1\nif True:\n    " + release.PLACEHOLDER + "\nprint(x)\n" + release.PLACEHOLDER)
    compile(out, "cell", "exec")


def test_unbalanced_markers_are_refused():
    with pytest.raises(ValueError, match="Unbalanced"):
        release.strip_solutions("### BEGIN SOLUTION\nx = 1\n")


def _cells(path: Path):
    return nbformat.read(path, as_version=4).cells


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_the_same_way(path):
    cells = _cells(path)
    intro = cells[0].source
    assert cells[0].cell_type == "markdown" and intro.startswith(f"# {path.stem[:2]}")
    assert "Goal" in intro and "colab.research.google.com" in intro and path.name in intro
    assert any("Recap" in c.source for c in cells[:3] if c.cell_type == "markdown")
    setup = [c for c in cells if c.cell_type == "code"][0].source
    assert '"google.colab" in sys.modules' in setup
    code = "\n".join(c.source for c in cells if c.cell_type == "code")
    assert "settings.get_settings(" in code
    assert "\ndef " not in "\n" + code, "notebooks call course_utils; helpers belong in the package"


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if int(p.name[:2]) >= 2], ids=lambda p: p.stem)
def test_every_exercise_has_a_solution_and_a_check(path):
    cells = _cells(path)
    checks = [i for i, c in enumerate(cells) if release.is_check_cell(c)]
    solutions = [i for i, c in enumerate(cells) if c.cell_type == "code" and release.has_solution(c.source)]
    assert len(checks) >= 2, "at least two exercises per notebook from 02 on"
    assert len(solutions) >= 2
    for i in checks:
        assert "grading." in cells[i].source, f"check cell {i} must call course_utils.grading"
        assert any(s < i for s in solutions), f"check cell {i} comes before any solution"


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if int(p.name[:2]) >= 2], ids=lambda p: p.stem)
def test_every_check_fails_in_the_student_release(path, tmp_path):
    (student,) = release.release(path, tmp_path)
    results = release.check_results(release.execute(student, cwd=path.parent))
    assert results, "no check cells found"
    assert not any(results), f"check cells that pass without a solution: {[i for i, r in enumerate(results) if r]}"
