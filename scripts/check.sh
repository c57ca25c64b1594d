#!/usr/bin/env bash
# Static checks that `make test` runs before pytest (and `make check` alone): lint, types, layers.
# Configuration lives in pyproject.toml ([tool.ruff], [tool.mypy], [tool.importlinter]).
#   scripts/check.sh [VENV]   default .venv; runs every check, exits 1 if any failed
set -uo pipefail
cd "$(dirname "$0")/.."
bin="${1:-.venv}/bin"
failed=()

run() {
  local name="$1"
  shift
  echo "== $name"
  "$@" || failed+=("$name")
}

run ruff "$bin/ruff" check --no-cache selection operator bench tests
run mypy env MYPYPATH=operator "$bin/mypy"
run "import contracts" "$bin/lint-imports" --no-cache --no-logo

if [ "${#failed[@]}" -gt 0 ]; then
  echo "checks failed: ${failed[*]}" >&2
  exit 1
fi
