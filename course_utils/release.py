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
import math
import re
from pathlib import Path
from typing import Callable, Iterable

from course_utils import checks

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


GRADING_WARNING = ("warning: grading runs each student's notebook with your permissions (files, network, "
                   "credentials); run it in a container or a throw-away account, offline")
CSV_FIELDS = ["notebook", "passed", "checks", "score", "error"]


def execute(path: Path | str, timeout: int = 900, cwd: Path | str | None = None,
            notebook_timeout: float | None = None, nb=None):
    """Run a notebook top to bottom, keeping going after errors; returns the executed notebook.

    ``timeout``: seconds per cell; ``notebook_timeout``: seconds for the whole notebook (then the running
    cell raises ``nbclient.exceptions.CellTimeoutError`` and the kernel is shut down). ``nb``: the notebook,
    already read from ``path``. Cells run so far keep their outputs in ``nb``.
    """
    import logging
    import time

    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nb if nb is not None else nbformat.read(path, as_version=4)
    deadline = None if notebook_timeout is None else time.monotonic() + notebook_timeout

    def cell_timeout(cell) -> float:
        left = math.inf if deadline is None else deadline - time.monotonic()
        return max(1.0, min(float(timeout), left))

    log = logging.getLogger("course_utils.grading.nbclient")  # its timeout message becomes our error row
    if not log.handlers:
        log.addHandler(logging.NullHandler())
        log.propagate = False
    client = NotebookClient(nb, timeout=timeout, timeout_func=cell_timeout, allow_errors=True,
                            kernel_name="python3", shutdown_kernel="immediate", log=log,
                            resources={"metadata": {"path": str(cwd or path.parent)}})
    client.execute()
    return nb


def check_results(nb) -> list[bool]:
    """For each check cell in an executed notebook: did it run, and without error?"""
    return [cell.get("execution_count") is not None
            and not any(o.get("output_type") == "error" for o in cell.get("outputs", []))
            for cell in nb.cells if is_check_cell(cell)]


def _row(name: str, results: list[bool], error: str = "") -> dict:
    """One CSV row; an error row keeps the checks that passed before the error, and has no score."""
    score = "" if error else (round(sum(results) / len(results), 3) if results else 0.0)
    return {"notebook": name, "passed": sum(results), "checks": len(results), "score": score, "error": error}


def grade_one(path: Path, timeout: int = 900, notebook_timeout: float | None = 3600,
              cwd: Path | str | None = None) -> dict:
    """Execute one submission in its own temporary copy and count its passing check cells: a CSV row.

    A notebook that cannot be read, runs out of time or kills its kernel gets an error row naming the
    file and the reason (never an exception): ``grade`` goes on with the next one.
    """
    import shutil
    import tempfile

    import nbformat

    path = Path(path)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as err:  # noqa: BLE001 - not JSON, not a notebook, unreadable: an error row
        return _row(path.name, [], f"cannot read {path.name}: {_first_line(err)}")
    with tempfile.TemporaryDirectory(prefix="grade-") as tmp:
        copy = Path(shutil.copy2(path, Path(tmp) / path.name))
        try:
            execute(copy, timeout=timeout, cwd=cwd or tmp, notebook_timeout=notebook_timeout, nb=nb)
        except Exception as err:  # noqa: BLE001 - timeout, dead kernel: an error row, and the batch goes on
            return _row(path.name, check_results(nb), _execution_error(err, timeout, notebook_timeout))
    return _row(path.name, check_results(nb))


def _first_line(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text}"[:200]


def _execution_error(err: BaseException, timeout: int, notebook_timeout: float | None) -> str:
    """What went wrong while executing, in words."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    if isinstance(err, CellTimeoutError):
        limit = f"{timeout} s per cell (--timeout)"
        if notebook_timeout is not None and notebook_timeout < timeout:
            limit = f"{notebook_timeout:g} s per notebook (--notebook-timeout)"
        return f"timed out: a cell was still running after the limit of {limit}"
    if isinstance(err, DeadKernelError):
        return "the kernel died (the notebook crashed or exited Python)"
    return f"execution failed: {_first_line(err)}"


def grade(folder: Path | str, out_csv: Path | str | None = None, timeout: int = 900,
          cwd: Path | str | None = None, notebook_timeout: float | None = 3600,
          on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Execute every notebook in ``folder`` and count passing check cells; optionally write a CSV.

    Each submission runs in its own temporary copy (its working directory, unless ``cwd`` is given), so
    one submission cannot change another's file; ``timeout`` is per cell, ``notebook_timeout`` per
    notebook. A notebook that cannot be read, times out or kills its kernel gets an error row (see
    ``grade_one``) and the batch goes on. The CSV is rewritten after every notebook, so the rows already
    graded survive anything that happens later; ``on_row`` is called with each row as it is done.
    WARNING: this runs students' code with your permissions (``GRADING_WARNING``).
    """
    rows = []
    for path in _notebooks(folder):
        rows.append(grade_one(path, timeout, notebook_timeout, cwd))
        if out_csv:
            _write_csv(Path(out_csv), rows)
        if on_row is not None:
            on_row(rows[-1])
    return rows


def _write_csv(path: Path, rows: Iterable[dict]) -> None:
    """Write the rows atomically (``checks.atomic_file``): the file always holds complete rows."""
    with checks.atomic_file(path, encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
