"""Where the TensorRT runner gets its GPU buffers: torch or cuda-python, and the errors of each.

This machine has neither a GPU nor a driver, so the real cuda-python runtime (cuda-bindings,
from the [test] extra) answers every call with cudaErrorInsufficientDriver: the tests check
that this reaches the user as one line naming the call, the CUDA error and the fix. Missing
packages are simulated in a child process whose imports of them fail, as on a deploy-only
install. The GPU tests at the end run the cuda-python buffers for real where a GPU exists.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deploy.errors import CudaError, DeployConfigError, DeployError, DeployInputError
from deploy.tensorrt.cuda_python import CudaPythonBuffers, cuda_error, cuda_runtime
from deploy.tensorrt.dtypes import dtype_name, feed_dtype, from_device_layout, to_device_layout
from deploy.tensorrt.runner import open_cuda_buffers

REPO_ROOT = Path(__file__).resolve().parents[2]
HAS_CUDA_PYTHON = importlib.util.find_spec("cuda") is not None and (
    importlib.util.find_spec("cuda.bindings") is not None
    or importlib.util.find_spec("cuda.cudart") is not None
)
HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_cuda_python = pytest.mark.skipif(
    not HAS_CUDA_PYTHON, reason="cuda-python is not installed (pip install cuda-bindings)"
)


def _gpu_count() -> int:
    """GPUs cuda-python sees (0 without cuda-python, a driver or a GPU)."""
    if not HAS_CUDA_PYTHON:
        return 0
    err, count = cuda_runtime().cudaGetDeviceCount()
    return int(count) if int(err) == 0 else 0


def _torch_sees_a_gpu() -> bool:
    if not HAS_TORCH:
        return False
    import torch

    return bool(torch.cuda.is_available())


# A child process in which importing the named top-level packages fails, as where they are not
# installed; it opens the runner's buffers and prints the error type and its one line.
OPEN_WITHOUT = """
import sys

BLOCKED = set(sys.argv[1].split(",")) - {""}

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Blocker())
from deploy.tensorrt.runner import open_cuda_buffers
try:
    buffers = open_cuda_buffers(sys.argv[2], 0)
except Exception as exc:
    print(type(exc).__name__)
    print(exc)
else:
    print("OPENED", buffers.backend)
"""


def _open_without(blocked: str, choice: str = "auto") -> tuple[str, str]:
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", OPEN_WITHOUT, blocked, choice],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    kind, _, message = result.stdout.partition("\n")
    return kind, message.strip()


# --- which buffers, and what is said when none can be had ------------------------------------


def test_neither_torch_nor_cuda_python_names_the_extra_in_one_line() -> None:
    kind, message = _open_without("torch,cuda")
    assert kind == "MissingDependencyError"
    assert "\n" not in message
    assert "neither torch nor cuda-python is installed" in message
    assert "pip install 'layer-lottery-deploy[tensorrt]'" in message
    assert "pip install 'cuda-python==12.*'" in message  # the Jetson route


def test_asking_for_cuda_python_without_it_names_the_extra() -> None:
    kind, message = _open_without("cuda", "cuda-python")
    assert kind == "MissingDependencyError"
    assert "buffers need the 'cuda-python' package, which is not installed" in message
    assert "pip install 'layer-lottery-deploy[tensorrt]'" in message


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.skipif(_torch_sees_a_gpu(), reason="torch sees a GPU here, so auto takes it")
def test_a_cpu_torch_without_cuda_python_says_both() -> None:
    kind, message = _open_without("cuda")
    assert kind == "MissingDependencyError"
    assert "torch sees no CUDA GPU (a CPU build?) and cuda-python is not installed" in message
    assert "layer-lottery-deploy[tensorrt]" in message


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.skipif(_torch_sees_a_gpu(), reason="torch sees a GPU here")
def test_asking_for_torch_buffers_on_a_cpu_torch_is_refused() -> None:
    with pytest.raises(DeployConfigError, match="sees no CUDA GPU.*cuda_buffers='cuda-python'"):
        open_cuda_buffers("torch", 0)


def test_an_unknown_choice_is_refused() -> None:
    with pytest.raises(DeployConfigError, match="cuda_buffers must be one of auto, torch, cuda"):
        open_cuda_buffers("cupy", 0)


@needs_cuda_python
@pytest.mark.skipif(_gpu_count() > 0, reason="a GPU is visible: the driver error cannot happen")
@pytest.mark.parametrize(("blocked", "choice"), [("torch", "auto"), ("", "cuda-python")])
def test_cuda_python_without_a_driver_is_one_clear_line(blocked: str, choice: str) -> None:
    """The real cuda-python on this GPU-less machine: not a traceback, the call and the fix."""
    if choice == "auto" and blocked == "" and _torch_sees_a_gpu():
        pytest.skip("torch sees a GPU")
    kind, message = _open_without(blocked, choice)
    assert kind == "CudaError", message
    assert "\n" not in message
    assert message.startswith("CUDA call cudaSetDevice failed: ")
    error_name = message.split("failed: ", 1)[1].split(" ", 1)[0]
    assert error_name in ("cudaErrorInsufficientDriver", "cudaErrorNoDevice")
    assert "nvidia-smi" in message


@needs_cuda_python
@pytest.mark.skipif(_gpu_count() > 0, reason="a GPU is visible: the driver error cannot happen")
def test_the_cuda_error_is_a_deploy_error_with_the_cuda_name() -> None:
    with pytest.raises(DeployError) as raised:
        CudaPythonBuffers(cuda_runtime(), 0)
    assert isinstance(raised.value, CudaError)
    assert raised.value.error_name in ("cudaErrorInsufficientDriver", "cudaErrorNoDevice")


@needs_cuda_python
@pytest.mark.parametrize(
    ("error", "words"),
    [
        ("cudaErrorMemoryAllocation", "out of GPU memory; lower the batch size (--batch)"),
        ("cudaErrorInvalidDevice", "that device index does not exist"),
        ("cudaErrorInsufficientDriver", "pip install 'cuda-python==12.*' for CUDA 12"),
        ("cudaErrorIllegalAddress", "cudaErrorIllegalAddress ("),
    ],
)
def test_cuda_errors_carry_cudas_name_text_and_the_fix(error: str, words: str) -> None:
    runtime = cuda_runtime()
    raised = cuda_error(runtime, "cudaMalloc", getattr(runtime.cudaError_t, error))
    assert str(raised).startswith(f"CUDA call cudaMalloc failed: {error}")
    assert words in str(raised)
    assert raised.error_name == error


# --- TensorRT types on the host ------------------------------------------------------------


def test_bfloat16_goes_to_the_gpu_as_bfloat16_bytes_and_comes_back_as_float32() -> None:
    values = np.array([[1.0, -2.5, 3.140625, 1e-3]], np.float32)
    device_bytes = to_device_layout(values, "bfloat16")
    assert device_bytes.dtype.name == "bfloat16" and device_bytes.nbytes == values.size * 2
    assert device_bytes.flags.c_contiguous
    back = from_device_layout(device_bytes)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, values, rtol=2**-8)  # bfloat16 keeps 8 significant bits
    assert feed_dtype("bfloat16") == "float32" and feed_dtype("float16") == "float16"


def test_other_types_keep_their_bytes() -> None:
    values = np.arange(6, dtype=np.float16).reshape(2, 3).T  # not contiguous
    device_bytes = to_device_layout(values, "float16")
    assert device_bytes.dtype == np.float16 and device_bytes.flags.c_contiguous
    assert from_device_layout(device_bytes) is device_bytes


@pytest.mark.parametrize(
    ("member", "name"),
    [("DataType.FLOAT", "float32"), ("DataType.HALF", "float16"), ("DataType.BF16", "bfloat16")],
)
def test_tensorrt_types_map_to_numpy_names(member: str, name: str) -> None:
    assert dtype_name(member) == name


def test_a_tensorrt_type_without_a_host_type_is_named() -> None:
    with pytest.raises(DeployInputError, match="does not handle tensors of type FP8.*BF16"):
        dtype_name("DataType.FP8")


# --- on a machine with a GPU ------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda_python
@pytest.mark.skipif(_gpu_count() == 0, reason="cuda-python sees no GPU (no driver or no GPU)")
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int64"])
def test_cuda_python_buffers_copy_time_and_replay_a_graph(dtype: str) -> None:
    runtime = cuda_runtime()
    source = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    source = source if dtype in ("float32", "bfloat16") else source.astype(dtype)
    buffers = open_cuda_buffers("cuda-python", 0)
    try:
        first = buffers.allocate(source.shape, dtype)
        second = buffers.allocate(source.shape, dtype)
        buffers.upload(first, source)

        def copy_on_the_device() -> bool:  # what an engine's enqueue does: work on the stream
            kind = runtime.cudaMemcpyKind.cudaMemcpyDeviceToDevice
            err, *_ = runtime.cudaMemcpyAsync(
                second.ptr, first.ptr, first.nbytes, kind, buffers.stream_handle
            )
            return int(err) == 0

        assert copy_on_the_device()
        assert buffers.capture(copy_on_the_device) is None
        replayed = source[::-1].copy()  # new data after capture: only a real replay copies it
        buffers.upload(first, replayed)
        buffers.mark_start()
        assert buffers.replay()
        buffers.mark_end()
        out = buffers.download({"second": second})["second"]
        assert out.dtype == (np.float32 if dtype == "bfloat16" else np.dtype(dtype))
        np.testing.assert_array_equal(out, replayed)
        assert buffers.elapsed_ms() >= 0.0
        buffers.drop_graph()
        assert not buffers.replay()
        buffers.release({"first": first, "second": second})
    finally:
        buffers.close()
