#!/usr/bin/env bash
# Installs NVIDIA's CUDA compiler (nvcc, its headers, libdevice) from PyPI
# into a virtual environment, idempotently, and prints the toolkit root
# (use it as CUDA_ROOT, with $root/bin on PATH). This is what lets a machine
# without a GPU or NVIDIA's apt repository compile clawpen's `cuda` feature:
# candle-kernels' build script runs nvcc on its .cu kernels.
#
# 13.4 is pinned because cudarc 0.19 knows CUDA versions up to 13.4 (it
# reads the version from nvcc and refuses newer ones). ~200 MB download.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-target/cuda-toolchain}
python=${CLAWPEN_PYTHON:-python3}
version=13.4.92

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv" >&2
fi
if ! "$venv/bin/python" -m pip show nvidia-cuda-nvcc 2>/dev/null | grep -qx "Version: $version"; then
  echo "clawpen: installing nvcc $version from PyPI into $venv" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    "nvidia-cuda-nvcc==$version" "nvidia-cuda-crt==$version" \
    "nvidia-nvvm==$version" "nvidia-cuda-runtime==$version" nvidia-cuda-cccl >&2
fi
root=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
"$root/bin/nvcc" --version >&2
echo "$root"
