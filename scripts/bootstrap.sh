#!/usr/bin/env bash
# Create (or refresh) the project's virtualenv with every extra, at the pinned versions.
set -euo pipefail
venv="${1:-.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -c requirements/constraints.txt -e ".[worker,operator,dev]"
