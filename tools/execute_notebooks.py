"""Execute the course notebooks in place, for their committed outputs (docs/notebook_conventions.md).

    COURSE_DATA=../shared/data/flowers python tools/execute_notebooks.py [notebooks/04_freezing.ipynb ...]

The committed outputs come from a quick-mode run on the tf_flowers subset that CI keeps in
../shared/data/flowers, so COURSE_DATA must be set. Progress bars are off (COURSE_PROGRESS=0), features and
results are computed afresh in a temporary cache, and execution stops at the first error without writing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute_in_place(path: Path, timeout: int) -> float:
    """Run ``path`` top to bottom in its own folder and write it back; returns the seconds it took."""
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    args = parser.parse_args(argv)
    if not os.environ.get("COURSE_DATA"):
        print("error: set COURSE_DATA (the committed outputs come from ../shared/data/flowers)", file=sys.stderr)
        return 2
    os.environ.update(COURSE_QUICK="1", COURSE_PROGRESS="0")
    os.environ["COURSE_CACHE"] = tempfile.mkdtemp(prefix="course_outputs_")
    for path in args.notebooks or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        seconds = execute_in_place(path.resolve(), args.timeout)
        print(f"{path.name}: {seconds:.0f} s, {path.stat().st_size / 1000:.0f} KB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
