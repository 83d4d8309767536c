"""Student release and grading, for instructors (README, "Instructors").

One source of truth: solutions live in the course notebooks between markers::

    ### BEGIN SOLUTION
    model = surgery.replace_head(base, num_classes)
    ### END SOLUTION

``release`` writes the student notebooks with each solution replaced by
``raise NotImplementedError(...)`` and all outputs cleared. A *check cell* starts with ``# CHECK`` and calls
``course_utils.grading``; ``grade`` executes submitted notebooks and counts the check cells that pass.

Grading executes students' code: run it in a container or a throw-away account.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Iterable

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
CHECK = "# CHECK"
PLACEHOLDER = 'raise NotImplementedError("Exercise: replace this line with your code.")'
_BLOCK = re.compile(rf"^([ \t]*){re.escape(BEGIN)}[^\n]*\n.*?^[ \t]*{re.escape(END)}[^\n]*$",
                    re.DOTALL | re.MULTILINE)


def has_solution(source: str) -> bool:
    """True when a cell's source holds a solution block."""
    return BEGIN in source


def is_check_cell(cell) -> bool:
    """A code cell whose first line is ``# CHECK``."""
    return cell.get("cell_type") == "code" and cell.get("source", "").lstrip().startswith(CHECK)


def strip_solutions(source: str) -> str:
    """Replace every solution block with an indented ``NotImplementedError`` placeholder."""
    if source.count(BEGIN) != source.count(END):
        raise ValueError(f"Unbalanced solution markers in a cell:\n{source[:200]}\n"
                         f"Each '{BEGIN}' needs its '{END}'.")
    return _BLOCK.sub(lambda m: f"{m.group(1)}{PLACEHOLDER}", source)


def student_version(nb):
    """A copy of notebook ``nb`` with solutions replaced and outputs cleared."""
    import copy

    out = copy.deepcopy(nb)
    for cell in out.cells:
        if cell.cell_type != "code":
            continue
        cell.source = strip_solutions(cell.source)
        cell.outputs = []
        cell.execution_count = None
    return out


def release(src: Path | str, out_dir: Path | str) -> list[Path]:
    """Write the student version of every notebook in ``src`` (a folder or one file) to ``out_dir``."""
    import nbformat

    paths = _notebooks(src)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        target = out / path.name
        nbformat.write(student_version(nb), target)
        written.append(target)
    return written


def _notebooks(src: Path | str) -> list[Path]:
    src = Path(src)
    if src.is_file() and src.suffix == ".ipynb":
        return [src]
    if not src.is_dir():
        raise ValueError(f"{src} is neither a notebook nor a folder. Give the notebooks/ folder or one .ipynb file.")
    paths = sorted(p for p in src.glob("*.ipynb") if not p.name.startswith("."))
    if not paths:
        raise ValueError(f"No .ipynb files in {src}.")
    return paths


def execute(path: Path | str, timeout: int = 900, cwd: Path | str | None = None):
    """Run a notebook top to bottom, keeping going after errors; returns the executed notebook."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, allow_errors=True, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd or path.parent)}})
    client.execute()
    return nb


def check_results(nb) -> list[bool]:
    """For each check cell in an executed notebook: did it run without error?"""
    return [not any(o.get("output_type") == "error" for o in cell.get("outputs", []))
            for cell in nb.cells if is_check_cell(cell)]


def grade(folder: Path | str, out_csv: Path | str | None = None, timeout: int = 900,
          cwd: Path | str | None = None) -> list[dict]:
    """Execute every notebook in ``folder`` and count passing check cells; optionally write a CSV.

    Submissions are run with their own folder as working directory unless ``cwd`` is given.
    WARNING: this runs students' code with your permissions.
    """
    rows = []
    for path in _notebooks(folder):
        results = check_results(execute(path, timeout=timeout, cwd=cwd))
        rows.append({"notebook": path.name, "passed": sum(results), "checks": len(results),
                     "score": round(sum(results) / len(results), 3) if results else 0.0})
    if out_csv:
        _write_csv(Path(out_csv), rows)
    return rows


def _write_csv(path: Path, rows: Iterable[dict]) -> None:
    rows = list(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["notebook", "passed", "checks", "score"])
        writer.writeheader()
        writer.writerows(rows)
