"""Checks that run before any expensive work: command-line numbers, config values, names and output paths.

The command line (``python -m course_utils ...``, README "Command line") and ``experiments.load_config``
(notebook ``07_experiments``) call these first, so a bad value stops the command in a second, with a message
that names the flag, or the key and the file, and says what to do, instead of failing after training.
Every error here is a :class:`UsageError` (a ``ValueError``); ``cli.main`` prints it as one ``error:`` line
and exits with code 2. :func:`strict_json` keeps reports and the results store valid strict JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Mapping

import yaml

__all__ = [
    "UsageError", "as_bool", "as_float", "as_int", "as_list", "as_name", "as_text", "atomic_file", "number",
    "output_path", "strict_json", "write_json",
]

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
IMAGE_SIZE = (32, 1024)  # pixels: the smallest input every backbone takes; the largest that fits in memory
LR_MAX = 10.0  # a base learning rate above this always diverges with SGD
SEED_MAX = 2**32 - 1  # NumPy's legacy seeding (keras.utils.set_random_seed) takes no more


class UsageError(ValueError):
    """A bad argument, config value or output path; the message names it and says what to do next."""


# --------------------------------------------------------------------------------------------------
# Numbers on the command line (argparse ``type=``)


def _range_text(low: float | None, high: float | None, low_open: bool, name: str = "x") -> str:
    """``0 < --lr <= 10``-style text for a range of ``name``."""
    if high is None:
        return "any value" if low is None else f"{name} {'>' if low_open else '>='} {low:g}"
    left = "" if low is None else f"{low:g} {'<' if low_open else '<='} "
    return f"{left}{name} <= {high:g}"


def number(flag: str, low: float | None = None, high: float | None = None, *, integer: bool = False,
           low_open: bool = False) -> Callable[[str], float | int]:
    """An argparse ``type=`` for ``flag`` that accepts only finite numbers in ``[low, high]`` (``(low, high]``
    when ``low_open``); integers only when ``integer``. The message states the range in the flag's name:
    ``argument --lr: must be a finite number, 0 < --lr <= 10, got 'nan'``."""
    kind = "a whole number" if integer else "a finite number"
    bounds = _range_text(low, high, low_open, flag)

    def convert(text: str) -> float | int:
        try:
            value = float(text)
        except (TypeError, ValueError):
            value = math.nan
            finite = False
        else:
            finite = math.isfinite(value)
        ok = finite and (not integer or value == int(value))
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value <= high
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {kind}, {bounds}, got {text!r}")
        return int(value) if integer else value

    convert.__name__ = "int" if integer else "float"
    return convert


# --------------------------------------------------------------------------------------------------
# Config values (experiments.load_config): the key and the file are named in every message


def _bad(where: str, key: str, wanted: str, value: Any) -> UsageError:
    return UsageError(f"{where}: {key} must be {wanted}, got {value!r} ({type(value).__name__})")


def as_int(value: Any, key: str, where: str, low: int | None = None, high: int | None = None,
           allow_none: bool = False) -> int | None:
    """``value`` as an int in ``[low, high]`` (or None when ``allow_none``), else UsageError naming ``key``
    and the file ``where``."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        value, ok = int(value), True
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        wanted = f"a whole number, {_range_text(low, high, False, key)}" + (", or null" if allow_none else "")
        raise _bad(where, key, wanted, value)
    return int(value)


def as_float(value: Any, key: str, where: str, low: float | None = None, high: float | None = None,
             low_open: bool = False) -> float:
    """``value`` as a finite float in the range, or UsageError naming ``key`` and the file ``where``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        raise _bad(where, key, f"a finite number, {_range_text(low, high, low_open, key)}", value)
    return float(value)


def as_bool(value: Any, key: str, where: str) -> bool:
    """``value`` if it is true or false (YAML ``true``/``false``), else UsageError."""
    if not isinstance(value, bool):
        raise _bad(where, key, "true or false", value)
    return value


def as_text(value: Any, key: str, where: str) -> str:
    """``value`` if it is a non-empty string, else UsageError."""
    if not isinstance(value, str) or not value.strip():
        raise _bad(where, key, "a non-empty string", value)
    return value


def as_list(value: Any, key: str, where: str, item: Callable[[Any, str, str], Any]) -> list:
    """A list (a single value counts as a list of one) with ``item(value, key, where)`` applied to each."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    try:
        return [item(v, f"{key}[{i}]" if len(values) > 1 else key, where) for i, v in enumerate(values)]
    except UsageError:
        if isinstance(value, str) and "," in value:  # seeds: "0, 1"
            raise _bad(where, key, "a list, e.g. [0, 1, 2]", value) from None
        raise


def as_name(value: Any, key: str, where: str) -> str:
    """A plain name (letters, digits, ``_ . + -``; no path separator, no ``..``), e.g. a sweep's ``name``,
    which becomes a file name inside the cache (``<cache>/results/<name>.jsonl``)."""
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if text is None or not NAME_PATTERN.match(text) or ".." in text:
        raise UsageError(f"{where}: {key} must be a plain name (letters, digits, '_', '.', '+', '-'; no '/', "
                         f"'\\' or '..'), got {value!r}. It names a file inside the cache; to write the "
                         "results elsewhere, pass --out PATH (run_sweep(out=...))")
    return text


# --------------------------------------------------------------------------------------------------
# Output paths: checked (and their folders made) before any data is loaded


def _make_writable_folder(folder: Path, problem: str) -> None:
    """Make ``folder`` (and its parents) and write a throw-away file in it; UsageError starting ``problem``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UsageError(f"{problem} ({err.strerror or err}); choose a folder you can write to") from None


def output_path(path: str | os.PathLike, flag: str, suffix: str | None = None, example: str = "out.json") -> Path:
    """Make ``path``'s parent folders and check that ``path`` can be written, before any work.

    Refuses a path that is a folder, whose parent is a file, or that cannot be written (read-only disk,
    ``/proc``, no permission), naming ``flag`` (e.g. ``--json``) and suggesting a file name like ``example``.
    Nothing is written to ``path`` itself.
    """
    path = Path(path).expanduser()
    if suffix is not None and path.suffix != suffix:
        raise UsageError(f"{flag} must end in {suffix} (got {path})")
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name, e.g. {path / example}")
    parent = path.parent
    for folder in (parent, *parent.parents):
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{flag} {path}: {folder} is a file, not a folder; choose another path")
    _make_writable_folder(parent, f"{flag} {path}: cannot write in {parent}")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path}: the file exists and is read-only; choose another path")
    return path


def output_dir(path: str | os.PathLike, what: str) -> Path:
    """Make the folder ``path`` (``what`` names it in messages, e.g. "the site folder") and check that it can be
    written, before any work (``release``, ``site``)."""
    out = Path(path).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"{what} {out} is a file; give a folder")
    _make_writable_folder(out, f"cannot write {what} {out}")
    return out


# --------------------------------------------------------------------------------------------------
# Strict JSON (no NaN / Infinity): reports (train --json) and the results store


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()  # numpy scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", **options: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path`` and move it onto ``path`` (``os.replace``) when the block ends
    without error, so ``path`` is always either the old file or the complete new one (reports, the grading
    CSV, ``cache`` entries). ``options`` go to ``open`` (``encoding``, ``newline``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **options) as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_json(path: str | os.PathLike, value: Any) -> Path:
    """Write ``strict_json(value)`` to ``path`` atomically (``atomic_file``)."""
    text = json.dumps(strict_json(value), indent=2, allow_nan=False)
    with atomic_file(path, encoding="utf-8") as handle:
        handle.write(text + "\n")
    return Path(path)


def _parse_text(text: str, path: Path) -> Any:
    """YAML or JSON text; a syntax error names the file, the line and the column."""
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column "
                             f"{err.colno}); fix it there") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise UsageError(f"{path}: not valid YAML ({problem}{at}); check the indentation, colons "
                         "and quotes there") from None


def read_mapping(source: str | os.PathLike | Mapping[str, Any], what: str, keys: Iterable[str],
                 examples: str) -> tuple[dict, str]:
    """A YAML/JSON file (or a dict) that must hold a mapping, and where it came from, for error messages
    (``runs.load_config``, notebook 07_experiments). ``keys`` are named when the file holds something else."""
    if isinstance(source, Mapping):
        return dict(source), "<dict>"
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file {path} ({examples})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a text file (not UTF-8); a {what} is YAML or JSON") from None
    raw = _parse_text(text, path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a {what} is a mapping of keys ({', '.join(keys)})")
    return raw, str(path)
