"""The notebooks' rules: how each opens, exercises with checks that fail in the student release, and committed
outputs a reader can read (no TensorFlow log lines, no progress-bar debris, no notebook over 400 KB).

The student-release rule is checked statically here (every check cell reads a name that only the stripped
solution assigns, so it cannot pass unsolved); one released notebook is also executed end to end (slow).
"""

from __future__ import annotations

import ast
import builtins
import json
import re
from pathlib import Path

import nbformat
import pytest

from course_utils import release

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
WITH_EXERCISES = [p for p in NOTEBOOKS if int(p.name[:2]) >= 2]
MAX_BYTES = 400_000
# What a reader must never scroll past: TensorFlow's C++ start-up lines, retracing warnings, tqdm cursor moves.
NOISE = re.compile(r"absl::|absl\b|cuInit|cudart|retracing|\x1b\[A|oneDNN custom operations")


def _cells(path: Path):
    return nbformat.read(path, as_version=4).cells


def test_notebooks_are_found():
    assert len(NOTEBOOKS) == 10, [p.name for p in NOTEBOOKS]


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


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=lambda p: p.stem)
def test_every_exercise_has_a_solution_and_a_check(path):
    cells = _cells(path)
    checks = [i for i, c in enumerate(cells) if release.is_check_cell(c)]
    solutions = [i for i, c in enumerate(cells) if c.cell_type == "code" and release.has_solution(c.source)]
    assert len(checks) >= 2, "at least two exercises per notebook from 02 on"
    assert len(solutions) >= 2
    for i in checks:
        assert re.search(r"\bgrading(_models|_answers)?\.\w+\(", cells[i].source), \
            f"check cell {i} must call course_utils.grading (or grading_models, grading_answers)"
        assert any(s < i for s in solutions), f"check cell {i} comes before any solution"


def _assigned(source: str) -> set[str]:
    """Names a cell binds: assignments, for-loop and with targets, imports, function and class names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


def _read(source: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _code(source: str) -> str:
    """A cell's Python, without IPython magics (lines starting with % or !)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def unsolved_names(notebook) -> dict[int, set[str]]:
    """For each check cell of a *released* notebook: the names it reads that no cell of it assigns.

    In the release every solution is a ``raise NotImplementedError``, so such a name exists only when the
    student writes the solution: the check cannot pass on an unsolved exercise (it fails with a NameError,
    or earlier). An empty set means the check could pass without a solution.
    """
    cells = [c for c in notebook.cells if c.cell_type == "code"]
    assigned = set().union(*(_assigned(_code(c.source)) for c in cells)) | set(dir(builtins))
    return {i: _read(_code(c.source)) - assigned for i, c in enumerate(cells) if release.is_check_cell(c)}


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=lambda p: p.stem)
def test_every_check_reads_a_name_only_the_solution_assigns(path):
    original = nbformat.read(path, as_version=4)
    student = release.student_version(original)
    solution_names = set().union(*(_assigned(_code(c.source)) for c in original.cells
                                   if c.cell_type == "code" and release.has_solution(c.source)))
    missing = unsolved_names(student)
    assert missing, "no check cells found"
    for index, names in missing.items():
        assert names, f"check cell {index} of the student release reads no name that only a solution assigns"
        assert names <= solution_names, f"check cell {index} reads {names - solution_names}, defined nowhere"


def test_the_static_rule_catches_a_check_that_could_pass_unsolved():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1\n### BEGIN SOLUTION\ny = x + 1\n### END SOLUTION"),
                nbformat.v4.new_code_cell("# CHECK\nfrom course_utils import grading\ngrading.check(x == 1)"),
                nbformat.v4.new_code_cell("# CHECK\nfrom course_utils import grading\ngrading.check(y == 2)")]
    missing = unsolved_names(release.student_version(nb))
    assert missing == {1: set(), 2: {"y"}}


@pytest.mark.slow
def test_a_released_notebook_fails_every_check_when_executed(tmp_path):
    """End to end for one notebook: the released 05 runs, and every check cell errors."""
    path = NOTEBOOK_DIR / "05_bottleneck_features.ipynb"
    (student,) = release.release(path, tmp_path)
    results = release.check_results(release.execute(student, cwd=path.parent))
    assert results, "no check cells found"
    assert not any(results), f"check cells that pass without a solution: {[i for i, r in enumerate(results) if r]}"


def _output_text(output) -> str:
    if output.get("output_type") == "stream":
        return "".join(output.get("text", ""))
    data = output.get("data", {})
    return "".join(data.get("text/plain", "")) + "".join(output.get("traceback", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_carry_no_log_noise(path):
    found = []
    for i, cell in enumerate(_cells(path)):
        for output in cell.get("outputs", []):
            match = NOISE.search(_output_text(output))
            if match:
                found.append(f"cell {i}: {match.group(0)!r}")
    assert not found, f"{path.name}: TensorFlow log lines or progress-bar debris in committed outputs: {found}"


def test_the_noise_scan_catches_each_pattern():
    lines = ["WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
             "E0000 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)",
             "I0000 cudart_stub.cc:31] Could not find cuda drivers on your machine",
             "WARNING:tensorflow:5 out of the last 8 calls to <function> triggered tf.function retracing.",
             "sweep quick:  50%|#####     | 17/34\x1b[A"]
    assert all(NOISE.search(line) for line in lines)
    assert not NOISE.search("test accuracy: 0.840 (100 test images)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_small_enough_to_read(path):
    size = path.stat().st_size
    assert size <= MAX_BYTES, f"{path.name} is {size / 1000:.0f} KB; embed photos as JPEG (plots.show_as_jpeg)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_photos_are_embedded_as_jpeg_not_png(path):
    """A PNG output over 150 KB is a photo grid that should have gone through plots.show_as_jpeg."""
    big = [i for i, cell in enumerate(_cells(path)) for output in cell.get("outputs", [])
           if len(output.get("data", {}).get("image/png", "")) > 150_000]
    assert not big, f"{path.name}: cells {big} embed large PNGs"


def test_notebooks_are_valid_json():
    for path in NOTEBOOKS:
        json.loads(path.read_text())
