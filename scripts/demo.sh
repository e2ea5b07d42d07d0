#!/usr/bin/env bash
# The main job on any host: set up (idempotent), then stream an answer from the demo model
# on the simulated runtime (or on the NPU, when a real runtime and model are given).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh  # one line per step; the tools' output only when a step fails
if [ $# -eq 0 ]; then set -- demo "Tell me about the sea."; fi
exec .venv/bin/rkllm run --verbose "$@"
