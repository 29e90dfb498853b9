"""Training: learns, logs, checkpoints every epoch, resumes exactly, stops cleanly on NaN."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from compressor.atomic import atomic_torch_save, atomic_write_bytes, atomic_write_text
from compressor.data.config import DataConfig
from compressor.data.splits import load_data
from compressor.errors import ConfigError, InputError, TrainingError
from compressor.training.config import TrainConfig, resolve_device
from compressor.training.evaluate import evaluate
from compressor.training.loop import train

METRIC_FIELDS = {
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "epoch_seconds",
    "elapsed_seconds",
}


class TinyCNN(nn.Module):
    """conv-bn-relu, pool, conv-bn-relu, global pool, linear: enough to learn digits."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _Interrupted(Exception):
    """Stands in for Ctrl-C / a killed job in the middle of an epoch."""


def _interrupt(output: torch.Tensor) -> torch.Tensor:
    raise _Interrupted


def _fail_after(model: nn.Module, train_steps: int, action) -> None:
    """Call `action(output)` on training forwards after `train_steps` of them succeeded."""
    calls = {"n": 0}

    def hook(module, inputs, output):
        if not module.training:
            return None
        calls["n"] += 1
        return action(output) if calls["n"] > train_steps else None

    model.register_forward_hook(hook)


@pytest.fixture(scope="module")
def dt_digits():
    return load_data(DataConfig())


@pytest.fixture(scope="module")
def dt_small_digits():
    return load_data(DataConfig(limit_train=256))  # 4 steps per epoch at batch 64


def _config(**overrides) -> TrainConfig:
    settings = {"epochs": 2, "batch_size": 64, "lr": 0.05, "progress": "none", "threads": 2}
    return TrainConfig(**{**settings, **overrides})


def _equal_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_three_epochs_learn_digits_and_log_every_epoch(dt_digits, tmp_path):
    model = TinyCNN()
    result = train(
        model, dt_digits, _config(epochs=3, batch_size=32), tmp_path, describe={"model": "tiny"}
    )
    assert result.final_val_acc > 0.5 and result.test_acc > 0.5  # chance is 0.1
    assert result.epochs_run == 3 and result.device == "cpu"
    assert result.best_val_acc >= result.final_val_acc
    assert len(result.epoch_seconds) == 3 and result.median_epoch_seconds > 0
    assert math.isclose(result.train_seconds, sum(result.epoch_seconds))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all(set(r) == METRIC_FIELDS for r in records)
    assert records[-1]["val_acc"] == result.final_val_acc
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()


def test_checkpoint_loads_with_weights_only_and_describes_itself(dt_small_digits, tmp_path):
    model = TinyCNN()
    result = train(model, dt_small_digits, _config(), tmp_path, describe={"model": "tiny"})
    state = torch.load(result.checkpoint, weights_only=True)
    assert state["epoch"] == 2 and state["describe"] == {"model": "tiny"}
    assert TrainConfig.from_dict(state["config"]) == _config()
    assert len(state["metrics"]) == 2 and state["data"]["name"] == "digits"
    fresh = TinyCNN(seed=1)
    fresh.load_state_dict(state["model"])
    assert _equal_weights(fresh, model)  # the final weights stay in the model object too
    assert not list(tmp_path.glob(".*.tmp"))  # no leftovers from atomic writes


def test_interrupted_run_resumes_to_identical_weights(dt_small_digits, tmp_path):
    config = _config(epochs=4, schedule="step", milestones=(0.5,), warmup_epochs=1)
    uninterrupted = TinyCNN()
    train(uninterrupted, dt_small_digits, config, tmp_path / "full")

    broken = TinyCNN()
    _fail_after(broken, train_steps=2 * 4 + 1, action=_interrupt)  # epoch 3, step 2
    with pytest.raises(_Interrupted):
        train(broken, dt_small_digits, config, tmp_path / "resumed")
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["epoch"] == 2

    resumed = TinyCNN(seed=123)  # whatever it starts from, the checkpoint wins
    result = train(resumed, dt_small_digits, config, tmp_path / "resumed", resume=True)
    assert result.epochs_run == 4
    assert _equal_weights(resumed, uninterrupted)
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]


def test_resuming_a_finished_run_returns_its_result(dt_small_digits, tmp_path):
    model = TinyCNN()
    first = train(model, dt_small_digits, _config(), tmp_path)
    again_model = TinyCNN(seed=5)
    again = train(again_model, dt_small_digits, _config(), tmp_path, resume=True)
    assert again.epochs_run == 2 and again.epoch_seconds == first.epoch_seconds
    assert again.test_acc == first.test_acc and _equal_weights(again_model, model)


def test_existing_checkpoint_is_never_overwritten(dt_small_digits, tmp_path):
    train(TinyCNN(), dt_small_digits, _config(epochs=1), tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(InputError, match="--resume"):
        train(TinyCNN(), dt_small_digits, _config(epochs=1), tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_resume_with_another_schedule_is_refused(dt_small_digits, tmp_path):
    train(TinyCNN(), dt_small_digits, _config(epochs=1), tmp_path)
    with pytest.raises(ConfigError, match="train.lr"):
        train(TinyCNN(), dt_small_digits, _config(epochs=1, lr=0.2), tmp_path, resume=True)


def test_nan_in_second_epoch_keeps_first_checkpoint(dt_small_digits, tmp_path):
    model = TinyCNN()
    _fail_after(model, train_steps=4 + 2, action=lambda out: out * float("nan"))
    with pytest.raises(TrainingError) as info:
        train(model, dt_small_digits, _config(epochs=3), tmp_path)
    message = str(info.value)
    assert "loss became NaN at epoch 2 step 3" in message
    assert "(epoch 1)" in message and str(tmp_path / "checkpoint.pt") in message
    assert "--resume" in message and "lower lr" in message
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and len(state["metrics"]) == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_huge_lr_diverges_with_a_training_error(dt_small_digits, tmp_path):
    with pytest.raises(TrainingError, match="at epoch 1 step .*no checkpoint was written yet"):
        train(TinyCNN(), dt_small_digits, _config(lr=1e10), tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_same_seed_gives_identical_weights(dt_small_digits, tmp_path):
    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        model = TinyCNN()
        train(model, dt_small_digits, _config(seed=seed), tmp_path / name)
        runs.append(model)
    assert _equal_weights(runs[0], runs[1])
    assert not _equal_weights(runs[0], runs[2])  # another seed shuffles and augments otherwise


def _lrs(metrics_path: str) -> list[float]:
    return [json.loads(line)["lr"] for line in Path(metrics_path).read_text().splitlines()]


def test_schedule_lr_per_epoch(dt_small_digits, tmp_path):
    step = train(
        TinyCNN(),
        dt_small_digits,
        _config(epochs=4, schedule="step", milestones=(0.5,), gamma=0.1),
        tmp_path / "s",
    )
    assert _lrs(step.metrics) == pytest.approx([0.05, 0.05, 0.005, 0.005])
    cosine = train(TinyCNN(), dt_small_digits, _config(epochs=3, warmup_epochs=1), tmp_path / "c")
    lrs = _lrs(cosine.metrics)
    assert lrs[0] == pytest.approx(0.05 / 4)  # first warm-up step of 4
    assert lrs[1] == pytest.approx(0.05) and lrs[2] < lrs[1]


def test_log_progress_prints_one_line_per_epoch(dt_small_digits, tmp_path, capsys):
    train(TinyCNN(), dt_small_digits, _config(progress="log"), tmp_path)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2 ") and "val_acc" in lines[1]


def test_bar_progress_counts_steps(dt_small_digits, tmp_path, capsys):
    train(TinyCNN(), dt_small_digits, _config(progress="bar"), tmp_path)
    err = capsys.readouterr().err
    assert "8/8" in err and "epoch 2/2" in err  # 4 steps per epoch, last epoch's summary


def test_describe_must_be_json(dt_small_digits, tmp_path):
    with pytest.raises(ConfigError, match="describe"):
        train(TinyCNN(), dt_small_digits, _config(), tmp_path, describe={"x": object()})


def test_evaluate_reports_accuracy_and_keeps_mode(dt_small_digits):
    model = TinyCNN().train()
    accuracy, loss = evaluate(model, dt_small_digits.val, device="cpu")
    assert 0.0 <= accuracy <= 1.0 and loss > 0 and model.training


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")


def test_train_config_round_trips_and_rejects_unknown_keys():
    config = TrainConfig(epochs=5, schedule="step", milestones=(0.3, 0.6), amp=False)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.from_dict({"epochs": 2, "milestones": [0.25, 0.5]}).milestones == (0.25, 0.5)
    with pytest.raises(ConfigError, match="train.learning_rate"):
        TrainConfig.from_dict({"epochs": 2, "learning_rate": 0.1})
    with pytest.raises(ConfigError, match="train.epochs is required"):
        TrainConfig.from_dict({"lr": 0.1})


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"epochs": 0}, "train.epochs"),
        ({"lr": -0.1}, "train.lr"),
        ({"lr": math.nan}, "train.lr"),
        ({"batch_size": 2.5}, "train.batch_size"),
        ({"momentum": 1.0}, "train.momentum"),
        ({"schedule": "linear"}, "train.schedule"),
        ({"device": "tpu"}, "train.device"),
        ({"milestones": (0.75, 0.5)}, "train.milestones"),
        ({"warmup_epochs": 3}, "train.warmup"),
        ({"progress": "verbose"}, "train.progress"),
        ({"amp": "yes"}, "train.amp"),
        ({"momentum": 0.0}, "train.nesterov"),
        ({"threads": 0}, "train.threads"),
    ],
)
def test_invalid_train_values_name_the_field(bad, field):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{"epochs": 3, **bad})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_amp_training_resumes(dt_small_digits, tmp_path):
    config = _config(epochs=2, device="cuda")
    result = train(TinyCNN(), dt_small_digits, config, tmp_path)
    assert result.device.startswith("cuda") and 0.0 <= result.test_acc <= 1.0
    state = torch.load(result.checkpoint, weights_only=True)
    assert state["scaler"] and "cuda" in state["rng"]  # AMP was on by default on CUDA
    again = train(TinyCNN(), dt_small_digits, config, tmp_path, resume=True)
    assert again.epochs_run == 2


# --- atomic writes (every checkpoint and metrics file goes through them) ----------------------


def test_atomic_writes_replace_whole_files(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    atomic_write_text(target, "first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "t.pt")
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True)["w"], torch.ones(2))


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "checkpoint.pt"
    atomic_torch_save({"epoch": 1}, target)
    with pytest.raises(Exception, match="(?i)pickle"):
        atomic_torch_save({"epoch": 2, "bad": lambda: None}, target)  # cannot be pickled
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp file left


# --- rewinding (the paper's Algorithm 1) ------------------------------------------------


def test_rewind_points_save_the_weights_reached_at_those_epochs(dt_small_digits, tmp_path):
    from safetensors.torch import load_file

    from compressor.training.config import rewind_path
    from compressor.training.loop import _Run

    seen = {}
    save = _Run.save_checkpoint

    def record(run):  # the weights as each epoch ends, to compare the snapshots against
        seen[run.epoch] = {k: v.clone() for k, v in run.model.state_dict().items()}
        save(run)

    model = TinyCNN()
    theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
    _Run.save_checkpoint = record
    try:
        train(model, dt_small_digits, _config(epochs=4, rewind_points=(0, 0.5)), tmp_path)
    finally:
        _Run.save_checkpoint = save
    assert sorted(p.name for p in tmp_path.glob("rewind_*")) == [
        "rewind_e000.safetensors",
        "rewind_e002.safetensors",
    ]
    kept = {0: theta_0, 2: seen[2]}
    for epoch, expected in kept.items():
        snapshot = load_file(str(rewind_path(tmp_path, epoch)))
        assert snapshot.keys() == expected.keys()
        assert all(torch.equal(snapshot[k], expected[k]) for k in expected)
    assert not all(torch.equal(seen[2][k], theta_0[k]) for k in theta_0)


def test_learning_rate_rewinding_retrains_the_rest_of_the_original_schedule(
    dt_small_digits, tmp_path
):
    full = train(TinyCNN(), dt_small_digits, _config(epochs=4), tmp_path / "full")
    rest = train(TinyCNN(), dt_small_digits, _config(epochs=4, start_epoch=2), tmp_path / "rest")
    assert _lrs(rest.metrics) == pytest.approx(_lrs(full.metrics)[2:])
    epochs = [json.loads(line)["epoch"] for line in Path(rest.metrics).read_text().splitlines()]
    assert epochs == [3, 4] and rest.epochs_run == 4


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"rewind_points": (0.5, 0.25)}, "rewind_points must be increasing fractions"),
        ({"rewind_points": (1.0,)}, "rewind_points must be increasing fractions"),
        ({"start_epoch": 2}, "start_epoch"),
    ],
)
def test_bad_rewinding_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(**overrides)


def test_default_rewinding_keeps_old_recipes_and_checkpoints_comparable():
    assert "rewind_points" not in _config().to_dict() and "start_epoch" not in _config().to_dict()
    assert _config(rewind_points=[0, 0.25]).to_dict()["rewind_points"] == [0, 0.25]
