"""The import contracts `make test` checks (scripts/check.sh) hold today and catch a violation.

The violating tree is a copy of both packages in a temporary directory, put first on the path, so
the working tree is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports with the project's contracts over the `selection` and `selection_operator` in `tree`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "operator")])}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=tree, env=env, capture_output=True, text=True, timeout=300
    )


def copy_packages(tree: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "selection", tree / "selection", ignore=ignore)
    shutil.copytree(ROOT / "operator" / "selection_operator", tree / "operator" / "selection_operator", ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")


def plant_import(module: Path, statement: str) -> None:
    """Add `statement` after the module's `from __future__` line (a function-local import would count too)."""
    source = module.read_text()
    future = "from __future__ import annotations\n"
    assert future in source, module
    module.write_text(source.replace(future, f"{future}{statement}\n", 1))


def test_the_import_contracts_hold(tmp_path):
    copy_packages(tmp_path)
    result = lint_imports(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_a_forbidden_import_breaks_its_contract(tmp_path):
    copy_packages(tmp_path)
    plant_import(tmp_path / "selection" / "data.py", "import kopf")
    plant_import(tmp_path / "operator" / "selection_operator" / "phases.py", "import selection.jobs.reduce")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "0 kept, 2 broken" in result.stdout, result.stdout
    assert "selection.data -> kopf" in result.stdout
    assert "selection_operator.phases -> selection.jobs.reduce" in result.stdout
