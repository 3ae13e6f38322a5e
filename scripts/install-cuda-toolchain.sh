#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler toolchain from PyPI wheels into a git-ignored venv
# (.venv-cuda), so the `cuda` feature builds on a machine with no GPU and no system CUDA
# (the recipe and why each pin: DESIGN.md, "Building CUDA without a GPU").
#
# Progress goes to stderr; stdout carries only `export` lines, so that
#     eval "$(scripts/install-cuda-toolchain.sh)"
# sets up the environment build.rs reads. A second run skips pip when every pin is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv="$root/.venv-cuda"

# nvvm and crt are pinned with nvcc: left free, pip pulls 13.5 ones whose PTX ptxas 13.0
# refuses. cuobjdump/nvdisasm have no 13.0 release; 13.2 reads 13.0 cubins.
pins=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
    nvidia-cuda-cuobjdump==13.2.51
    nvidia-cuda-nvdisasm==13.2.51
    libclang==18.1.1
)
# Only CUTLASS's headers are needed; its Python dependencies weigh 600 MB.
cutlass_pin=nvidia-cutlass==4.2.0.0

if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv" >&2
    python3 -m venv "$venv" >&2
fi
py="$venv/bin/python"

# True when every pin is installed at exactly its version (importlib.metadata needs no network).
pins_satisfied() {
    "$py" - "$@" <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
}

if pins_satisfied "${pins[@]}" "$cutlass_pin"; then
    echo "CUDA toolchain already installed in $venv" >&2
else
    echo "installing the CUDA toolchain into $venv" >&2
    "$py" -m pip install --quiet --disable-pip-version-check "${pins[@]}" >&2
    "$py" -m pip install --quiet --disable-pip-version-check --no-deps "$cutlass_pin" >&2
fi

sp=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cuda_home="$sp/nvidia/cu13"
for f in "$cuda_home/bin/nvcc" "$cuda_home/bin/fatbinary" "$sp/cutlass_library/source/include/cutlass" \
    "$sp/clang/native"; do
    if [ ! -e "$f" ]; then
        echo "the toolchain install is incomplete: $f is missing (remove $venv and run again)" >&2
        exit 1
    fi
done

echo "export CUDA_HOME='$cuda_home'"
echo "export NVCC='$cuda_home/bin/nvcc'"
# fatbinary, ptxas, cuobjdump and nvdisasm (which cuobjdump -sass calls) are found on PATH.
echo "export PATH='$cuda_home/bin':\"\$PATH\""
echo "export CUTLASS_INCLUDE='$sp/cutlass_library/source/include'"
echo "export LIBCLANG_PATH='$sp/clang/native'"
