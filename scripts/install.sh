#!/usr/bin/env bash
# Creates .venv and installs Steward into it (editable). --extras test,dev adds those extras.
# Says what it does as it goes: on a fresh machine this is the first minute of `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "install: $*" >&2; }
extras=""
if [ "${1:-}" = "--extras" ]; then extras="$2"; fi
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv .venv
  say "upgrading pip in .venv"
  .venv/bin/pip install -q --upgrade pip
fi
# Re-install only when pyproject.toml changed since an install with these extras: one stamp
# per extra, so the test install (test,dev,bench,demo) also serves `make demo`.
stale=""
for extra in base ${extras//,/ }; do
  stamp=".venv/.steward-installed-$extra"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then stale=1; fi
done
if [ -n "$stale" ]; then
  say "installing Steward${extras:+ with extras [$extras]} into .venv (pip shows each package;" \
      "a minute or two on a fresh machine)"
  .venv/bin/pip install --progress-bar off -e ".${extras:+[$extras]}"
  for extra in base ${extras//,/ }; do touch ".venv/.steward-installed-$extra"; done
else
  say "Steward${extras:+ [$extras]} is installed in .venv and up to date"
fi
