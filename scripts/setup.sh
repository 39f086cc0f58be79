#!/usr/bin/env bash
# Create .venv (once) and install diffalign with the pinned torch/torchvision (constraints.txt).
# Re-runs are no-ops until pyproject.toml or constraints.txt change.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.diffalign-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    echo "setup: installing torch 2.13.0 (CPU wheel) into .venv ..."
    .venv/bin/python -m pip install --quiet torch==2.13.0
    echo "setup: installing diffalign and its dependencies (diffusers, transformers, accelerate, peft, open_clip, datasets;"
    echo "       test tools: pytest, trl, matplotlib, tensorboard): about 2 minutes on a fresh machine ..."
    .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
    # The torchvision build that pairs with the CPU torch wheel links CUDA libraries and fails to import
    # (diffalign/_compat/torchvision_cpu.py). diffalign installs its fix on import; this .pth installs it
    # at interpreter start too, for tools that import torchvision first (accelerate launch -> timm).
    # It is inert when torchvision's own kernels load (CUDA builds).
    site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo "import diffalign._compat.torchvision_cpu as shim; shim.install()" > "$site/diffalign_torchvision_cpu.pth"
    touch "$stamp"
    echo "setup: done"
fi
