"""The house's layers (pyproject.toml's import-linter contract) hold, and the check fails on an arrow that points up."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())", "--no-cache"]


def lint(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run(LINT, cwd=tree, capture_output=True, text=True)


@pytest.fixture
def copy_of_core(tmp_path) -> Path:
    shutil.copytree(ROOT / "core", tmp_path / "core", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_layers_hold_on_this_tree(copy_of_core):
    result = lint(copy_of_core)
    assert result.returncode == 0 and "Layers point down KEPT" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("module, up_import", [
    ("core/data/batching.py", "from core.train import step"),      # the data side reaching into the loop
    ("core/model/prepare.py", "from core.train import distributed"),  # model preparation knowing about ranks
    ("core/labels.py", "import core.data.batching"),             # the ground floor importing the project
])
def test_an_arrow_that_points_up_breaks_the_check(copy_of_core, module, up_import):
    path = copy_of_core / module
    path.write_text(path.read_text() + f"\n{up_import}  # noqa\n")
    result = lint(copy_of_core)
    assert result.returncode != 0 and "Layers point down BROKEN" in result.stdout, result.stdout + result.stderr
