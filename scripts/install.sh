#!/usr/bin/env bash
# Creates .venv and installs Steward into it (editable). --extras test,dev adds those extras.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
if [ "${1:-}" = "--extras" ]; then extras="[$2]"; fi
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
# Re-install only when pyproject.toml changed since the last install into this venv.
stamp=".venv/.steward-installed${extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q -e ".${extras}"
  touch "$stamp"
fi
