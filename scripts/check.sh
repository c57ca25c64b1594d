#!/usr/bin/env bash
# Static checks that `make test` runs before pytest (and `make check` alone): lint, types, layers.
# Configuration lives in pyproject.toml ([tool.ruff], [tool.mypy], [tool.importlinter]).
#   scripts/check.sh [VENV]   default .venv; exits non-zero on the first failing check
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-.venv}/bin"

echo "== ruff"
"$bin/ruff" check --no-cache selection operator bench tests
echo "== mypy"
MYPYPATH=operator "$bin/mypy"
echo "== import contracts"
"$bin/lint-imports" --no-cache --no-logo
