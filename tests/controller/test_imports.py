"""The operator image has no torch: importing the operator must not pull it in."""

from __future__ import annotations

import subprocess
import sys


def test_operator_imports_without_torch_or_transformers():
    code = (
        "import sys, selection_operator, selection_operator.results\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
