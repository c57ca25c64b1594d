#!/usr/bin/env bash
# Regenerate the Helm chart's copy of the DataSelection CRD from the spec model
# (selection/spec.py -> selection/crd.py). tests/chart/test_chart.py fails when the copy drifts.
#   scripts/update-crd.sh           rewrite charts/dsel/crds/dataselections.dsel.dev.yaml
#   scripts/update-crd.sh --check   exit 1 (and show the diff) if the copy is stale
# Uses the generator module directly rather than the `dsel crd` command, so it works whenever
# selection.crd imports, even while the CLI is being changed. Same output byte for byte.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
target="charts/dsel/crds/dataselections.dsel.dev.yaml"
generated="$(mktemp)"
trap 'rm -f "$generated"' EXIT
"$python" -c 'from selection.crd import crd_yaml; print(crd_yaml(), end="")' >"$generated"
if [ "${1:-}" = "--check" ]; then
  if ! diff -u "$target" "$generated"; then
    echo "$target is stale: run scripts/update-crd.sh" >&2
    exit 1
  fi
  echo "$target is up to date"
  exit 0
fi
mkdir -p "$(dirname "$target")"
cat "$generated" >"$target"
echo "wrote $target"
