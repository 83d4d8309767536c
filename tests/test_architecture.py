"""The rules docs/architecture.md states about course_utils/, checked on the source (no imports run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "course_utils"
# docs/architecture.md's diagram, top to bottom: a module may import only modules before it.
ORDER = ["quiet", "checks", "settings", "cache", "colab", "torch_pickle", "environment", "images", "sources",
         "data", "pipelines", "lite0", "backbones", "blocks", "small_cnn", "surgery", "training", "evaluation",
         "activations", "features", "runs", "runner", "results", "distributed", "experiments", "studies",
         "domain", "advice", "plots", "grading", "grading_models", "grading_answers", "recipes", "release", "site", "smoke", "commands", "cli", "__main__"]
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def _tree(name: str) -> ast.Module:
    return ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))


def _package_imports(tree: ast.AST) -> set[str]:
    """The course_utils modules a tree imports (``from course_utils import x``, ``from course_utils.x import``)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "course_utils":
            parts = node.module.split(".")
            found |= {alias.name for alias in node.names} if len(parts) == 1 else {parts[1]}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("course_utils.")}
    return found


def test_every_module_is_placed_in_the_diagram():
    assert sorted(set(MODULES) - set(ORDER)) == []


@pytest.mark.parametrize("name", MODULES)
def test_imports_flow_one_way(name):
    later = {m for m in _package_imports(_tree(name)) if m in ORDER and ORDER.index(m) >= ORDER.index(name)}
    assert later == set(), f"{name} imports {sorted(later)}, which come after it in docs/architecture.md"


@pytest.mark.parametrize("name", MODULES)
def test_module_size(name):
    lines = len((PACKAGE / f"{name}.py").read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name}.py has {lines} lines; split it by role"


@pytest.mark.parametrize("name", MODULES)
def test_function_size(name):
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(_tree(name))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


@pytest.mark.parametrize("name", MODULES)
def test_imports_inside_functions_say_why(name):
    source = (PACKAGE / f"{name}.py").read_text(encoding="utf-8").splitlines()
    silent = []
    for func in ast.walk(_tree(name)):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                above = node.lineno - 2  # the comment may head a block of imports
                while above > 0 and source[above].strip().startswith(("import ", "from ")):
                    above -= 1
                line = source[node.lineno - 1]
                if "#" not in line and not source[above].strip().startswith("#"):
                    silent.append(f"line {node.lineno}: {line.strip()}")
    assert silent == [], "an import inside a function needs a comment saying why it is lazy"


def test_the_rules_can_fail(tmp_path, monkeypatch):
    """The checks above catch a backwards import, a long function and a silent inner import."""
    bad = ("from course_utils import cli\n\n\ndef f():\n    import json\n" + "    x = 1\n" * 61)
    (tmp_path / "settings.py").write_text(bad)
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path)
    for check in (test_imports_flow_one_way, test_function_size, test_imports_inside_functions_say_why):
        with pytest.raises(AssertionError):
            check("settings")
