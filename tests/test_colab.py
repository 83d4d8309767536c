"""The Colab path (course_utils.colab, the setup cell of every notebook) without Colab and without a network.

Fast tests: which requirements count as satisfied, the restart notice, the GPU line, the notebook headers
and the one place the repository URL is written. The slow test plays a student on Colab: a fake
``google.colab``, an empty working folder outside the repository, ``COURSE_REPO_URL`` pointing at a local
git snapshot of this working tree, and notebook 07 run from there by its own setup cell.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from importlib import metadata
from pathlib import Path

import nbformat
import pytest

from course_utils import colab, settings

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REPO_PATH = settings.REPO_URL.removeprefix("https://github.com/")  # owner/name, as badges and clones spell it


def _first(nb, cell_type: str):
    return next(cell for cell in nb.cells if cell.cell_type == cell_type)


# --------------------------------------------------------------------------------------------------
# unsatisfied()


def test_unsatisfied_lists_absent_and_too_old_packages(tmp_path):
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# a comment\n\n-r other.txt\n"
                    "pip>=1  # satisfied\n"
                    "pip<1  # installed, but too new\n"
                    "surely-not-installed-course-pkg>=1\n"
                    'also-not-installed-course-pkg; python_version < "3"\n')
    assert colab.unsatisfied(reqs) == ["pip<1", "surely-not-installed-course-pkg>=1"]


def test_unsatisfied_without_packaging_checks_names(tmp_path, monkeypatch):
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("pip<1\nsurely-not-installed-course-pkg>=1\n")
    monkeypatch.setattr(colab, "_requirement_class", lambda: None)
    assert colab.unsatisfied(reqs) == ["surely-not-installed-course-pkg>=1"]


def test_requirements_txt_is_satisfied_here_and_has_no_dev_tools():
    lines = colab._requirement_lines(ROOT / "requirements.txt")
    names = {colab.requirement_name(line) for line in lines}
    assert {"tensorflow", "keras"} <= names
    assert not names & {"jupyterlab", "pytest", "nbval", "ipywidgets"}, "dev tools belong in requirements-dev.txt"
    assert colab.unsatisfied(ROOT / "requirements.txt") == []


# --------------------------------------------------------------------------------------------------
# install(): what it runs and prints


@pytest.fixture
def fake_pip(monkeypatch):
    """install() with pip, the version snapshots and nvidia-smi faked; returns the pip calls it made."""
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(colab, "_pip", lambda *args: calls.append(args))
    monkeypatch.setattr(colab, "gpus", lambda: [])
    monkeypatch.setattr(colab, "_editable_from", lambda repo: False)
    return calls


def _versions(monkeypatch, *snapshots: dict[str, str]) -> None:
    sequence = iter(snapshots)
    monkeypatch.setattr(colab, "installed_versions", lambda: next(sequence))


def test_install_asks_for_a_restart_when_an_imported_package_changed(tmp_path, monkeypatch, capsys, fake_pip):
    import numpy  # noqa: F401 - imported, as a notebook would have

    monkeypatch.setattr(colab, "unsatisfied", lambda path: ["numpy>=99"])
    _versions(monkeypatch, {"numpy": "1.0", "keras": "3.10"}, {"numpy": "99.0", "keras": "3.10"},
              {"numpy": "99.0", "keras": "3.10"})
    colab.install(tmp_path)
    out = capsys.readouterr().out
    assert fake_pip[0] == ("install", "numpy>=99")
    assert fake_pip[1][:2] == ("install", "--no-deps") and fake_pip[1][-2:] == ("-e", str(tmp_path.resolve()))
    assert "installed (missing here, or a version outside the course's bounds): numpy>=99" in out
    assert "kept this runtime's keras 3.10" in out
    assert f"{colab.RESTART}: pip replaced numpy" in out


def test_install_needs_no_restart_for_packages_not_imported(tmp_path, monkeypatch, capsys, fake_pip):
    monkeypatch.setattr(colab, "unsatisfied", lambda path: ["not-imported-course-pkg==0.1.0"])
    _versions(monkeypatch, {"keras": "3.10"}, {"keras": "3.10", "not-imported-course-pkg": "0.1.0",
                                                "its-dependency": "2.0"}, {"keras": "3.10"})
    colab.install(tmp_path)
    out = capsys.readouterr().out
    assert "pip also installed or updated: its-dependency" in out
    assert "Restart" not in out


def test_install_with_everything_there_installs_only_the_course(tmp_path, monkeypatch, capsys, fake_pip):
    monkeypatch.setattr(colab, "unsatisfied", lambda path: [])
    _versions(monkeypatch, {"tensorflow": "2.19.0", "keras": "3.10.0"})
    colab.install(tmp_path)
    out = capsys.readouterr().out
    assert [call[:2] for call in fake_pip] == [("install", "--no-deps")]
    assert "nothing to install" in out and "kept this runtime's tensorflow 2.19.0, keras 3.10.0" in out
    assert "GPU: none, CPU only" in out and "Restart" not in out


def test_gpu_line_and_full_mode_warning(tmp_path, monkeypatch):
    fake_smi = tmp_path / "nvidia-smi"
    fake_smi.write_text("#!/bin/sh\necho 'GPU 0: Tesla T4 (UUID: GPU-0123)'\n")
    fake_smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert colab.gpus() == ["Tesla T4"]
    assert colab.gpu_lines(quick=False) == ["GPU: Tesla T4"]
    monkeypatch.setattr(colab, "gpus", lambda: [])
    assert colab.gpu_lines(quick=True) == ["GPU: none, CPU only"]
    assert "WARNING: full mode" in colab.gpu_lines(quick=False)[1]


# --------------------------------------------------------------------------------------------------
# One URL: every notebook's badge and setup cell come from settings.REPO_URL


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_badge_and_setup_cell(path):
    nb = nbformat.read(path, as_version=4)
    fix = "run `python tools/sync_notebook_headers.py`"
    assert _first(nb, "code").source == colab.setup_cell_source(), f"{path.name}: setup cell differs; {fix}"
    markdown = _first(nb, "markdown").source
    assert colab.badge(path.name) in markdown, f"{path.name}: Colab badge missing or stale; {fix}"
    assert markdown.count("colab.research.google.com/github/") == 1


def test_setup_cell_is_self_contained_and_names_the_constant():
    source = colab.setup_cell_source()
    compile(source, "setup cell", "exec")
    assert f'os.environ.get("COURSE_REPO_URL") or "{settings.REPO_URL}"' in source
    assert "pip" not in source.replace("`pip install -e .`", ""), "installing is colab.install's job"


def test_repository_url_is_written_in_one_place():
    """Only settings.py names the repository; notebooks carry it in their generated badge and setup cell
    (checked above), Markdown docs may link to it (tools/sync_notebook_headers.py keeps them in step)."""
    if not (ROOT / ".git").exists() or not shutil.which("git"):
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    offenders = []
    for name in files:
        path = ROOT / name
        if name == "course_utils/settings.py" or path.suffix == ".md" or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if path.suffix == ".ipynb":
            nb = nbformat.reads(text, as_version=4)
            for cell in (_first(nb, "code"), _first(nb, "markdown")):
                cell.source = cell.source.replace(colab.setup_cell_source(), "").replace(colab.badge(path.name), "")
            text = nbformat.writes(nb)
        if REPO_PATH in text:
            offenders.append(name)
    assert not offenders, f"the repository URL is written outside course_utils/settings.py: {offenders}"


def test_sync_tool_rewrites_only_the_header(tmp_path):
    """tools/sync_notebook_headers.py on a notebook with the old setup cell and another repository's badge."""
    spec = importlib.util.spec_from_file_location("sync_headers", ROOT / "tools" / "sync_notebook_headers.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    old_url = "https://github.com/someone/old-course"
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 01 · Title\n\n[![Open In Colab](https://colab.research.google.com/assets/"
                                      "colab-badge.svg)](https://colab.research.google.com/github/someone/"
                                      "old-course/blob/main/notebooks/01_x.ipynb)\n\nMore text."),
        nbformat.v4.new_code_cell('import sys\nif "google.colab" in sys.modules:\n    install('
                                  f'"course-utils @ git+{old_url}")'),
        nbformat.v4.new_code_cell("print('body')", outputs=[nbformat.v4.new_output("stream", text="body\n")]),
    ])
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "docs").mkdir()
    nbformat.write(nb, tmp_path / "notebooks" / "01_x.ipynb")
    (tmp_path / "README.md").write_text(f"Clone {old_url}.\n")
    (tmp_path / "docs" / "x.md").write_text("nothing here\n")
    before = nbformat.read(tmp_path / "notebooks" / "01_x.ipynb", as_version=4)

    assert tool.sync(check=True, root=tmp_path) == ["01_x.ipynb", "README.md"]
    assert tool.sync(root=tmp_path) == ["01_x.ipynb", "README.md"]
    after = nbformat.read(tmp_path / "notebooks" / "01_x.ipynb", as_version=4)
    assert after.cells[1].source == colab.setup_cell_source()
    assert after.cells[0].source == before.cells[0].source.replace(
        before.cells[0].source.splitlines()[2], colab.badge("01_x.ipynb"))
    assert after.cells[2] == before.cells[2] and after.metadata == before.metadata
    assert (tmp_path / "README.md").read_text() == f"Clone {settings.REPO_URL}.\n"
    assert tool.sync(check=True, root=tmp_path) == []


# --------------------------------------------------------------------------------------------------
# The slow one: a student on Colab, offline


def _snapshot_repo(dest: Path) -> Path:
    """A git repository holding this working tree as it is (tracked and untracked, not ignored files)."""
    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot of the working tree"]):
        subprocess.run([*git, *args], cwd=dest, check=True)
    return dest


def _kernel_venv(base: Path) -> Path:
    """A throw-away venv that sees this environment's packages (a .pth line) but not its .pth files, so the
    course installed here in editable mode is invisible there, and pip there cannot repoint it.
    Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(base)], check=True)
    python = base / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (Path(site) / "zz_parent_site_packages.pth").write_text("\n".join(ours) + "\n")
    return python


def _direct_url(name: str) -> str | None:
    try:
        return metadata.distribution(name).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None


def _outputs(cell) -> str:
    return "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")


@pytest.mark.slow
def test_notebook_07_on_fake_colab_from_a_fresh_folder(tmp_path, monkeypatch):
    """Colab, played offline: notebook 07 opened in an empty folder; its setup cell clones the course from
    COURSE_REPO_URL, works inside the clone and installs it; the sweep runs on sample:eurosat."""
    from nbclient import NotebookClient

    if os.name != "posix" or not (ROOT / ".git").exists() or not shutil.which("git"):
        pytest.skip("needs a POSIX system (as Colab), git and a git checkout to snapshot")
    start = time.perf_counter()
    source = _snapshot_repo(tmp_path / "source")
    python = _kernel_venv(tmp_path / "venv")
    fake = tmp_path / "fake_colab"
    (fake / "google" / "colab").mkdir(parents=True)  # no google/__init__.py: google.protobuf still imports
    (fake / "google" / "colab" / "__init__.py").write_text('"""A stand-in for Colab\'s google.colab."""\n')
    kernels = tmp_path / "jupyter" / "kernels" / "python3"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 "--IPKernelApp.exec_lines=import google.colab"],  # Colab's kernel imports it at start
        "display_name": "fake Colab", "language": "python"}))
    student = tmp_path / "content"  # Colab's /content: nothing of the course in it
    student.mkdir()
    student = student.resolve()
    for name in ("COURSE_DATA", "COURSE_DATA_DIR", "PYTHONHOME"):
        monkeypatch.delenv(name, raising=False)
    if settings.is_online():  # online, quick mode would download tf_flowers; stay with the offline sample
        monkeypatch.setenv("COURSE_DATA", settings.OFFLINE_SPEC)
    env = {"COURSE_REPO_URL": source.as_uri(), "COURSE_QUICK": "1", "COURSE_CACHE": str(tmp_path / "cache"),
           "COURSE_DATA_DIR": str(tmp_path / "tfds"), "COURSE_PROGRESS": "0", "JUPYTER_PATH": str(tmp_path / "jupyter"),
           "PYTHONPATH": str(fake), "PYTHONNOUSERSITE": "1", "VIRTUAL_ENV": str(python.parent.parent),
           "PATH": f"{python.parent}{os.pathsep}{os.environ['PATH']}", "MPLBACKEND": "Agg",
           "TF_CPP_MIN_LOG_LEVEL": "2", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ours = _direct_url("course-utils")

    nb = nbformat.read(source / "notebooks" / "07_experiments.ipynb", as_version=4)
    setup = _first(nb, "code").source
    n = len(nb.cells)
    nb.cells += [nbformat.v4.new_code_cell(c) for c in (
        'import json, os, course_utils\nprint(json.dumps({"cwd": os.getcwd(), "module": course_utils.__file__, '
        '"root": str(settings.REPO_ROOT), "results": str(RESULTS)}))',
        setup,  # run again in the same session: already inside the clone
        f"os.chdir({str(student)!r})",  # what a restart does to the working folder
        setup,  # run again from /content: the clone is there already
        "print(os.getcwd())")]
    setup_at = nb.cells.index(_first(nb, "code"))
    ran = time.perf_counter()
    try:
        NotebookClient(nb, kernel_name="python3", timeout=900, resources={"metadata": {"path": str(student)}}).execute()
    finally:
        nbformat.write(nb, tmp_path / "07_executed.ipynb")  # to read when something fails
    seconds = time.perf_counter() - ran
    print(f"fake Colab: preparing {ran - start:.0f} s, notebook 07 {seconds:.0f} s")

    clone = student / colab.clone_dir_name()
    first = _outputs(nb.cells[setup_at])
    assert f"course folder: {clone}" in first
    assert "nothing to install" in first and "installed (missing" not in first
    assert f"kept this runtime's tensorflow {metadata.version('tensorflow')}, keras {metadata.version('keras')}" in first
    assert f"course_utils: installed from {clone} (editable" in first
    assert "GPU: " in first and "Restart" not in first
    assert any("sweep wall time" in _outputs(cell) for cell in nb.cells[:n])
    facts = json.loads(_outputs(nb.cells[n]))
    assert facts["cwd"] == str(clone) and facts["root"] == str(clone)
    assert Path(facts["module"]).resolve().is_relative_to(clone.resolve())
    results = Path(facts["results"])
    assert results.is_relative_to(tmp_path / "cache") and len(results.read_text().splitlines()) >= 34
    for again in (nb.cells[n + 1], nb.cells[n + 3]):
        out = _outputs(again)
        assert "nothing to install" in out and f"course_utils: already installed from {clone}" in out
    assert _outputs(nb.cells[n + 4]).strip() == str(clone), "a second run must not clone into the clone"
    assert not (clone / colab.clone_dir_name()).exists()
    assert _direct_url("course-utils") == ours, "the course install of this environment was touched"
