#!/usr/bin/env bash
# The device check for a session lent a GPU: one call, under 8 minutes, one result file.
#
#   bash benchmarks/device_check.sh [SECONDS]   results in $OUT (the device tool's folder), else
#                                               ./device_check/device_check.json; SECONDS is
#                                               the budget of all steps (default 420)
#
# Runs benchmarks/device_check.py (the gpu-marked tests, AMP training of the default recipe,
# torch-CUDA latency eager and with CUDA graphs, NVML energy per inference). The lent machine
# has CUDA PyTorch, onnxruntime, nvidia-ml-py, torchvision and timm but no network: the
# project's other dependencies (there: torch-pruning) come as wheels from a .whl/ folder
# carried along, made here with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl torch-pruning==1.6.1
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-device_check}"
mkdir -p "$out"
python=python3
missing="$($python - <<'PY'
import importlib.util
need = {"torch_pruning": "torch-pruning", "safetensors": "safetensors",
        "onnxscript": "onnxscript", "onnx_ir": "onnx-ir", "yaml": "pyyaml",
        "sklearn": "scikit-learn", "matplotlib": "matplotlib", "tqdm": "tqdm"}
print(" ".join(pip for mod, pip in need.items() if importlib.util.find_spec(mod) is None))
PY
)"
if [ -n "$missing" ]; then
    echo "device_check: missing packages: $missing"
    if [ -d .whl ]; then
        $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site \
            || echo "device_check: could not install the wheels in .whl/"
    fi
fi
budget="${1:-420}"
# The run's many files stay outside $OUT, which brings back only a few files.
timeout $((budget + 50)) $python benchmarks/device_check.py --out "$out" \
    --run-dir "${TMPDIR:-/tmp}/device_check_run" --budget-seconds "$budget"
