#!/usr/bin/env bash
# The declared floor (pyproject.toml: Python >= 3.11, torch >= 2.11, triton >= 3.6), and the GPU box's stack
# (Python 3.12, torch 2.11, triton 3.6, transformers 5.17), under test on a CPU machine: a separate venv with exactly
# those versions, this checkout installed into it editable without dependencies (nothing in the system environment
# changes), then the kernel, model, token, checkpoint, CUDA-graph, benchmark and gpu_check tests, Triton kernels in
# the interpreter. torch 2.11 from PyPI is the ~5 GB CUDA build; it runs on CPU.
#
#   bash tools/test_floor.sh                      # VENV=.venv-floor PYTHON=python3.12 by default
#   VENV=/work/venv-t211 bash tools/test_floor.sh tests/kernels/test_patch_embed.py    # reuse a venv, pick tests
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-floor}
PYTHON=${PYTHON:-$(command -v python3.12 || command -v python3)}
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
    # numpy < 2.4: triton 3.6's interpreter calls int() on 1-element arrays, an error since numpy 2.4 (later tritons
    # squeeze first; compiled kernels on a GPU never take that path)
    "$VENV/bin/pip" install -q torch==2.11.0 triton==3.6.0 transformers==5.17.0 "numpy<2.4" safetensors \
        huggingface_hub pytest setuptools
fi
"$VENV/bin/pip" install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import sys, torch, triton, transformers, vmae_fast.kernels as k; \
print(f'Python {sys.version.split()[0]}, torch {torch.__version__}, triton {triton.__version__}, ' \
      f'transformers {transformers.__version__}; vmae_fast.kernels from {k.__file__}')"
if [ "$#" -eq 0 ]; then
    set -- tests/kernels/test_varlen_attention.py tests/kernels/test_patch_embed.py tests/kernels/test_layer_norm.py \
        tests/kernels/test_mean_pool_layernorm.py tests/kernels/test_dispatch.py tests/model/test_model_backends.py \
        tests/model/test_cuda_graphs.py tests/model/test_tokens.py tests/model/test_checkpoint.py tests/model/test_model.py \
        tests/tools/test_bench_kernels.py tests/tools/test_bench_model.py tests/tools/test_gpu_check.py
fi
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning "$@"
