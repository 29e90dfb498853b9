"""Data-parallel training: 2 processes under torchrun train what 1 process trains, rank 0 writes.

The distributed runs are real: `python -m torch.distributed.run --standalone
--nproc_per_node=2` on CPU with Gloo, the way users start them. One module fixture runs three
subprocesses in turn (one process, two processes, one process again, so checkpoints cross
between world sizes both ways); the tests read what they left behind.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from compressor.atomic import atomic_torch_save
from compressor.data.config import AugmentConfig, DataConfig
from compressor.data.splits import load_data
from compressor.errors import ConfigError
from compressor.training import distributed
from compressor.training.config import TrainConfig
from compressor.training.distributed import DistInfo, local_batch_size, shard_slice
from compressor.training.loop import train
from compressor.training.schedule import epoch_layout
from tests.compressor.test_pipeline_cli import write_recipe

REPO = Path(__file__).resolve().parents[2]
TORCHRUN_ENV = (
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "GROUP_RANK",
    "TORCHELASTIC_RUN_ID",
)
# Float32 sums in another order (two half-batch gradients averaged by all-reduce instead of
# one full-batch gradient) differ by ~1e-7 relative per step; 30 SGD steps with momentum at
# lr 0.1 on weights of size ~0.1-1 stay orders of magnitude below this bound, while one
# wrongly sharded, duplicated or unweighted batch moves weights by ~1e-3 or more.
WEIGHT_TOLERANCE = 1e-4

SCRIPT = textwrap.dedent(
    '''
    """Runs the trainings the tests compare: `script.py single|ddp|resume_one BASE`."""
    import json
    import os
    import sys
    from pathlib import Path

    import torch
    from torch import nn

    from compressor.training import distributed
    from compressor.data.splits import load_data
    from compressor.data.config import AugmentConfig, DataConfig
    from compressor.training.loop import train
    from compressor.training.config import TrainConfig

    MODE, BASE = sys.argv[1], Path(sys.argv[2])
    # 297 = 9 x 32 + 9: the trailing batch splits 5 + 4 over two ranks (weighted losses)
    DATA = load_data(DataConfig(limit_train=297))
    OFF = AugmentConfig(crop_padding=0, hflip=False)
    ON = AugmentConfig(crop_padding=1, hflip=True)


    def plain():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(256, 10),
        )


    def with_bn():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
            nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 10),
        )


    class Interrupted(Exception):
        pass


    def stop_after(model, steps):
        calls = [0]

        def hook(module, inputs, output):
            if module.training:
                calls[0] += 1
                if calls[0] > steps:
                    raise Interrupted

        model.register_forward_hook(hook)


    def run(name, make, out, augment=OFF, resume=False, stop=None):
        model = make()
        if stop is not None:
            stop_after(model, stop)
        config = TrainConfig(epochs=3, batch_size=32, lr=0.1, progress="log")
        try:
            result = train(model, DATA, config, out, resume=resume, augment=augment)
        except Interrupted:
            return
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        rank0_state = distributed.broadcast_object(state)
        diff = max((state[k].float() - rank0_state[k].float()).abs().max().item()
                   for k in state)
        if distributed.is_main_process():
            torch.save(state, BASE / f"w_{name}.pt")
        report = {"name": name, "rank": distributed.rank(), "test_acc": result.test_acc,
                  "diff_to_rank0": diff, "world": distributed.world_size()}
        print("RESULT " + json.dumps(report), flush=True)


    INTERRUPT = 10 + 3  # 10 steps per epoch: stop at epoch 2, step 4 (checkpoint of epoch 1)
    if MODE == "single":
        run("one_plain", plain, BASE / "one_plain")
        run("one_aug", plain, BASE / "one_aug", augment=ON)
        run("one_bn", with_bn, BASE / "one_bn")
        run("from_one", plain, BASE / "from_one", stop=INTERRUPT)
    elif MODE == "ddp":
        info = distributed.init_from_env("cpu")
        os.chdir(BASE / f"cwd{info.rank}")  # a stray relative write would land here
        # rank 1 gets an output directory of its own, which must never appear
        run("two_plain", plain, BASE / ("two_plain" if info.is_main else "rank1_out"))
        run("two_aug", plain, BASE / "two_aug", augment=ON)
        run("two_bn", with_bn, BASE / "two_bn")
        run("from_one", plain, BASE / "from_one", resume=True)
        run("from_two", plain, BASE / "from_two", stop=INTERRUPT)
        distributed.barrier()
        distributed.cleanup()
    elif MODE == "nodes":  # one process on each of two "nodes" (two torchrun agents)
        from compressor.errors import InputError
        from compressor.training.checkpoint_checks import check_same_file

        info = distributed.init_from_env("cpu")
        run("nodes_plain", plain, BASE / "nodes_plain")
        # a resume on nodes that do not share the output folder: rank 1 sees no checkpoint
        own = BASE / ("nodes_plain" if info.is_main else "not_shared") / "checkpoint.pt"
        try:
            check_same_file(own)
        except InputError as exc:
            print("REFUSED " + json.dumps({"rank": info.rank, "message": str(exc)}), flush=True)
        distributed.barrier()
        distributed.cleanup()
    else:
        run("from_two", plain, BASE / "from_two", resume=True)
    '''
)


TORCHRUN_2 = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _launch(args: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args[1:4])} failed ({done.returncode}):\n{output[-4000:]}")
    return output


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run one process, then two under torchrun, then one again; (base dir, outputs, seconds)."""
    base = tmp_path_factory.mktemp("ddp")
    script = base / "script.py"
    script.write_text(SCRIPT)
    for rank in (0, 1):
        (base / f"cwd{rank}").mkdir()
    start = time.perf_counter()
    outputs = {
        "single": _launch([sys.executable, str(script), "single", str(base)], base),
        "ddp": _launch([*TORCHRUN_2, str(script), "ddp", str(base)], base),
        "resume_one": _launch([sys.executable, str(script), "resume_one", str(base)], base),
    }
    return base, outputs, time.perf_counter() - start


def _results(output: str) -> list[dict]:
    # the ranks share one stdout, so their lines may run into each other
    return [json.loads(found) for found in re.findall(r"RESULT (\{[^{}]*\})", output)]


def _max_diff(base: Path, a: str, b: str) -> float:
    sa, sb = (torch.load(base / f"w_{n}.pt", weights_only=True) for n in (a, b))
    assert sa.keys() == sb.keys()
    return max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)


@pytest.mark.slow
@pytest.mark.parametrize("one, two", [("one_plain", "two_plain"), ("one_aug", "two_aug")])
def test_two_processes_train_the_weights_one_process_trains(runs, one, two):
    base, outputs, _ = runs
    assert _max_diff(base, one, two) < WEIGHT_TOLERANCE
    ranks = [r for r in _results(outputs["ddp"]) if r["name"] == two]
    assert sorted(r["rank"] for r in ranks) == [0, 1] and {r["world"] for r in ranks} == {2}
    assert all(r["diff_to_rank0"] == 0.0 for r in ranks)  # both ranks hold the same model


@pytest.mark.slow
def test_only_rank_zero_writes_files_and_logs(runs):
    base, outputs, _ = runs
    assert sorted(p.name for p in (base / "two_plain").iterdir()) == [
        ".lock",  # rank 0's: the others do not take it
        "checkpoint.pt",
        "metrics.jsonl",
    ]
    assert not (base / "rank1_out").exists()  # rank 1 did not even create its directory
    assert not list((base / "cwd0").iterdir()) and not list((base / "cwd1").iterdir())
    records = [
        json.loads(x) for x in (base / "two_plain" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    single = [
        json.loads(x) for x in (base / "one_plain" / "metrics.jsonl").read_text().splitlines()
    ]
    for two, one in zip(records, single, strict=True):  # all-reduced: the global numbers
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
        assert two["train_acc"] == pytest.approx(one["train_acc"], abs=1e-9)
    # one log line per epoch: 3 + 3 + 3 full runs, 2 resumed epochs, 1 before the interrupt
    assert len(re.findall(r"^epoch \d/3 loss", outputs["ddp"], flags=re.MULTILINE)) == 12


@pytest.mark.slow
def test_batchnorm_model_trains_under_two_processes(runs):
    base, outputs, _ = runs
    ranks = [r for r in _results(outputs["ddp"]) if r["name"] == "two_bn"]
    assert len(ranks) == 2 and all(r["diff_to_rank0"] == 0.0 for r in ranks)
    assert ranks[0]["test_acc"] > 0.5  # chance is 0.1
    # per-rank batch statistics on CPU: other weights than one process, as good a model
    assert _max_diff(base, "one_bn", "two_bn") > WEIGHT_TOLERANCE
    (single,) = [r for r in _results(outputs["single"]) if r["name"] == "one_bn"]
    assert abs(ranks[0]["test_acc"] - single["test_acc"]) < 0.1


@pytest.mark.slow
def test_checkpoints_resume_across_world_sizes(runs):
    base, _, seconds = runs
    for name in ("from_one", "from_two"):  # 1 process -> 2 processes, and 2 -> 1
        assert _max_diff(base, "one_plain", name) < WEIGHT_TOLERANCE
        state = torch.load(base / name / "checkpoint.pt", weights_only=True)
        assert state["epoch"] == 3 and state["steps_per_epoch"] == 10
    records = (base / "from_two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in records] == [1, 2, 3]
    assert seconds < 120  # the whole fixture; about 25 s on 2 CPU cores


def _two_agents(args: list[str], cwd: Path) -> list[str]:
    """Two torchrun agents, one process each, meeting at a c10d rendezvous on 127.0.0.1: what
    two nodes run, each with `--nnodes=2`; their outputs."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    agent = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=nodes{port}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    agents = [subprocess.Popen([*agent, *args], cwd=cwd, env=env, **pipes) for _ in range(2)]
    outputs = []
    for process in agents:
        try:
            outputs.append(process.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for other in agents:
                other.kill()
            raise
    for process, output in zip(agents, outputs, strict=True):
        if process.returncode != 0:
            pytest.fail(f"agent failed ({process.returncode}):\n{output[-4000:]}")
    return outputs


@pytest.mark.slow
def test_two_torchrun_agents_train_the_weights_one_process_trains(runs):
    """`torchrun --nnodes=2 --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT` on two "nodes"
    (two agents on 127.0.0.1, Gloo): the weights of one process with the same global batch;
    and a resume where the nodes see different output folders is refused on every rank."""
    base, _, _ = runs
    script = base / "script.py"
    outputs = _two_agents([str(script), "nodes", str(base)], base)
    assert _max_diff(base, "one_plain", "nodes_plain") < WEIGHT_TOLERANCE
    ranks = [r for out in outputs for r in _results(out) if r["name"] == "nodes_plain"]
    assert sorted(r["rank"] for r in ranks) == [0, 1] and {r["world"] for r in ranks} == {2}
    assert all(r["diff_to_rank0"] == 0.0 for r in ranks)
    refused = [
        json.loads(found) for out in outputs for found in re.findall(r"REFUSED (\{.*\})", out)
    ]
    assert sorted(r["rank"] for r in refused) == [0, 1]  # every rank, so none waits forever
    assert all("is seen by rank 0 on" in r["message"] for r in refused)
    assert all("but not by rank 1 on" in r["message"] for r in refused)
    assert all("a file system all nodes share" in r["message"] for r in refused)


@pytest.mark.slow
def test_two_torchrun_agents_run_compressor_train(tmp_path):
    """`torchrun --nnodes=2 ... -m compressor train`: one trained model, rank 0's."""
    recipe = write_recipe(tmp_path, {"model": {"name": "resnet8", "width": 0.5}}, blocks=1)
    from compressor.cli import main

    assert main(["prune", str(recipe), "--out", str(tmp_path / "ticket")]) == 0
    out = tmp_path / "trained"
    command = ["-m", "compressor", "train", str(tmp_path / "ticket"), str(recipe)]
    _two_agents([*command, "--out", str(out)], tmp_path)
    checkpoint = torch.load(out / "train" / "checkpoint.pt", weights_only=True)
    assert checkpoint["world_size"] == 2
    assert (out / "model" / "weights.safetensors").is_file()


@pytest.mark.parametrize("batch_len", [64, 41, 7, 2])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_the_global_batch_without_overlap(batch_len, world):
    shards = [range(batch_len)[shard_slice(batch_len, r, world)] for r in range(world)]
    assert [i for shard in shards for i in shard] == list(range(batch_len))  # rank order
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_global_batch_must_divide_by_the_processes():
    assert local_batch_size(64, 2) == 32 and local_batch_size(7, 1) == 7
    with pytest.raises(ConfigError, match=r"train.batch_size \(100\).*3 processes.*99 or 102"):
        local_batch_size(100, 3)


@pytest.mark.parametrize(
    "n, world, expected",
    [
        (297, 1, (5, False)),
        (297, 2, (5, False)),
        (257, 1, (4, True)),
        (259, 1, (5, False)),
        (259, 2, (4, True)),
        (256, 2, (4, False)),
    ],
)
def test_trailing_batch_kept_when_every_process_gets_two_images(n, world, expected):
    assert epoch_layout(n, 64, world) == expected


def test_without_torchrun_everything_is_one_process(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    assert distributed.init_from_env() == DistInfo(rank=0, world_size=1, local_rank=0)
    assert distributed.is_main_process() and distributed.world_size() == 1
    assert distributed.rank() == 0
    distributed.barrier()
    obj = {"a": 1}
    assert distributed.broadcast_object(obj) is obj
    assert distributed.all_reduce_sum(torch.ones(2)).tolist() == [1.0, 1.0]
    distributed.cleanup()


@pytest.mark.parametrize(
    "env, match",
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE must be an int"),
        ({"WORLD_SIZE": "2"}, "RANK is not set"),
        ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK 5 is outside 0..1"),
        ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "-1"}, "LOCAL_RANK must be"),
    ],
)
def test_bad_torchrun_environment_is_a_config_error(monkeypatch, env, match):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=match):
        distributed.init_from_env("cpu")


def test_resume_under_a_world_size_with_other_steps_is_refused(tmp_path):
    data = load_data(DataConfig(limit_train=131))  # 2 x 64 + 3: 3 steps alone, 2 on 2 ranks
    model = nn.Sequential(nn.Flatten(), nn.Linear(data.image_size**2, 10))
    config = TrainConfig(epochs=2, batch_size=64, progress="none")
    off = AugmentConfig(crop_padding=0, hflip=False)
    train(model, data, config, tmp_path, augment=off)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["world_size"] == 1 and state["steps_per_epoch"] == 3
    atomic_torch_save(
        {
            **state,
            "epoch": 1,
            "metrics": state["metrics"][:1],
            "world_size": 2,
            "steps_per_epoch": 2,
        },
        tmp_path / "checkpoint.pt",
    )
    with pytest.raises(ConfigError, match=r"2 steps per epoch on 2 process.*resume with 2"):
        train(model, data, config, tmp_path, resume=True, augment=off)


def test_synced_batchnorm_gives_back_plain_batchnorm_with_the_trained_state():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(4)))
    keys = list(model.state_dict())
    with pytest.raises(RuntimeError, match="stopped"), distributed.synced_batchnorm(model, True):
        assert isinstance(model[1], nn.SyncBatchNorm) and isinstance(model[2][0], nn.SyncBatchNorm)
        with torch.no_grad():  # what training does to the converted layers
            model[1].weight.fill_(2.0)
            model[2][0].running_mean.fill_(3.0)
        raise RuntimeError("training stopped")
    assert type(model[1]) is nn.BatchNorm2d and type(model[2][0]) is nn.BatchNorm1d
    assert list(model.state_dict()) == keys
    assert model[1].weight.eq(2.0).all() and model[2][0].running_mean.eq(3.0).all()
    with distributed.synced_batchnorm(model, False):  # CPU: nothing is swapped
        assert type(model[1]) is nn.BatchNorm2d


@pytest.mark.slow
def test_torchrun_compressor_run_end_to_end(tmp_path):
    """`torchrun --nproc_per_node=2 -m compressor run`: one run directory, one report."""
    # Two epochs leave the variants apart; this test is about the launcher, not accuracy.
    changes = {"model": {"name": "resnet8", "width": 0.5}, "report": {"max_accuracy_drop": 100}}
    recipe = write_recipe(tmp_path, changes, blocks=1)
    out = tmp_path / "run"
    command = [*TORCHRUN_2, "-m", "compressor", "run", str(recipe), "--out", str(out)]
    output = _launch(command, tmp_path)
    report = json.loads((out / "report.json").read_text())
    assert [v["name"] for v in report["variants"]] == ["dense", "ticket", "shrunk"]
    accuracies = [v["accuracy"] for v in report["variants"]]
    assert all(a > 0.2 for a in accuracies), accuracies  # chance is 0.1
    # Rank 0 alone logged and printed: one training line per epoch, one report.
    assert output.count("[dense] training 2 epochs") == 1
    assert output.count(f"report: {out / 'report.json'}") == 1
    checkpoint = torch.load(out / "dense" / "train" / "checkpoint.pt", weights_only=True)
    assert checkpoint["world_size"] == 2


@pytest.mark.slow
def test_torchrun_train_and_shrink_stages(tmp_path):
    """`torchrun -m compressor train|shrink`: rank 0 alone holds the output directory; the
    other rank must not be refused the lock (every rank runs the stage)."""
    recipe = write_recipe(tmp_path, {"model": {"name": "resnet8", "width": 0.5}}, blocks=1)
    from compressor.cli import main

    assert main(["prune", str(recipe), "--out", str(tmp_path / "ticket")]) == 0
    for stage, model, out in (
        ("train", tmp_path / "ticket", tmp_path / "trained"),
        ("shrink", tmp_path / "trained" / "model", tmp_path / "shrunk"),
    ):
        command = [*TORCHRUN_2, "-m", "compressor", stage, str(model), str(recipe)]
        output = _launch([*command, "--out", str(out)], tmp_path)
        assert "in use by another run" not in output
        checkpoint = torch.load(out / "train" / "checkpoint.pt", weights_only=True)
        assert checkpoint["world_size"] == 2
        assert (out / "model" / "weights.safetensors").is_file()


UNUSED_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from torch import nn
    from compressor.data.splits import load_data
    from compressor.data.config import AugmentConfig, DataConfig
    from compressor.training.loop import train
    from compressor.training.config import TrainConfig

    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(8, 10)
            self.aux = nn.Linear(8, 10)  # a head forward never calls

        def forward(self, x):
            return self.head(self.body(x))

    data = load_data(DataConfig(image_size=8, limit_train=128))
    torch.manual_seed(0)
    config = TrainConfig(epochs=1, batch_size=32, lr=0.05, progress="none")
    train(WithAux(), data, config, sys.argv[1],
          augment=AugmentConfig(crop_padding=0, hflip=False))
    """
)


@pytest.mark.slow
def test_a_model_with_unused_parameters_trains_under_two_processes(tmp_path):
    script = tmp_path / "unused.py"
    script.write_text(UNUSED_SCRIPT)
    command = [*TORCHRUN_2, str(script), str(tmp_path / "out")]
    _launch(command, tmp_path)
    assert (tmp_path / "out" / "checkpoint.pt").is_file()
