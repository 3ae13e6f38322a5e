#!/usr/bin/env bash
# Creates .venv-train (git-ignored) with the pinned training requirements. Idempotent.
#   tools/train/setup.sh            # then: .venv-train/bin/python tools/train/train.py --out ...
# PIP_INDEX_URL / PIP_EXTRA_INDEX_URL are honoured as usual (e.g. PyTorch's CPU wheel index).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=.venv-train
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tools/train/requirements.txt
"$venv/bin/python" -c "import torch, safetensors, tokenizers; print('torch', torch.__version__)"
