"""The operator image has no torch: importing the operator must not pull it in.

From the job side the operator may use only `selection.contract`, `selection.spec` (with the
Kubernetes value grammars it checks, `selection.kube_values`), `selection.artifacts` and the S3
client beneath them, `selection.storage`, never `selection.jobs`; the contract itself is torch-free.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

OPERATOR_PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "selection_operator"
# selection.redact: torch- and dependency-free, so status, Events and logs are redacted the same way.
ALLOWED_FROM_SELECTION = {"selection.contract", "selection.spec", "selection.kube_values", "selection.artifacts",
                          "selection.storage", "selection.redact"}


def modules_loaded_by(statement: str) -> set[str]:
    """The modules in sys.modules after running `statement` in a fresh interpreter."""
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_operator_imports_without_torch_or_transformers():
    loaded = modules_loaded_by("import selection_operator, selection_operator.results")
    assert sorted(m for m in ("torch", "transformers", "peft") if m in loaded) == []


def test_operator_never_imports_the_jobs():
    loaded = modules_loaded_by("import selection_operator, selection_operator.reconciler, selection_operator.results")
    assert sorted(m for m in loaded if m == "selection.jobs" or m.startswith("selection.jobs.")) == []


@pytest.mark.parametrize("path", sorted(OPERATOR_PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_operator_modules_import_only_the_contract_spec_artifacts_and_storage(path):
    """Checked on the source, so a function-local import cannot slip past."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names] if node.module == "selection" else []
            imported.update(names or [node.module])
    used = {name for name in imported if name == "selection" or name.startswith("selection.")}
    assert used <= ALLOWED_FROM_SELECTION, f"{path.name} imports {sorted(used - ALLOWED_FROM_SELECTION)}"


@pytest.mark.parametrize("module", ["selection.contract", "selection.kube_values"])
def test_the_contract_is_torch_and_kopf_free(module):
    loaded = modules_loaded_by(f"import {module}")
    assert sorted(m for m in ("torch", "transformers", "peft", "kopf") if m in loaded) == []
    assert sorted(m for m in loaded if m.startswith("selection.jobs")) == []
