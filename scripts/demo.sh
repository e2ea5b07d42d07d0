#!/usr/bin/env bash
# The main job on any host: set up (idempotent), then stream an answer from the demo model
# on the simulated runtime (or on the NPU, when a real runtime and model are given).
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
bash scripts/setup.sh >"$log" 2>&1 || { cat "$log"; exit 1; }
rm -f "$log"
if [ $# -eq 0 ]; then set -- demo "Tell me about the sea."; fi
exec .venv/bin/rkllm run --verbose "$@"
