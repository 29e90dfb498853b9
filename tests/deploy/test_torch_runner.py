"""TorchRunner: the same outputs as the module's own forward, through the Runner interface."""

from __future__ import annotations

import numpy as np
import pytest

from deploy.bench import BenchConfig, benchmark
from deploy.errors import DeployConfigError, DeployInputError
from deploy.runners import make_runner

torch = pytest.importorskip("torch", reason="torch is not installed; the torch runner is optional")

from deploy.runners.torch_runner import TorchRunner  # noqa: E402 - after the skip on purpose

HAS_CUDA = torch.cuda.is_available()


def tiny_cnn() -> torch.nn.Module:
    """BatchNorm and Dropout make eval mode matter: in train mode outputs would differ."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.5),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    )
    with torch.no_grad():  # non-trivial running stats, so eval-mode BatchNorm is visible
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    return model.train()


class TwoHeads(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.mean(dim=(2, 3)), x.amax(dim=(2, 3))


def expected_output(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("channels_last", [False, True])
def test_output_equals_module_forward_on_cpu(channels_last: bool) -> None:
    model = tiny_cnn()
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    runner = TorchRunner(model, input_shape=(None, 1, 8, 8), channels_last=channels_last)
    with runner:
        out = runner.infer({"input": x})
    assert model.training  # the caller's model was left in train mode
    assert list(out) == ["logits"] and out["logits"].dtype == np.float32
    np.testing.assert_allclose(out["logits"], expected_output(model, x), rtol=1e-5, atol=1e-6)


def test_input_specs_come_from_the_declared_shape() -> None:
    runner = make_runner("torch", tiny_cnn(), input_shape=(None, 1, 8, 8))
    assert runner.device == "cpu"
    assert [(s.name, s.shape, s.dtype) for s in runner.input_specs] == [
        ("input", (None, 1, 8, 8), "float32")
    ]
    with runner, pytest.raises(DeployInputError, match="axis 1 is 3"):
        runner.infer({"input": np.zeros((1, 3, 8, 8), np.float32)})


def test_several_outputs_are_named_by_output_names() -> None:
    x = np.arange(2 * 2 * 3 * 3, dtype=np.float32).reshape(2, 2, 3, 3)
    runner = TorchRunner(TwoHeads(), input_shape=(None, 2, 3, 3), output_names=("mean", "max"))
    with runner:
        out = runner.infer({"input": x})
    np.testing.assert_allclose(out["mean"], x.mean(axis=(2, 3)))
    np.testing.assert_allclose(out["max"], x.max(axis=(2, 3)))
    with (
        TorchRunner(TwoHeads(), input_shape=(None, 2, 3, 3)) as one_name,
        pytest.raises(DeployConfigError, match="returned 2 outputs but output_names has 1"),
    ):
        one_name.infer({"input": x})


def test_threads_apply_while_active_and_are_restored() -> None:
    before = torch.get_num_threads()
    with TorchRunner(tiny_cnn(), input_shape=(None, 1, 8, 8), threads=1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_benchmark_records_torch_backend() -> None:
    runner = TorchRunner(tiny_cnn(), input_shape=(None, 1, 8, 8), threads=1)
    records = benchmark(runner, BenchConfig(batch_sizes=(1, 2), warmup_iters=1, iterations=5), "m")
    assert [(r.backend, r.device, r.batch, r.iterations) for r in records] == [
        ("torch", "cpu", 1, 5),
        ("torch", "cpu", 2, 5),
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"input_shape": (None, 0, 8, 8)}, "integers >= 1 or None"),
        ({"threads": 0}, "threads must be an integer >= 1"),
        ({"input_names": ("a", "b")}, "need input_shape as a mapping"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict, message: str) -> None:
    options = {"input_shape": (None, 1, 8, 8)} | kwargs
    with pytest.raises(DeployConfigError, match=message):
        TorchRunner(tiny_cnn(), **options)


def test_not_a_module_is_a_config_error() -> None:
    with pytest.raises(DeployConfigError, match="expected a torch.nn.Module"):
        make_runner("torch", "model.onnx", input_shape=(None, 1, 8, 8))


@pytest.mark.skipif(HAS_CUDA, reason="checks the message shown when CUDA is absent")
def test_cuda_without_gpu_says_so() -> None:
    with pytest.raises(DeployConfigError, match="no CUDA GPU"):
        TorchRunner(tiny_cnn(), input_shape=(None, 1, 8, 8), device="cuda")
    assert TorchRunner(tiny_cnn(), input_shape=(None, 1, 8, 8), device="auto").device == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU; torch.cuda.is_available() is False")
def test_output_on_cuda_matches_cpu_forward() -> None:
    model = tiny_cnn()
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    runner = TorchRunner(model, input_shape=(None, 1, 8, 8), device="auto")
    assert runner.device == "cuda"
    with runner:
        out = runner.infer({"input": x})
        runner.synchronize()
    assert next(model.parameters()).device.type == "cpu"  # the caller's model stayed put
    np.testing.assert_allclose(out["logits"], expected_output(model, x), rtol=1e-4, atol=1e-5)
