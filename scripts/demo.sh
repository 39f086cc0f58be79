#!/usr/bin/env bash
# Install (scripts/setup.sh) and run the main job: the toy-world alignment demo on CPU.
# Extra arguments go to `diffalign demo` (e.g. --method mapo --output-dir runs/demo-mapo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/diffalign demo --output-dir runs/demo "$@"
