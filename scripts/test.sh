#!/usr/bin/env bash
# The test suite from a fresh clone: set up .venv with test tools and the browser, lint,
# type-check, test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
bash scripts/browser.sh  # Debian's chromium + chromium-driver for the browser test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
status=0
.venv/bin/pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$status"
