"""Train a classifier on in-memory `DataSplits`: SGD + cosine/step decay, resumable, reproducible.

- The lr is set every iteration (`LambdaLR` over global steps: linear warm-up, then cosine or
  step decay); metrics.jsonl `lr` is the rate of the epoch's first step.
- Loss and accuracy are summed on the device and read once per epoch; only the NaN check syncs
  more often (every `NAN_CHECK_EVERY` steps), and it still names the first bad step.
- After every epoch an atomic checkpoint of tensors and primitive containers only (loads with
  `torch.load(weights_only=True)`), RNG states included, makes a resumed CPU run bit-identical
  to an uninterrupted one. An epoch whose loss or weights went non-finite writes nothing.
- Evaluation loss is plain cross entropy (no label smoothing) so runs compare across settings.
- After the last epoch's training pass, batch-norm running statistics are re-estimated
  (compressor/training/bn_recalibration.py, `bn_recalibration_batches`); the final val accuracy, the
  last checkpoint, the returned weights and the test accuracy all use those statistics.
  Earlier epochs' val accuracy in metrics.jsonl uses the running averages as they were.
- Under torchrun (compressor/training/distributed.py) the model trains in DistributedDataParallel:
  `batch_size` is the global batch, every rank draws and augments the same global batch and
  trains on its share, so the update is the one-process update up to float rounding. Rank 0
  alone writes files and prints; checkpoints resume under any number of processes.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.atomic import atomic_torch_save, atomic_write_bytes, atomic_write_text
from compressor.configs import changed_keys
from compressor.data.config import AugmentConfig
from compressor.data.splits import DataSplits, augment_batch, iterate_batches
from compressor.errors import CompressorError, ConfigError, InputError, TrainingError
from compressor.outdir import exclusive_out_dir
from compressor.training.bn_recalibration import BNRecalibration, recalibrate_bn_
from compressor.training.checkpoint_checks import (
    check_checkpoint_fields,
    check_same_file,
    checkpoint_size_limit,
    load_checkpoint,
    refuse_to_overwrite,
)
from compressor.training.checks import (
    batch_too_big,
    check_model_fits,
    check_splits,
    is_out_of_memory,
)
from compressor.training.config import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    METRICS_NAME,
    NAN_CHECK_EVERY,
    RUNTIME_ONLY_FIELDS,
    TrainConfig,
    TrainResult,
    resolve_device,
    rewind_path,
)
from compressor.training.distributed import (
    DistInfo,
    all_reduce_sum,
    average_batchnorm_statistics_,
    barrier,
    init_from_env,
    local_batch_size,
    shard_slice,
    synced_batchnorm,
    wrap_ddp,
)
from compressor.training.evaluate import evaluate
from compressor.training.schedule import epoch_layout, lr_factor

__all__ = ["TrainConfig", "TrainResult", "evaluate", "resolve_device", "rewind_path", "train"]


class _Run:
    """Everything one training run mutates, so the epoch loop and the checkpoint see the same."""

    def __init__(
        self,
        model: nn.Module,
        data: DataSplits,
        config: TrainConfig,
        out_dir: Path,
        augment: AugmentConfig,
        describe: dict[str, Any],
        info: DistInfo,
    ) -> None:
        self.data, self.config, self.augment, self.describe = data, config, augment, describe
        self.info, world = info, info.world_size
        self.device = resolve_device(config.device)
        if info.distributed and self.device.type == "cuda":
            self.device = torch.device("cuda", info.local_rank)
        self.use_amp = self.device.type == "cuda" and config.amp is not False
        self.sync_bn = info.distributed and self.device.type == "cuda"  # CPU has no SyncBN
        self.model = self.net = model.to(self.device)  # net: what trains (DDP when distributed)
        n, bs = len(data.train), config.batch_size
        local_batch_size(bs, world)  # refuse unequal shares before anything runs
        self.steps_per_epoch, self.drop_last = epoch_layout(n, bs, world)
        if self.steps_per_epoch == 0:
            raise InputError(
                f"the training split has {n} image(s); at least {2 * world} are needed"
            )
        self.optimizer = torch.optim.SGD(
            model.parameters(),
            config.lr,
            config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.nesterov,
        )
        factor, offset = lr_factor(config, self.steps_per_epoch), self.steps_per_epoch
        offset *= config.start_epoch  # the schedule rewinds with the weights: resume it there
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: factor(step + offset)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_amp)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.shuffle_gen = torch.Generator().manual_seed(config.seed)
        self.augment_gen = torch.Generator().manual_seed(config.seed + 1)
        self.epoch, self.metrics = config.start_epoch, []
        self.out_dir = out_dir
        self.checkpoint_path = out_dir / CHECKPOINT_NAME
        self.metrics_path = out_dir / METRICS_NAME

    def data_fingerprint(self) -> dict[str, Any]:
        d = self.data
        return {
            "name": d.name,
            "train_size": len(d.train),
            "num_classes": d.num_classes,
            "in_channels": d.in_channels,
            "image_size": d.image_size,
            "mean": list(d.mean),
            "std": list(d.std),
        }

    def save_rewind_point(self) -> None:
        """Weights at a rewind epoch, written before the checkpoint that passes it: a crash
        in between leaves a checkpoint at the previous epoch, which redoes this one."""
        if self.epoch not in self.config.rewind_epochs():
            return
        from safetensors.torch import save

        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        atomic_write_bytes(rewind_path(self.out_dir, self.epoch), save(state))

    def save_checkpoint(self) -> None:
        rng = {
            "torch": torch.get_rng_state(),
            "shuffle": self.shuffle_gen.get_state(),
            "augment": self.augment_gen.get_state(),
        }
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        atomic_torch_save(
            {
                "format": CHECKPOINT_FORMAT,
                "epoch": self.epoch,
                "world_size": self.info.world_size,  # information; resuming may use another
                "steps_per_epoch": self.steps_per_epoch,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "config": self.config.to_dict(),
                "augment": self.augment.to_dict(),
                "data": self.data_fingerprint(),
                "describe": self.describe,
                "rng": rng,
                "metrics": self.metrics,
            },
            self.checkpoint_path,
        )
        self.write_metrics()

    def write_metrics(self) -> None:
        """metrics.jsonl, the human-readable copy of the checkpoint's metrics."""
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in self.metrics))

    def restore(self, state: dict[str, Any]) -> None:
        try:
            self._restore(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            if isinstance(exc, CompressorError):
                raise
            reason = " ".join(str(exc).split())  # load_state_dict's reason is on line 2
            reason = reason if len(reason) < 300 else reason[:300] + "..."
            raise InputError(
                f"cannot resume from {self.checkpoint_path}: it does not belong to this model "
                f"or run ({type(exc).__name__}: {reason}); choose another output directory"
            ) from exc

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("format") == CHECKPOINT_FORMAT:  # another format: _check_resumable says so
            start, epochs = self.config.start_epoch, self.config.epochs
            check_checkpoint_fields(state, self.checkpoint_path, start, epochs)
        _check_resumable(state, self, self.checkpoint_path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        self.shuffle_gen.set_state(state["rng"]["shuffle"])
        self.augment_gen.set_state(state["rng"]["augment"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.epoch, self.metrics = int(state["epoch"]), list(state["metrics"])

    def checkpoint_note(self) -> str:
        if not self.checkpoint_path.exists():
            return "no checkpoint was written yet"
        return f"the last good checkpoint (epoch {self.epoch}) is at {self.checkpoint_path}"

    def fail(self, what: str, step: int) -> TrainingError:
        lr, at = self.config.lr, f"epoch {self.epoch + 1} step {step}"  # lr: the setting
        if self.epoch == 0:
            return TrainingError(
                f"{what} at {at}; no checkpoint was written yet; lower lr "
                f"(now {lr:.4g}) and start again"
            )
        return TrainingError(
            f"{what} at {at}; the last good checkpoint (epoch {self.epoch}) is "
            f"at {self.checkpoint_path}; lower lr (now {lr:.4g}) or resume "
            "with --resume"
        )

    def train_epoch(self, bar: Any) -> tuple[float, float, float]:
        """One pass over the training split: (mean loss, accuracy, seconds), over all ranks.

        Every rank augments the whole global batch (so each image gets the crop it gets on
        one process) and trains on its share; an uneven trailing batch weights each rank's
        loss by its share so DDP's gradient mean is still the mean over the global batch.
        """
        world = self.info.world_size
        self.model.train()
        loss_sum, correct = (torch.zeros((), device=self.device) for _ in range(2))
        pending: list[torch.Tensor] = []  # losses since the last finiteness check
        seen, start = 0, time.perf_counter()
        batches = iterate_batches(
            self.data.train,
            self.config.batch_size,
            shuffle=True,
            generator=self.shuffle_gen,
            drop_last=self.drop_last,
        )
        for step, (images, labels) in enumerate(batches, start=1):
            labels = labels.to(self.device, non_blocking=True)
            images = augment_batch(
                images.to(self.device, non_blocking=True), self.augment, self.augment_gen
            )
            share = 1.0
            if world > 1:
                mine = shard_slice(len(labels), self.info.rank, world)
                share = (mine.stop - mine.start) * world / len(labels)  # 1 unless uneven
                images, labels = images[mine], labels[mine]
            try:
                with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
                    logits = self.net(images)
                    loss = self.criterion(logits.float(), labels)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss if share == 1.0 else loss * share).backward()
                self.scaler.step(self.optimizer)
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                raise batch_too_big(
                    exc, tuple(images.shape), self.config.batch_size, self.checkpoint_note()
                ) from exc
            self.scaler.update()
            self.scheduler.step()
            loss_sum += loss.detach() * labels.shape[0]
            correct += (logits.detach().argmax(dim=1) == labels).sum()
            seen += labels.shape[0]
            pending.append(loss.detach())
            if step % NAN_CHECK_EVERY == 0 or step == self.steps_per_epoch:
                # summed over ranks: a non-finite loss anywhere stops every rank at once
                losses = all_reduce_sum(torch.stack(pending))
                bad = (~torch.isfinite(losses)).nonzero()
                if len(bad):
                    first = losses[int(bad[0, 0])]
                    raise self.fail(
                        f"loss became {'NaN' if first.isnan() else 'inf'}",
                        step - len(pending) + 1 + int(bad[0, 0]),
                    )
                pending.clear()
            if bar is not None:
                bar.update(1)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        if world > 1:
            totals = all_reduce_sum(torch.stack([loss_sum, correct, loss_sum.new_tensor(seen)]))
            loss_sum, correct, seen = totals[0], totals[1], int(totals[2].item())
            if not self.sync_bn:
                average_batchnorm_statistics_(self.model)
        self._check_weights()
        return loss_sum.item() / seen, correct.item() / seen, seconds

    def _check_weights(self) -> None:
        """A finite loss can still leave non-finite weights after the last step's update."""
        tensors = [t for t in self.model.state_dict().values() if t.is_floating_point()]
        if tensors and not bool(torch.stack([t.isfinite().all() for t in tensors]).all()):
            raise self.fail("weights became non-finite", self.steps_per_epoch)


def _check_resumable(state: dict[str, Any], run: _Run, path: Path) -> None:
    """Resuming under another schedule, augmentation or dataset would silently change the run."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(
            f"{path} has checkpoint format {state.get('format')!r}, this version "
            f"reads {CHECKPOINT_FORMAT}; choose another output directory"
        )
    now = run.config.to_dict()
    saved = {k: state["config"].get(k) for k in now}  # a key left out now is not compared
    changed = changed_keys(saved, now, free=RUNTIME_ONLY_FIELDS)
    if changed:
        k = changed[0]
        raise ConfigError(
            f"cannot resume {path}: train.{k} was {saved.get(k)!r}, now {now.get(k)!r};"
            " use the same training config or choose another output directory"
        )
    for key, current in (("augment", run.augment.to_dict()), ("data", run.data_fingerprint())):
        if state[key] != current:
            raise ConfigError(
                f"cannot resume {path}: its {key} was {state[key]}, now {current};"
                " use the same data settings or choose another output directory"
            )
    world, n = state.get("world_size", 1), len(run.data.train)
    steps = state.get("steps_per_epoch", epoch_layout(n, run.config.batch_size, world)[0])
    if steps != run.steps_per_epoch:  # the lr schedule is a function of steps per epoch
        raise ConfigError(
            f"cannot resume {path}: it ran {steps} steps per epoch on {world} process(es), "
            f"{run.steps_per_epoch} on {run.info.world_size} now (the last "
            f"{n % run.config.batch_size} images form a batch only when every process gets "
            f"2 of them); resume with {world} process(es)"
        )


def train(
    model: nn.Module,
    data: DataSplits,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    augment: AugmentConfig | None = None,
    describe: dict[str, Any] | None = None,
) -> TrainResult:
    """Train `model` in place; write metrics.jsonl and checkpoint.pt under `out_dir`.

    `describe` (e.g. the architecture spec) is stored in every checkpoint so it describes
    itself; it must be JSON-serialisable. `augment` None means `data.augment`.
    With `resume`, training continues from the checkpoint in `out_dir` (or starts fresh when
    there is none); without it an existing checkpoint is an error, never overwritten.

    Under torchrun this joins the process group (`init_from_env`, idempotent) and trains in
    DistributedDataParallel; every rank must call it with the same arguments, and `out_dir`
    must be on a file system all ranks see (they all read the checkpoint on resume). Rank 0
    alone writes; every rank returns only after rank 0 finished writing, with the same
    trained weights in `model`. On CUDA, BatchNorm layers run as SyncBatchNorm during
    training and are plain BatchNorm again afterwards; on CPU (no SyncBatchNorm) each rank
    normalises with its own share's statistics, so a BatchNorm model differs a little from
    the one-process run, and running statistics are averaged over ranks after each epoch.
    """
    out_dir, describe = Path(out_dir), dict(describe or {})
    try:
        json.dumps(describe)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"describe must be JSON-serialisable ({exc})") from exc
    info = init_from_env(config.device)
    checkpoint_path = out_dir / CHECKPOINT_NAME
    refuse_to_overwrite(checkpoint_path, resume)
    check_splits(data)  # NaN pixels, empty splits, labels beyond the classes: before anything
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    run = _Run(model, data, config, out_dir, augment or data.augment, describe, info)
    check_model_fits(run.model, data, run.device)
    # Rank 0 alone writes, so it alone holds the directory; a second run on it is refused.
    owner = exclusive_out_dir(out_dir) if info.is_main else contextlib.nullcontext()
    with owner:
        refuse_to_overwrite(checkpoint_path, resume)  # again: another run may have finished
        if resume:
            check_same_file(checkpoint_path)
        if resume and checkpoint_path.exists():
            run.restore(load_checkpoint(checkpoint_path, checkpoint_size_limit(model)))
            if info.is_main:  # a kill between the checkpoint's rename and the metrics' left
                run.write_metrics()  # them an epoch apart; the checkpoint is what counts
        barrier()  # every rank has read the checkpoint (or seen none) before rank 0 writes
        with synced_batchnorm(model, run.sync_bn):
            try:
                run.net = run.model
                if info.distributed:  # one example finds parameters forward never uses
                    example = run.data.train.images[:1].to(run.device)
                    run.net = wrap_ddp(run.model, run.device, example)
                result = _train_loop(run)
            finally:
                run.net = run.model  # drop the wrapper and its gradient hooks
        barrier()  # rank 0's last checkpoint is complete before any rank returns
    return result


def _train_loop(run: _Run) -> TrainResult:
    config, call_start = run.config, time.perf_counter()
    elapsed_before = run.metrics[-1]["elapsed_seconds"] if run.metrics else 0.0
    bar = None  # a tqdm bar over steps when asked for, or (auto) when stderr is a terminal
    progress = config.progress if run.info.is_main else "none"
    if progress == "bar" or (progress == "auto" and sys.stderr.isatty()):
        from tqdm.auto import tqdm

        bar = tqdm(
            total=config.epochs * run.steps_per_epoch,
            unit="step",
            file=sys.stderr,
            initial=run.epoch * run.steps_per_epoch,
        )
    if run.info.is_main:
        run.save_rewind_point()  # theta_0, when 0 is a rewind point and nothing ran yet
    recalibrated: BNRecalibration | None = None
    try:
        while run.epoch < config.epochs:
            lr = run.optimizer.param_groups[0]["lr"]
            train_loss, train_acc, seconds = run.train_epoch(bar)
            if run.epoch + 1 == config.epochs:  # the final val, the checkpoint, test: fresh
                recalibrated = _recalibrate(run)
            val_acc, val_loss = evaluate(run.model, run.data.val, device=run.device)
            run.epoch += 1
            run.metrics.append(
                {
                    "epoch": run.epoch,
                    "train_loss": train_loss,
                    "train_acc": train_acc,
                    "val_loss": val_loss,
                    "val_acc": val_acc,
                    "lr": lr,
                    "epoch_seconds": seconds,
                    "elapsed_seconds": elapsed_before + time.perf_counter() - call_start,
                }
            )
            if run.info.is_main:
                run.save_rewind_point()
                run.save_checkpoint()
            line = (
                f"epoch {run.epoch}/{config.epochs} loss {train_loss:.4f} acc {train_acc:.4f}"
                f" val_loss {val_loss:.4f} val_acc {val_acc:.4f} lr {lr:.4g} {seconds:.2f}s"
            )
            if bar is not None:
                bar.set_postfix_str(line)
            elif progress != "none":
                print(line, file=sys.stderr, flush=True)
    finally:
        if bar is not None:
            bar.close()
    if recalibrated is None:  # resumed after the last epoch: the same statistics again
        recalibrated = _recalibrate(run)  # (a checkpoint written before recalibration too)
    test_acc, test_loss = evaluate(run.model, run.data.test, device=run.device)
    epoch_seconds = [r["epoch_seconds"] for r in run.metrics]
    return TrainResult(
        epochs_run=run.epoch,
        final_val_acc=run.metrics[-1]["val_acc"],
        best_val_acc=max(r["val_acc"] for r in run.metrics),
        test_acc=test_acc,
        test_loss=test_loss,
        train_seconds=sum(epoch_seconds),
        epoch_seconds=epoch_seconds,
        median_epoch_seconds=statistics.median(epoch_seconds),
        checkpoint=str(run.checkpoint_path),
        metrics=str(run.metrics_path),
        device=str(run.device),
        bn_recalibration=recalibrated.to_dict() if config.bn_recalibration_batches else None,
    )


def _recalibrate(run: _Run) -> BNRecalibration:
    """Fresh batch-norm statistics from the training images (no augmentation), the same on
    every rank; they are what the checkpoint, the final val and the test accuracy use."""
    return recalibrate_bn_(
        run.model,
        run.data.train.images,
        run.config.bn_recalibration_batches,
        run.config.batch_size,
        seed=run.config.seed,
    )
