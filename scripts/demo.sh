#!/usr/bin/env bash
# The demo from a fresh clone: set up .venv, synthesise a phantom cohort, ingest it, show status.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CLINIC_MODE="${CLINIC_MODE:-demo}"
exec .venv/bin/clinic demo "$@"
