"""Write the Colab badge and setup cell of every notebook from ``course_utils.colab``.

The repository URL lives in one place, ``course_utils.settings.REPO_URL``. After changing it, run

    python tools/sync_notebook_headers.py           # rewrite the notebooks that differ
    python tools/sync_notebook_headers.py --check   # only list them; exit code 1 when any differs

Only two things change in a notebook: the badge line in its first Markdown cell and the source of its first
code cell (the setup cell). Everything else (outputs, ids, metadata, the JSON layout) stays byte for byte.
When the notebooks named another repository before, README.md and docs/*.md get the new name as well.
``tests/test_colab.py`` fails until this has been run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from course_utils import colab, settings  # noqa: E402

BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\(https://colab\.research\.google\.com/github/[^)]*\)")
OLD_URL = re.compile(r'(?:"COURSE_REPO_URL"\) or "|git\+)(https://github\.com/[^"\s]+)"')


def _dump(nb: dict) -> str:
    """The layout Jupyter and nbformat write: one-space indent, sorted keys, UTF-8, a final newline."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def updated(text: str, name: str) -> tuple[str, str | None]:
    """(the notebook text with the current badge and setup cell, the repository URL it named before)."""
    nb = json.loads(text)
    if _dump(nb) != text:
        raise ValueError(f"{name}: not in Jupyter's JSON layout; open and save it in Jupyter first")
    cells = nb["cells"]
    markdown = next(c for c in cells if c["cell_type"] == "markdown")
    code = next(c for c in cells if c["cell_type"] == "code")
    old = OLD_URL.search("".join(code["source"]))
    source = "".join(markdown["source"])
    if len(BADGE.findall(source)) != 1:
        raise ValueError(f"{name}: the first Markdown cell needs exactly one Colab badge")
    new_source = BADGE.sub(lambda _: colab.badge(name), source)
    if new_source != source:
        markdown["source"] = _lines(new_source)
    if "".join(code["source"]) != colab.setup_cell_source():
        code["source"] = _lines(colab.setup_cell_source())
    return _dump(nb), old.group(1) if old else None


def sync(check: bool = False, root: Path = ROOT) -> list[str]:
    """Bring every notebook's badge and setup cell in line; return the names of those that differed.

    Each notebook is read right before it is written, so concurrent edits of other cells are kept.
    """
    differing, old_urls = [], set()
    for path in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        text = path.read_text(encoding="utf-8")
        new_text, old_url = updated(text, path.name)
        if old_url and old_url != settings.REPO_URL:
            old_urls.add(old_url)
        if new_text != text:
            differing.append(path.name)
            if not check:
                path.write_text(new_text, encoding="utf-8")
    for old_url in sorted(old_urls):
        for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
            text = doc.read_text(encoding="utf-8")
            new_text = text.replace(old_url, settings.REPO_URL).replace(
                old_url.replace("https://github.com/", "colab.research.google.com/github/"),
                settings.REPO_URL.replace("https://github.com/", "colab.research.google.com/github/"))
            if new_text != text:
                differing.append(str(doc.relative_to(root)))
                if not check:
                    doc.write_text(new_text, encoding="utf-8")
    return differing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a file differs")
    args = parser.parse_args(argv)
    differing = sync(check=args.check)
    verb = "differ" if args.check else "updated"
    print(f"{verb}: {', '.join(differing)}" if differing else "all notebook headers are up to date")
    return 1 if (args.check and differing) else 0


if __name__ == "__main__":
    sys.exit(main())
