"""Colab: the setup cell of every notebook, its badge, and installing what Colab lacks (notebook ``00_setup``).

On Colab the setup cell (``setup_cell_source()``, the first code cell of every notebook) clones the repository,
works inside the clone, so that ``configs/``, ``data/`` and ``notebooks/`` are where they are in a local clone,
and calls ``install(".")``. That installs only the lines of ``requirements.txt`` the runtime does not already
satisfy (Colab's own GPU build of TensorFlow and Keras is kept when it is recent enough), then the course
itself in editable mode without dependencies; it says when the runtime has to restart and whether a GPU is
there. Locally the setup cell does nothing.

This module runs right after the clone, before anything is installed: standard library only (``packaging``
is used when it is there, else pip's copy, else only names are checked). ``tools/sync_notebook_headers.py``
writes ``setup_cell_source()`` and ``badge(name)`` into every notebook from ``settings.REPO_URL``.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Iterable

from course_utils import settings

BRANCH = "main"
KEEP = ("tensorflow", "keras")  # reported by name: Colab's GPU builds, kept when they satisfy requirements.txt
RESTART = "Restart the runtime (Runtime > Restart session) and run this cell again"


def clone_dir_name(url: str = settings.REPO_URL) -> str:
    """The folder ``git clone URL`` makes: the last part of the URL without ``.git`` (notebook ``00_setup``)."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    return name[:-4] if name.endswith(".git") else name


def colab_url(path: str, url: str = settings.REPO_URL) -> str:
    """The address at which Colab opens the repository file ``path`` (e.g. ``notebooks/00_setup.ipynb``)."""
    prefix = "https://github.com/"
    if not url.startswith(prefix):
        raise ValueError(f"Colab opens notebooks from GitHub only; REPO_URL is {url!r}")
    repo = url[len(prefix):].rstrip("/").removesuffix(".git")
    return f"https://colab.research.google.com/github/{repo}/blob/{BRANCH}/{path}"


def badge(notebook_name: str, url: str = settings.REPO_URL) -> str:
    """The "Open In Colab" badge (Markdown) of ``notebooks/<notebook_name>`` on GitHub (notebook ``00_setup``)."""
    return ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"({colab_url('notebooks/' + notebook_name, url)})")


def setup_cell_source(url: str = settings.REPO_URL) -> str:
    """The first code cell of every notebook (notebook ``00_setup``).

    Self-contained, since the course is not installed when it runs on Colab. Running it again, after a
    restart or not, skips the clone and never nests a clone inside the clone.
    """
    folder = clone_dir_name(url)
    return f'''\
# Setup. Locally this does nothing (`pip install -e .` installed the course). On Colab it clones the course,
# works inside the clone (configs/ and data/ are where they are in a local clone), installs only what Colab
# lacks (Colab's own TensorFlow and Keras stay when they are recent enough) and says if a restart is needed.
import os, sys
if "google.colab" in sys.modules:
    REPO_URL = os.environ.get("COURSE_REPO_URL") or "{url}"
    if not os.path.isdir("course_utils"):  # not inside the clone yet (a second run is)
        if not os.path.isdir("{folder}"):
            import subprocess
            subprocess.run(["git", "clone", "-q", "--depth", "1", REPO_URL, "{folder}"], check=True)
        os.chdir("{folder}")
    sys.path.insert(0, os.getcwd())
    from course_utils import colab
    colab.install(".")'''


# --------------------------------------------------------------------------------------------------
# What is installed


def _normalize(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def _requirement_lines(requirements_file: str | os.PathLike) -> list[str]:
    """The requirement lines of a requirements file, comments and options (``-r``, ``--index-url``) dropped."""
    lines = []
    for raw in Path(requirements_file).read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            lines.append(line)
    return lines


def requirement_name(line: str) -> str:
    """The normalized distribution name of a requirement line: ``"scikit_learn>=1.5"`` -> ``"scikit-learn"``."""
    name = line
    for stop in "<>=!~;[ @":
        name = name.split(stop, 1)[0]
    return _normalize(name)


def _requirement_class():
    """``packaging.requirements.Requirement``, else pip's vendored copy, else None."""
    for module in ("packaging.requirements", "pip._vendor.packaging.requirements"):
        try:
            return importlib.import_module(module).Requirement
        except ImportError:
            continue
    return None


def _satisfied(line: str, requirement_class) -> bool:
    """True when the installed distribution satisfies the requirement ``line`` (or its marker excludes us)."""
    if requirement_class is None:  # no packaging at all: check the name only
        try:
            metadata.version(requirement_name(line))
            return True
        except metadata.PackageNotFoundError:
            return False
    try:
        req = requirement_class(line)
    except Exception:  # noqa: BLE001 - a line packaging cannot read: let pip decide
        return False
    if req.marker is not None and not req.marker.evaluate():
        return True
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        return False
    try:
        return req.specifier.contains(version, prereleases=True)
    except Exception:  # noqa: BLE001 - an unparsable installed version: let pip decide
        return False


def unsatisfied(requirements_file: str | os.PathLike) -> list[str]:
    """The requirement lines of ``requirements_file`` that what is installed does not satisfy (notebook
    ``00_setup``): absent packages and versions outside the bounds. Environment markers are honoured."""
    requirement_class = _requirement_class()
    return [line for line in _requirement_lines(requirements_file) if not _satisfied(line, requirement_class)]


def installed_versions() -> dict[str, str]:
    """``{normalized distribution name: version}`` of everything importable (first one on ``sys.path`` wins)."""
    importlib.invalidate_caches()
    versions: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            versions.setdefault(_normalize(name), dist.version)
    return versions


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Distributions added or changed between two ``installed_versions()`` snapshots, sorted."""
    return sorted(name for name, version in after.items() if before.get(name) != version)


def imported_from(distributions: Iterable[str], modules: Iterable[str] | None = None) -> list[str]:
    """The top-level modules already imported in this process that belong to ``distributions``: if pip has
    just replaced any of them, the running kernel still holds the old code and must restart."""
    wanted = {_normalize(d) for d in distributions}
    if not wanted:
        return []
    tops = {m.split(".", 1)[0] for m in (sys.modules if modules is None else modules)}
    owners = metadata.packages_distributions()
    return sorted(top for top in tops if wanted & {_normalize(d) for d in owners.get(top, ())})


def _editable_from(repo: Path) -> bool:
    """True when ``course-utils`` is installed in editable mode from ``repo`` (so a re-run skips it)."""
    for dist in metadata.distributions(name="course-utils"):  # the clone's own egg-info may come first
        info = json.loads(dist.read_text("direct_url.json") or "{}")
        if info.get("dir_info", {}).get("editable") and info.get("url") == repo.as_uri():
            return True
    return False


def _build_isolation_flags() -> list[str]:
    """``--no-build-isolation`` when the setuptools that pyproject.toml needs (>=77) is installed: no download."""
    try:
        major = int(metadata.version("setuptools").split(".", 1)[0])
    except (metadata.PackageNotFoundError, ValueError):
        return []
    return ["--no-build-isolation"] if major >= 77 else []


def _pip(*args: str) -> None:
    """Run ``python -m pip ARGS`` quietly; on failure print pip's output and raise."""
    done = subprocess.run([sys.executable, "-m", "pip", *args, "-q", "--disable-pip-version-check"],
                          capture_output=True, text=True)
    if done.returncode:
        print(done.stdout + done.stderr, file=sys.stderr)
        raise RuntimeError(f"pip {' '.join(args)} failed (exit code {done.returncode}); its output is above")


def gpus() -> list[str]:
    """Names of the NVIDIA GPUs ``nvidia-smi -L`` lists (empty: none), without importing TensorFlow."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.split(":", 1)[1].split("(UUID", 1)[0].strip() for line in out.splitlines()
            if line.startswith("GPU ") and ":" in line]


def gpu_lines(quick: bool | None = None) -> list[str]:
    """What to print about the GPU: its name, or none, and in full mode a warning when there is none."""
    found = gpus()
    if found:
        return [f"GPU: {', '.join(found)}"]
    lines = ["GPU: none, CPU only"]
    if not (settings.is_quick() if quick is None else quick):
        lines.append("WARNING: full mode (COURSE_QUICK=0) without a GPU takes hours. On Colab choose "
                     "Runtime > Change runtime type > GPU, then run this cell again.")
    return lines


# --------------------------------------------------------------------------------------------------
# The setup cell's one call


def install(repo_dir: str | os.PathLike = ".", requirements: str = "requirements.txt") -> None:
    """Install what the course needs on Colab (the setup cell of every notebook; notebook ``00_setup``).

    1. ``pip install`` only the lines of ``requirements.txt`` that are not satisfied already (never the
       development tools of ``requirements-dev.txt``: Jupyter, pytest, nbval);
    2. ``pip install --no-deps -e repo_dir`` (skipped when it is installed from there already);
    3. print one line per step, the GPU, and "Restart the runtime ..." when pip replaced a package this
       process had already imported. Safe to run again: nothing is left to do the second time.
    """
    repo = Path(repo_dir).resolve()
    print(f"course folder: {repo}")
    missing = unsatisfied(repo / requirements)
    stale: list[str] = []
    if missing:
        before = installed_versions()
        _pip("install", *missing)
        new = changed(before, installed_versions())
        print(f"installed (missing here, or a version outside the course's bounds): {', '.join(missing)}")
        extra = [name for name in new if name not in {requirement_name(line) for line in missing}]
        if extra:
            print(f"  pip also installed or updated: {', '.join(extra)}")
        stale = imported_from(new)
    else:
        print(f"all requirements in {requirements} are already satisfied: nothing to install")
    versions = installed_versions()
    kept = [f"{name} {versions[name]}" for name in KEEP
            if name in versions and name not in {requirement_name(line) for line in missing}]
    if kept:
        print(f"kept this runtime's {', '.join(kept)}")
    if _editable_from(repo):
        print(f"course_utils: already installed from {repo}")
    else:
        _pip("install", "--no-deps", *_build_isolation_flags(), "-e", str(repo))
        print(f"course_utils: installed from {repo} (editable, without dependencies)")
    for line in gpu_lines():
        print(line)
    if stale:
        print(f"{RESTART}: pip replaced {', '.join(stale)}, which this session had already imported.")
