"""The scoring batch in micro-batches, with a progress line: scoring that scales.

SNIP and GraSP need the gradient of the mean loss over the whole scoring set. Autograd keeps
every activation of a forward until its backward, so one forward over 100 images at 224 px
held 21 GB (GraSP, torchvision ResNet-50). Split into micro-batches, each forward is
differentiated and freed before the next one starts: peak memory follows the micro-batch, not
the scoring set. Each micro-batch's loss is weighted by its share of the set (n_i / N), so the
summed gradients are exactly the gradient of the whole set's mean loss.

One thing cannot be split exactly: batch norm in train mode normalises with the statistics of
the batch it sees, here the micro-batch (the original GraSP code does the same: it scores its
batch in two halves). Models without batch statistics (LayerNorm, GroupNorm: ConvNeXt, ViT)
get the whole-set scores to float rounding; batch-norm models get scores that depend a little
on the micro-batch size, exactly the whole-set ones when one micro-batch holds the set.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from compressor.errors import ConfigError
from compressor.training.distributed import is_main_process

# Seconds between two progress lines: scoring that ends sooner prints nothing, a long one a
# line every ten seconds or so (a ResNet-50 GraSP micro-batch of 8 at 224 px takes ~6 s on 2 cores).
PROGRESS_SECONDS = 10.0


@dataclass
class MicroBatches:
    """A labelled scoring batch and how to walk it: `size` images at a time (None: all at once).

    Iterating yields (images, labels, share) with share = micro-batch images / all images;
    every micro-batch walked counts one step of progress, so a criterion that walks the set
    `passes` times reports "micro-batch k/(passes x count)".
    """

    images: torch.Tensor
    labels: torch.Tensor
    size: int | None = None
    name: str = "scoring"  # the criterion, for the progress line
    passes: int = 1
    _step: int = field(default=0, init=False)
    _started: float = field(default_factory=time.perf_counter, init=False)
    _printed: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.size is not None and (isinstance(self.size, bool) or self.size < 1):
            raise ConfigError(f"prune.score_batch_size: must be >= 1 or null, got {self.size!r}")

    def __len__(self) -> int:
        size = self.size or len(self.images)
        return max(1, -(-len(self.images) // size))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
        total = max(len(self.images), 1)  # an empty batch: one empty micro-batch, share 0
        size = self.size or total
        for start in range(0, total, size):
            images, labels = self.images[start : start + size], self.labels[start : start + size]
            yield images, labels, len(images) / total
            self._advance()

    def _advance(self) -> None:
        self._step += 1
        now = time.perf_counter()
        steps = self.passes * len(self)
        since = now - (self._printed if self._printed is not None else self._started)
        last = self._step == steps
        if since >= PROGRESS_SECONDS or (last and self._printed is not None):
            self._printed = now
            if is_main_process():
                print(
                    f"[prune] {self.name}: micro-batch {self._step}/{steps} "
                    f"({len(self.images)} images, {self.size or len(self.images)} at a time), "
                    f"{now - self._started:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
