"""Training memory of a model, measured the same way on every device.

CPU processes have no resettable allocator peak, so the footprint of one SGD step is
measured instead: the bytes autograd saves for the backward pass on one training batch
(hooked with `torch.autograd.graph.saved_tensors_hooks`, each storage counted once), plus
the weights, their gradients and one momentum buffer each. That is what a shallower
network saves and what dominates a training step's memory; it does not include the
framework's workspace or the data. On CUDA the allocator's own peak over training is
recorded beside it (`torch.cuda.max_memory_allocated`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def step_memory_bytes(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> dict[str, int]:
    """{"activations", "weights", "total"} bytes of one training step on (images, labels).

    Runs forward and backward on a copy of `model` in train mode; the model passed in is
    not touched (batch-norm statistics included)."""
    work = copy.deepcopy(model).train()
    seen: set[tuple[int, int]] = set()
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key not in seen and not isinstance(tensor, nn.Parameter):
            seen.add(key)
            saved += storage.nbytes()
        return tensor

    params = [p for p in work.parameters() if p.requires_grad]
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(work(images), labels)
    loss.backward()
    param_keys = {(p.untyped_storage().data_ptr(), p.untyped_storage().nbytes()) for p in params}
    saved -= sum(k[1] for k in seen & param_keys)  # weights saved for backward are counted below
    weights = 3 * weight_bytes  # weights, gradients, SGD momentum
    return {"activations": saved, "weights": weights, "total": saved + weights}
