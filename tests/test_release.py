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
