#!/usr/bin/env bash
# Install rmtllmf (editable) with a torch build that fits the machine.
#
#   bash scripts/install.sh            # the package
#   bash scripts/install.sh test       # plus the test tools and peer libraries (extras)
#
# torch: an already installed torch is kept (GPU users bring their own build). Otherwise, on a
# machine with an NVIDIA GPU the default torch wheel is installed; without one the CPU wheel of
# TORCH_CPU_VERSION (2.13.0; on this project's machines it is served locally). Set
# TORCH_INDEX_URL to install the CPU wheel from another index.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
TORCH_CPU_VERSION="${TORCH_CPU_VERSION:-2.13.0}"
if python -c "import torch" >/dev/null 2>&1; then
  echo "install.sh: keeping torch $(python -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  python -m pip install torch
else
  python -m pip install "torch==${TORCH_CPU_VERSION}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
python -m pip install -e ".${extras:+[$extras]}"
