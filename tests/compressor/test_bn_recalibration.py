"""Batch-norm recalibration: stale running statistics collapse eval accuracy; recalibrating
brings it back to what the same weights score on batch statistics, and training does it."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.distributed as dist
from torch import nn

from compressor.data.config import DataConfig
from compressor.data.splits import load_data
from compressor.errors import ConfigError
from compressor.models.spec import ModelSpec, build_model
from compressor.training.bn_recalibration import recalibrate_bn_
from compressor.training.config import TrainConfig
from compressor.training.evaluate import evaluate
from compressor.training.loop import train


@pytest.fixture(scope="module")
def digits8():
    return load_data(DataConfig(image_size=8))


def _stale_resnet8() -> nn.Module:
    """ResNet-8 whose running statistics barely move while it trains (momentum 0.002): after
    two epochs they still describe the initial network, as after surgery or a short run."""
    torch.manual_seed(0)
    spec = ModelSpec(model="resnet8", kwargs={"num_classes": 10, "in_channels": 1, "width": 0.5})
    model = build_model(spec)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.002
    return model


def _config(**overrides) -> TrainConfig:
    settings = {"epochs": 2, "batch_size": 64, "lr": 0.05, "progress": "none", "threads": 2}
    return TrainConfig(**{**settings, **overrides})


@torch.no_grad()
def _batch_statistics_accuracy(model: nn.Module, images, labels) -> float:
    """What the weights score when every batch norm uses the test batch's own statistics."""
    probe = copy.deepcopy(model).train()
    return (probe(images).argmax(1) == labels).float().mean().item()


def test_recalibration_restores_eval_accuracy_of_stale_statistics(digits8, tmp_path) -> None:
    model = _stale_resnet8()
    result = train(model, digits8, _config(bn_recalibration_batches=0), tmp_path)
    assert result.bn_recalibration is None
    stale, _ = evaluate(model, digits8.test)
    batch_stats = _batch_statistics_accuracy(model, digits8.test.images, digits8.test.labels)
    assert stale == result.test_acc < 0.35 and batch_stats > 0.55  # the collapse is real
    done = recalibrate_bn_(model, digits8.train.images, 20, 64)
    recalibrated, _ = evaluate(model, digits8.test)
    assert (done.layers, done.batches, done.images) == (9, 20, 1280)  # 1293 images: 20 x 64
    assert recalibrated > batch_stats - 0.05 and recalibrated > stale + 0.3


def test_training_recalibrates_before_the_final_evaluations(digits8, tmp_path) -> None:
    model = _stale_resnet8()
    result = train(model, digits8, _config(), tmp_path)  # default: 20 batches
    assert result.bn_recalibration == {"layers": 9, "batches": 20, "images": 1280}
    assert result.test_acc > 0.55 and evaluate(model, digits8.test)[0] == result.test_acc
    # The checkpoint and the last val accuracy in metrics.jsonl use the same statistics.
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["val_acc"] == result.final_val_acc == evaluate(model, digits8.val)[0]
    saved = torch.load(result.checkpoint, weights_only=True)["model"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    # Resuming the finished run recomputes the same statistics: nothing changes.
    again = train(model, digits8, _config(), tmp_path, resume=True)
    assert again.test_acc == result.test_acc


def test_flags_momentum_and_weights_are_kept_and_the_result_repeats(digits8) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4, momentum=0.3),
        nn.Dropout(0.5),
        nn.Conv2d(4, 4, 3),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    model[4].eval()  # a batch norm the user froze
    weights = {k: v.clone() for k, v in model.named_parameters()}
    flags = [m.training for m in model.modules()]
    recalibrate_bn_(model, digits8.train.images, 3, 32, seed=1)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    assert [m.training for m in model.modules()] == flags and model[1].momentum == 0.3
    assert all(torch.equal(weights[k], v) for k, v in model.named_parameters())
    assert not torch.equal(first["1.running_var"], torch.ones(4))
    assert int(first["1.num_batches_tracked"]) == 3
    recalibrate_bn_(model, digits8.train.images, 3, 32, seed=1)  # independent of the old stats
    assert all(torch.equal(first[k], v) for k, v in model.state_dict().items())


def test_a_model_without_batch_norm_and_zero_batches_are_left_alone(digits8) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.LazyLinear(10))
    model(digits8.train.images[:2])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert recalibrate_bn_(model, digits8.train.images, 20, 64).layers == 0
    bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    bn[1].running_mean.fill_(7.0)
    assert recalibrate_bn_(bn, digits8.train.images, 0, 64).batches == 0
    assert bn[1].running_mean.eq(7.0).all()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_ddp_wrapper_is_looked_through(digits8, tmp_path) -> None:
    """One real gloo process group; the wrapped and the bare model get the same statistics."""
    torch.manual_seed(0)
    bare = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 10))
    twin = copy.deepcopy(bare)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)  # fmt: skip
    try:
        wrapped = nn.parallel.DistributedDataParallel(twin)
        recalibrate_bn_(wrapped, digits8.train.images, 4, 32)
    finally:
        dist.destroy_process_group()
    recalibrate_bn_(bare, digits8.train.images, 4, 32)
    assert torch.allclose(twin[1].running_var, bare[1].running_var)
    assert int(twin[1].num_batches_tracked) == 4


def test_the_recipe_key_is_validated_and_left_out_at_its_default() -> None:
    with pytest.raises(ConfigError, match=r"train\.bn_recalibration_batches must be an int >= 0"):
        _config(bn_recalibration_batches=-1)
    assert "bn_recalibration_batches" not in _config().to_dict()  # old runs still resume
    assert _config(bn_recalibration_batches=0).to_dict()["bn_recalibration_batches"] == 0
    assert TrainConfig.from_dict(_config().to_dict()).bn_recalibration_batches == 20


def test_too_few_images_is_one_clear_error() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ConfigError, match="bn_recalibration_batches: 0"):
        recalibrate_bn_(model, torch.zeros(1, 1, 8, 8), 20, 64)
