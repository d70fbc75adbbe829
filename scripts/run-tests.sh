#!/usr/bin/env bash
# Runs pytest; "no tests ran" (pytest exit 5) is a failure, never a pass. The 25 slowest
# tests are listed at the end, so that a test growing slow shows in CI's output.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest --durations=25 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run-tests: pytest collected no tests; treating as failure" >&2
  exit 1
fi
exit "$rc"
