#!/usr/bin/env bash
# The test command: set up (idempotent), then run the whole test suite, C clients included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
