"""The course as a website, for readers who run nothing (README, "Read online").

``python -m course_utils site OUT_DIR`` builds a static site from the committed notebooks, without
executing them: a landing page from the README's introduction, the ten notebooks in order (sidebar,
previous/next links, a "launch in Colab" button), ``docs/findings.md`` and ``docs/architecture.md``,
figures inline, copy buttons on code and full-text search.

The tool is Sphinx with MyST-NB (``nb_execution_mode = "off"``: the stored outputs are shown as they are)
and sphinx-book-theme; docs/architecture.md says why. They are the optional extra ``site``
(``pip install -e ".[site]"``), so nothing here imports them at module import time.

Sources are staged into a temporary folder that mirrors the repository's layout (``index.md``,
``notebooks/*.ipynb``, ``docs/*.md``), so the links the README and the docs already use resolve in the
site; links to files that are not pages (code, configs) go to the repository. Sphinx runs in a subprocess
(``python -m sphinx``), so a build leaves no global Sphinx or docutils state behind.
"""

from __future__ import annotations

import importlib
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from course_utils import checks, colab, settings

TITLE = "Fine-tuning CNNs for image classification"
EXTRA_HINT = 'the site needs the optional extra: pip install -e ".[site]"'
SITE_MODULES = ("sphinx", "myst_nb", "sphinx_book_theme", "sphinx_copybutton")
DOCS = ("docs/findings.md", "docs/architecture.md")
LANDING_SECTIONS = ("The notebooks",)  # README sections shown on the landing page after the introduction
COLAB = "https://colab.research.google.com"

_COLAB_BADGE = re.compile(r"\[!\[[^\]]*\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]"
                          r"\([^)\s]*\)")
_LINK = re.compile(r"\]\(([^)\s#]+)(#[^)\s]*)?\)")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


class MissingExtraError(ValueError):
    """The ``site`` extra is not installed; the message names it (the CLI prints it as one line)."""


def check_extra() -> None:
    """Raise MissingExtraError unless Sphinx, MyST-NB, the book theme and the copy button import."""
    for name in SITE_MODULES:
        try:
            importlib.import_module(name)  # optional dependency: only the site needs it
        except ImportError:
            raise MissingExtraError(EXTRA_HINT) from None


def notebook_paths(root: Path = settings.REPO_ROOT) -> list[Path]:
    """The course notebooks ``notebooks/NN_topic.ipynb``, in order (student releases are not included)."""
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _sections(markdown: str) -> list[tuple[str, str]]:
    """(level-2 heading, text) pairs of a Markdown page; the text before the first heading has title ''."""
    parts = re.split(r"^## +(.+?)\s*$", markdown, flags=re.MULTILINE)
    return [("", parts[0])] + list(zip(parts[1::2], parts[2::2]))


def readme_intro(readme: str, sections: tuple[str, ...] = LANDING_SECTIONS) -> str:
    """The README's title and introduction, plus the named ``##`` sections up to their first ``###``."""
    blocks = []
    for title, text in _sections(readme):
        if title == "":
            blocks.append(text.strip())
        elif title in sections:
            blocks.append(f"## {title}\n\n" + re.split(r"^### ", text, flags=re.MULTILINE)[0].strip())
    return "\n\n".join(blocks) + "\n"


def index_page(readme: str, notebooks: list[str], docs: tuple[str, ...] = DOCS, repo: str | None = None) -> str:
    """The landing page (MyST Markdown): the README's introduction and the hidden tables of contents."""
    repo = repo or settings.repo_url()
    run_note = (f"Every page is a notebook as committed, outputs included; nothing was re-run to build this "
                f"site. To run them yourself, clone [the repository]({repo}) or open a notebook in Colab "
                f"with the rocket button at the top of its page.")

    def toc(caption: str, docnames: list[str]) -> str:
        return "```{toctree}\n:hidden:\n:caption: " + caption + "\n\n" + "\n".join(docnames) + "\n```\n"

    strip = [posixpath.splitext(name)[0] for name in notebooks]
    return "\n".join([readme_intro(readme), run_note, "", toc("Notebooks", strip),
                      toc("Reference", [posixpath.splitext(d)[0] for d in docs])])


def rewrite_links(text: str, src: str, pages: set[str], repo: str | None = None) -> str:
    """Keep relative links to staged pages; point the other repository files at the repository."""
    repo = (repo or settings.repo_url()).rstrip("/")

    def fix(match: re.Match) -> str:
        target, anchor = match.group(1), match.group(2) or ""
        if _SCHEME.match(target) or target.startswith("/"):
            return match.group(0)
        path = posixpath.normpath(posixpath.join(posixpath.dirname(src), target))
        if path in pages or path.startswith("../"):
            return match.group(0)
        return f"]({repo}/blob/{colab.BRANCH}/{path}{anchor})"

    return _LINK.sub(fix, text)


def stage_notebook(src: Path, dst: Path, rel: str, pages: set[str], repo: str) -> None:
    """Copy one notebook, outputs untouched; in Markdown cells the Colab badge (an image from the web)
    becomes a text link and links are fixed as in ``rewrite_links``."""
    nb = json.loads(src.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        text = _COLAB_BADGE.sub(f"[Open in Colab]({colab.colab_url(rel, repo or settings.repo_url())})", text)
        cell["source"] = rewrite_links(text, rel, pages, repo)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(nb, ensure_ascii=False), encoding="utf-8")


def stage_sources(stage: Path, root: Path = settings.REPO_ROOT, repo: str | None = None) -> list[str]:
    """Write index.md, the notebooks and the docs into ``stage``; return the staged pages, in order."""
    repo = repo or settings.repo_url()
    notebooks = [f"notebooks/{p.name}" for p in notebook_paths(root)]
    if not notebooks:
        raise ValueError(f"no notebooks found in {root / 'notebooks'}")
    docs = tuple(d for d in DOCS if (root / d).is_file())
    figures = [f"docs/{p.name}" for p in sorted((root / "docs").glob("*.png"))]  # e.g. findings' curves
    pages = {*notebooks, *docs, *figures}
    for rel in figures:
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, stage / rel)
    readme = rewrite_links((root / "README.md").read_text(encoding="utf-8"), "README.md", pages, repo)
    (stage / "index.md").write_text(index_page(readme, notebooks, docs, repo), encoding="utf-8")
    for rel in notebooks:
        stage_notebook(root / rel, stage / rel, rel, pages, repo)
    for rel in docs:
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        text = (root / rel).read_text(encoding="utf-8")
        (stage / rel).write_text(rewrite_links(text, rel, pages, repo), encoding="utf-8")
    return ["index.md", *notebooks, *docs]


def sphinx_config(repo: str | None = None) -> dict:
    """Sphinx settings (written as conf.py): MyST-NB without execution, the book theme, Colab launch."""
    repo = repo or settings.repo_url()
    return {
        "project": TITLE,
        "html_title": TITLE,
        "extensions": ["myst_nb", "sphinx_copybutton", "sphinx.ext.githubpages"],
        "nb_execution_mode": "off",  # show the committed outputs; never run a notebook to build the site
        "myst_enable_extensions": ["dollarmath"],
        "myst_heading_anchors": 3,
        "html_theme": "sphinx_book_theme",
        "html_theme_options": {
            "repository_url": repo,
            "repository_branch": colab.BRANCH,
            "path_to_docs": "",  # the staged folder mirrors the repository's layout
            "use_repository_button": True,
            "use_download_button": True,
            "home_page_in_toc": True,
            "launch_buttons": {"colab_url": COLAB},
        },
        "copybutton_selector": "div:not(.output) > div.highlight pre",  # code, not printed outputs
        "exclude_patterns": ["_build", "**/.ipynb_checkpoints"],
    }


def write_conf(stage: Path, config: dict) -> Path:
    """Write ``config`` as ``stage/conf.py``."""
    conf = stage / "conf.py"
    lines = ['"""Generated by course_utils.site; edit sphinx_config() there, not this file."""']
    conf.write_text("\n".join(lines + [f"{key} = {value!r}" for key, value in config.items()]) + "\n")
    return conf


def build_site(out_dir: str | os.PathLike, root: Path = settings.REPO_ROOT, quiet: bool = True) -> Path:
    """Build the site into ``out_dir`` (offline, notebooks not executed); return ``out_dir/index.html``.

    Raises MissingExtraError without the ``site`` extra, ValueError for a bad ``out_dir`` and
    RuntimeError when Sphinx fails (its messages are on stderr).
    """
    check_extra()
    out = checks.output_dir(out_dir, "the site folder")
    with tempfile.TemporaryDirectory(prefix="course-site-") as tmp:
        stage = Path(tmp) / "src"
        stage.mkdir()
        stage_sources(stage, root)
        write_conf(stage, sphinx_config())
        cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-d", str(Path(tmp) / "doctrees"), str(stage), str(out)]
        if subprocess.run(cmd + (["-q"] if quiet else [])).returncode != 0:
            raise RuntimeError("sphinx could not build the site; see the messages above")
    return out / "index.html"


def main(out_dir: str | os.PathLike) -> int:
    """What ``python -m course_utils site OUT_DIR`` does: build, then say where and how long it took."""
    start = time.perf_counter()
    try:
        index = build_site(out_dir)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    pages = len(list(index.parent.glob("notebooks/*.html")))
    print(f"site with {pages} notebooks written to {index} in {time.perf_counter() - start:.0f} s")
    return 0
