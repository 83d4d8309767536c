"""Student release and grading, for instructors (README, "Instructors").

One source of truth: solutions live in the course notebooks between markers::

    ### BEGIN SOLUTION
    model = surgery.replace_head(base, num_classes)
    ### END SOLUTION

``release`` writes the student notebooks with each solution replaced by
``raise NotImplementedError(...)`` and all outputs cleared. A *check cell* starts with ``# CHECK`` and calls
``course_utils.grading``; the k-th check cell of a notebook grades exercise ``ex<k>``.

Editing the checks cannot fool ``grade`` (as in nbgrader): it finds each check cell of the instructor's
notebooks (the *answer key*) in a submission by its cell id (else by the exercise stamped at release, else
by its checksum), puts the instructor's source back, then runs the notebook. An edited or removed check
fails (a removed one is put back, for the names it defines); ``# CHECK`` cells a student adds count for
nothing. Code written to subvert the kernel itself is not caught. Grading executes students' code: run it
in a container or a throw-away account.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import logging
import math
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from course_utils import checks

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
CHECK = "# CHECK"
PLACEHOLDER = 'raise NotImplementedError("Exercise: replace this line with your code.")'
KEY = "course_utils"  # the metadata key release stamps on notebooks and check cells
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


# --------------------------------------------------------------------------------------------------
# The answer key: the instructor's check cells


@dataclass(frozen=True)
class Check:
    """One check cell of an instructor's notebook: exercise ``ex<k>``, its cell id, source and checksum;
    ``after``: the id of the cell just before it (where a removed check is put back)."""

    exercise: str
    cell_id: str | None
    source: str
    checksum: str
    after: str | None


def checksum(source: str) -> str:
    """sha256 of a cell's source, ignoring trailing spaces and blank lines at either end."""
    text = "\n".join(line.rstrip() for line in source.strip().splitlines())
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def answer_key(nb) -> list[Check]:
    """The check cells of instructor notebook ``nb``, in order (``ex1``, ``ex2``, ...)."""
    key, before = [], None
    for cell in nb.cells:
        if is_check_cell(cell):
            key.append(Check(f"ex{len(key) + 1}", cell.get("id"), cell.source, checksum(cell.source), before))
        before = cell.get("id")
    return key


def student_version(nb, name: str | None = None):
    """A copy of notebook ``nb`` with solutions replaced and outputs cleared; each check cell is stamped
    with its exercise and checksum and locked against editing (Jupyter honours it), and the notebook with
    ``name`` (the instructor notebook's stem), so ``grade`` finds them again."""
    out, key = copy.deepcopy(nb), iter(answer_key(nb))
    for cell in (c for c in out.cells if c.cell_type == "code"):
        if is_check_cell(cell):
            check = next(key)
            cell.metadata.update(editable=False, deletable=False)
            cell.metadata[KEY] = {"exercise": check.exercise, "checksum": check.checksum}
        cell.source, cell.outputs, cell.execution_count = strip_solutions(cell.source), [], None
    if name:
        out.metadata[KEY] = {"notebook": name}
    return out


def release(src: Path | str, out_dir: Path | str) -> list[Path]:
    """Write the student version of every notebook in ``src`` (a folder or one file) to ``out_dir``."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    written = [Path(out_dir) / path.name for path in _notebooks(src)]
    for path, target in zip(_notebooks(src), written):
        nbformat.write(student_version(nbformat.read(path, as_version=4), path.stem), target)
    return written


def _notebooks(src: Path | str) -> list[Path]:
    """The notebooks in folder ``src``, or the one notebook ``src``."""
    src = Path(src)
    if src.is_file() and src.suffix == ".ipynb":
        return [src]
    if not src.is_dir():
        raise ValueError(f"{src} is neither a notebook nor a folder. Give the notebooks/ folder or one .ipynb file.")
    paths = sorted(p for p in src.glob("*.ipynb") if not p.name.startswith("."))
    if not paths:
        raise ValueError(f"No .ipynb files in {src}.")
    return paths


def answer_keys(source: Path | str) -> dict[str, list[Check]]:
    """The answer key of every instructor notebook in ``source`` (a folder or one file), by notebook stem."""
    return {path.stem: answer_key(nbformat.read(path, as_version=4)) for path in _notebooks(source)}


def key_for(nb, filename: str, keys: Mapping[str, list[Check]]) -> str | None:
    """Which instructor notebook submission ``nb`` (file ``filename``) answers: the name stamped at release,
    else the longest instructor stem in the file name (``alice_04_freezing.ipynb``), else the only one."""
    stamped = _stamp(nb).get("notebook")
    if stamped in keys:
        return stamped
    inside = [stem for stem in keys if stem in Path(filename).stem]
    if inside:
        return max(inside, key=len)
    return next(iter(keys)) if len(keys) == 1 else None


def _stamp(node) -> dict:
    """What release stamped on a notebook or a cell (``{}`` when nothing, or something that is no dict)."""
    stamp = node.get("metadata", {}).get(KEY)
    return stamp if isinstance(stamp, dict) else {}


def _match(cells: list, key: list[Check]) -> dict[str, int]:
    """Exercise -> index of the submitted cell that holds it: by cell id, then by the exercise stamped in
    its metadata, then by an unchanged source (each cell answers at most one exercise)."""
    found: dict[str, int] = {}
    rules = (lambda cell, check: check.cell_id is not None and cell.get("id") == check.cell_id,
             lambda cell, check: _stamp(cell).get("exercise") == check.exercise,
             lambda cell, check: checksum(cell.get("source", "")) == check.checksum)
    for rule in rules:
        for check in (c for c in key if c.exercise not in found):
            taken = set(found.values())
            hit = next((i for i, cell in enumerate(cells) if i not in taken and rule(cell, check)), None)
            if hit is not None:
                found[check.exercise] = hit
    return found


def inject_checks(nb, key: list[Check]) -> tuple[object, dict[str, str]]:
    """A copy of submission ``nb`` whose check cells hold the instructor's source again, and each exercise's
    state: ``"kept"`` (unchanged), ``"edited"`` or ``"removed"`` (put back after the cell it followed)."""
    out = copy.deepcopy(nb)
    if out.nbformat_minor < 5:  # cell ids came with nbformat 4.5
        out = nbformat.v4.upgrade(out, from_version=4, from_minor=out.nbformat_minor)
    found, state = _match(out.cells, key), {}
    for cell in out.cells:  # only the cells put back carry an exercise (a copied check cell counts for nothing)
        cell.metadata.pop(KEY, None)
    placed: dict[str, object] = {}
    for check in key:
        fresh = nbformat.v4.new_code_cell(check.source)
        fresh.metadata[KEY] = {"exercise": check.exercise, "checksum": check.checksum}
        if check.exercise in found:
            old = out.cells[found[check.exercise]]
            kept = old.get("cell_type") == "code" and checksum(old.get("source", "")) == check.checksum
            state[check.exercise] = "kept" if kept else "edited"
            fresh["id"] = old.get("id") or fresh["id"]
            out.cells[found[check.exercise]] = fresh
        placed[check.exercise] = fresh
    for i, check in enumerate(key):
        if check.exercise not in found:
            state[check.exercise] = "removed"
            anchor = next((c for c in out.cells if check.after and c.get("id") == check.after), None)
            anchor = anchor or (placed[key[i - 1].exercise] if i else None)
            at = next((j + 1 for j, c in enumerate(out.cells) if c is anchor), 0)
            out.cells.insert(at, placed[check.exercise])
    return out, {check.exercise: state[check.exercise] for check in key}


# --------------------------------------------------------------------------------------------------
# Grading: execute each submission with the instructor's checks


GRADING_WARNING = ("warning: grading runs each student's notebook with your permissions (files, network, "
                   "credentials); run it in a container or a throw-away account, offline")
CSV_FIELDS = ["notebook", "passed", "checks", "score", "error", "tampered"]  # then one column per exercise


def execute(path: Path | str, timeout: int = 900, cwd: Path | str | None = None,
            notebook_timeout: float | None = None, nb=None):
    """Run a notebook top to bottom, keeping going after errors; returns the executed notebook.

    ``timeout``: seconds per cell; ``notebook_timeout``: seconds for the whole notebook (then the running
    cell raises ``nbclient.exceptions.CellTimeoutError`` and the kernel is shut down). ``nb``: the notebook,
    already read from ``path``. Cells run so far keep their outputs in ``nb``.
    """
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


def _ran_cleanly(cell) -> bool:
    errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    return cell.get("execution_count") is not None and not errors


def check_results(nb) -> list[bool]:
    """For each ``# CHECK`` cell in an executed notebook: did it run, and without error?"""
    return [_ran_cleanly(cell) for cell in nb.cells if is_check_cell(cell)]


def exercise_results(nb, state: Mapping[str, str]) -> dict[str, bool]:
    """Exercise -> passed, in an executed notebook from ``inject_checks``: its check was kept unchanged,
    ran, and raised nothing."""
    ran = {_stamp(cell).get("exercise"): _ran_cleanly(cell) for cell in nb.cells}
    return {exercise: how == "kept" and ran.get(exercise, False) for exercise, how in state.items()}


def _row(name: str, results: Mapping[str, bool], error: str = "", state: Mapping[str, str] | None = None) -> dict:
    """One CSV row; an error row keeps the checks that passed before the error, and has no score."""
    passed = sum(results.values())
    score = "" if error else (round(passed / len(results), 3) if results else 0.0)
    tampered = "; ".join(f"{ex} {how}" for ex, how in (state or {}).items() if how != "kept")
    return {"notebook": name, "passed": passed, "checks": len(results), "score": score, "error": error,
            "tampered": tampered, **{ex: int(ok) for ex, ok in results.items()}}


def grade_one(path: Path, keys: Mapping[str, list[Check]], timeout: int = 900,
              notebook_timeout: float | None = 3600, cwd: Path | str | None = None) -> dict:
    """Execute one submission, with the answer key's checks put back, in its own temporary copy: a CSV row.

    ``keys``: from ``answer_keys``. A notebook that cannot be read or matched to an instructor notebook,
    runs out of time or kills its kernel gets an error row naming the file and the reason (never an
    exception): ``grade`` goes on with the next one.
    """
    path = Path(path)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as err:  # noqa: BLE001 - not JSON, not a notebook, unreadable: an error row
        return _row(path.name, {}, f"cannot read {path.name}: {_first_line(err)}")
    name = key_for(nb, path.name, keys)
    if name is None:
        return _row(path.name, {}, f"no instructor notebook matches {path.name}: keep the released file name "
                                   f"in it (one of {', '.join(sorted(keys))}) or grade with --source NOTEBOOK")
    nb, state = inject_checks(nb, keys[name])
    with tempfile.TemporaryDirectory(prefix="grade-") as tmp:
        copy_path = Path(shutil.copy2(path, Path(tmp) / path.name))
        try:
            execute(copy_path, timeout=timeout, cwd=cwd or tmp, notebook_timeout=notebook_timeout, nb=nb)
        except Exception as err:  # noqa: BLE001 - timeout, dead kernel: an error row, and the batch goes on
            error = _execution_error(err, timeout, notebook_timeout)
            return _row(path.name, exercise_results(nb, state), error, state)
    return _row(path.name, exercise_results(nb, state), state=state)


def _first_line(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text}"[:200]


def _execution_error(err: BaseException, timeout: int, notebook_timeout: float | None) -> str:
    """What went wrong while executing, in words."""
    if isinstance(err, CellTimeoutError):
        limit = f"{timeout} s per cell (--timeout)"
        if notebook_timeout is not None and notebook_timeout < timeout:
            limit = f"{notebook_timeout:g} s per notebook (--notebook-timeout)"
        return f"timed out: a cell was still running after the limit of {limit}"
    if isinstance(err, DeadKernelError):
        return "the kernel died (the notebook crashed or exited Python)"
    return f"execution failed: {_first_line(err)}"


def grade(folder: Path | str, source: Path | str, out_csv: Path | str | None = None, timeout: int = 900,
          cwd: Path | str | None = None, notebook_timeout: float | None = 3600,
          on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Execute every notebook in ``folder`` with the checks of the instructor's notebooks in ``source`` (a
    folder, or one notebook that every submission answers) and score each exercise; optionally write a CSV.

    Each submission runs in its own temporary copy (its working directory, unless ``cwd`` is given), so
    one submission cannot change another's file; ``timeout`` is per cell, ``notebook_timeout`` per
    notebook. A notebook that cannot be read, times out or kills its kernel gets an error row (see
    ``grade_one``) and the batch goes on. The CSV is rewritten after every notebook, so the rows already
    graded survive anything that happens later; ``on_row`` is called with each row as it is done.
    WARNING: this runs students' code with your permissions (``GRADING_WARNING``).
    """
    keys = answer_keys(source)
    rows = []
    for path in _notebooks(folder):
        rows.append(grade_one(path, keys, timeout, notebook_timeout, cwd))
        if out_csv:
            _write_csv(Path(out_csv), rows)
        if on_row is not None:
            on_row(rows[-1])
    return rows


def _write_csv(path: Path, rows: Iterable[dict]) -> None:
    """Write the rows atomically (``checks.atomic_file``): the file always holds complete rows, with one
    column per exercise (``ex1``, ``ex2``, ...: 1 passed, 0 failed; empty when a notebook has fewer)."""
    rows = list(rows)
    exercises = sorted({k for row in rows for k in row if k not in CSV_FIELDS}, key=lambda ex: int(ex[2:]))
    with checks.atomic_file(path, encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS + exercises)
        writer.writeheader()
        writer.writerows(rows)
