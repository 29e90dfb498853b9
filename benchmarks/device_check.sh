#!/usr/bin/env bash
# The device check for a session lent a GPU: one call, under 8 minutes, one result file.
#
#   bash benchmarks/device_check.sh          results in $OUT (the device tool's folder), else
#                                            ./device_check/device_check.json
#
# Runs benchmarks/device_check.py (the gpu-marked tests, AMP training of the default recipe,
# torch-CUDA latency eager and with CUDA graphs, NVML energy per inference). The lent machine
# has CUDA PyTorch, onnxruntime, nvidia-ml-py, torchvision and timm but no network: the
# project's other dependencies come from a wheelhouse/ folder carried along when present
# (made here with: pip download -d wheelhouse --no-deps -c constraints.txt torch-pruning
# safetensors onnxscript onnx-ir).
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
    if [ -d wheelhouse ]; then
        $python -m pip install -q --no-index --find-links wheelhouse $missing \
            || echo "device_check: could not install all of them from wheelhouse/"
    fi
fi
timeout 470 $python benchmarks/device_check.py --out "$out" --budget-seconds 420
