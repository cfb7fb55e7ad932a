#!/usr/bin/env bash
# The GPU check in one command: CUDA contract tests, ResNet-50 training throughput (bf16,
# channels_last, data on the GPU), FGSM-RS and PGD-7 epoch ratios, one-scan PGD-10 latency, the
# demo's GPU recipe, and the evaluation sharded by torchrun over every GPU of the machine (the
# equivalent of torchrun --nproc-per-node $(nvidia-smi -L | wc -l)) against one process; one table
# (see bench/gpu.py). Without CUDA it runs the same steps as a dry pass at tiny sizes.
#
#   bash bench/gpu.sh              # table to stdout and to $OUT/gpu-table.md (else bench/out/)
#   bash bench/gpu.sh --compile    # also standard training under torch.compile (about 2 more minutes)
#   bash bench/gpu.sh --only sharded   # only the steps whose name contains "sharded"
#
# It installs nothing from the network. On a CUDA machine that has PyTorch (and numpy, scipy,
# opencv, scikit-image, tifffile, safetensors, psutil, tqdm, pytest, pytest-timeout,
# pytest-xdist) but not the rest of requirements.txt, the missing pure-Python packages travel as
# wheels in the folder .whl/ (git-ignored; it must travel with the working tree) and are installed
# from there into a private folder, offline. Fetch them once, from the repository root, on a
# machine with PyPI (Python 3.12 is the device image's; name each package the image lacks, at the
# version you test with):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl pydicom==3.0.2
#
# pydicom is the one the steps below import; MLflow is not needed (tracking is off here).
# Budget: the steps skip themselves rather than overrun --budget-s (default 450 s, under 8 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -x .venv/bin/python ]]; then PYTHON=${PYTHON:-.venv/bin/python}; else PYTHON=${PYTHON:-python3}; fi
if compgen -G ".whl/*.whl" >/dev/null; then
  site=$(mktemp -d /tmp/lunglab-site.XXXXXX)
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 LUNGLAB_TRACKING=off
export LUNGLAB_CACHE_DIR=${LUNGLAB_CACHE_DIR:-$PWD/.cache/gpu-check}
exec "$PYTHON" bench/gpu.py --out "${OUT:-bench/out}" "$@"
