"""Block criteria on trained weights (the paper's Algorithm 1, tickets after training).

Each criterion scores whole residual blocks from what they compute on one batch, not from
their weights; higher means "keep", as for every criterion in `compressor.prune.criteria`.
Each is registered here with `compressor.prune.registry.register_criterion`, takes
`(model, blocks, batch, seed)` and returns one float per block. Activations come from
forward hooks on the blocks during an eval-mode, no-grad forward: batch-norm statistics,
weights and each module's train/eval flag are left as they were, and no copy of the model
is made (trained models can be large). The criteria are deterministic; `seed` is accepted
for a uniform signature.

The paper names the criteria but gives no formulas; we follow each original paper and
choose where it leaves a detail open (each choice is stated with its reason below):

- hrank (Lin et al. 2020, HRank): average rank of the block's output feature maps.
- expectabs: mean absolute value of the block's residual contribution, output - input.
- kl (Jordao et al.): KL divergence of the network's softmax with the block replaced by the
  identity from the full network's; removing a block that changes nothing scores 0.
- pls (Jordao et al., PLS + VIP): discriminative power of the block's pooled output.
- cka (Kornblith et al. 2019): 1 - linear CKA between the block's input and output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compressor.errors import ConfigError, UnsupportedModelError
from compressor.models.blocks import BlockInfo, evaluating
from compressor.prune.cka import linear_cka
from compressor.prune.registry import Batch, register_criterion

# Reduces (block input or None, block output) to what a criterion keeps of a block.
Reducer = Callable[[torch.Tensor | None, torch.Tensor], Any]

# PLS components: 2, as in Jordao et al.'s PLS+VIP pruning code (PruningNeuralNetworks,
# VIPPruning n_comp=2); a few components carry most of the label information.
PLS_COMPONENTS = 2


@register_criterion(
    "hrank",
    needs_data=True,
    description="average rank of the block's output feature maps (trained weights, Algorithm 1)",
    whole_blocks=True,
    after_training=True,
)
def hrank_scores(
    model: nn.Module, blocks: list[BlockInfo], batch: Batch, seed: int
) -> dict[str, float]:
    """HRank (Lin et al. 2020): the average rank of the block's output feature maps.

    Each output channel's H x W map is one matrix; its rank (torch.linalg.matrix_rank, at
    float32 tolerance) is averaged over images and channels, as HRank does per filter.
    Choice: the raw average, HRank's own quantity. A map's rank cannot exceed min(H, W), so
    in a global ranking blocks at a lower resolution tend to score lower and the deepest
    stage loses its blocks first (a stage bias like the one the paper finds in an L1 norm);
    restrict removal with prune.include/exclude when that is not wanted. Dividing by
    min(H, W) removes the bias but leaves nothing to rank where maps are full rank, as at
    initialisation or on blocks without a final ReLU (MobileNetV2's linear bottlenecks):
    every block would score 1.0. Within one stage both give the same order.

    HRank sees a block's output, which for a residual block is mostly its input carried by
    the shortcut: a block whose branch is zero scores as its predecessor, not lowest.
    Needs 4-D (N, C, H, W) block outputs.
    """
    images, _ = batch

    def reduce(_: torch.Tensor | None, output: torch.Tensor) -> float:
        if output.dim() != 4:
            raise UnsupportedModelError(
                f"criterion 'hrank' needs (N, C, H, W) feature maps; a block returns shape "
                f"{tuple(output.shape)}; use 'kl', 'cka', 'expectabs' or 'pls' for this model"
            )
        return float(torch.linalg.matrix_rank(output.float()).double().mean())

    return _collect(model, blocks, images, reduce, with_input=False)


@register_criterion(
    "expectabs",
    needs_data=True,
    description="mean |output - input| of the block (trained weights, Algorithm 1)",
    whole_blocks=True,
    after_training=True,
)
def expectabs_scores(
    model: nn.Module, blocks: list[BlockInfo], batch: Batch, seed: int
) -> dict[str, float]:
    """expectABS: mean |output - input| of the block over the batch, all positions.

    Choice: the residual contribution, not the output itself. A residual block's output is
    its input plus what the block adds; the output's magnitude is mostly the carried-over
    signal, so it measures how large activations are at that depth, not what the block
    does, and would rank blocks by stage. output - input is exactly what removing the block
    takes away at its output (for a post-activation block relu(x + f(x)), it is f(x) where
    x + f(x) >= 0). A block whose residual branch is zero scores 0, the lowest possible.
    """
    images, _ = batch

    def reduce(block_input: torch.Tensor | None, output: torch.Tensor) -> float:
        assert block_input is not None  # with_input=True guarantees it
        return float((output.double() - block_input.double()).abs().mean())

    return _collect(model, blocks, images, reduce, with_input=True)


def branch_ratios(
    model: nn.Module, blocks: list[BlockInfo], images: torch.Tensor
) -> dict[str, float]:
    """|output - input| / |input| of each block (norms over the batch), in eval mode.

    Not a criterion: it explains a score warning (compressor/prune/score_checks.py). Near 0 for
    every block when the residual branches start switched off (ConvNeXt's layer scale 1e-6,
    a zero-initialised last batch norm as in timm's ResNets): at such weights any score of
    the branch weights is near zero, whatever the criterion.
    """

    def reduce(block_input: torch.Tensor | None, output: torch.Tensor) -> float:
        assert block_input is not None  # with_input=True guarantees it
        base = float(block_input.double().norm())
        return float((output.double() - block_input.double()).norm()) / max(base, 1e-30)

    return _collect(model, blocks, images, reduce, with_input=True)


@register_criterion(
    "kl",
    needs_data=True,
    description="KL divergence of the softmax when the block is skipped"
    " (trained weights, Algorithm 1)",
    whole_blocks=True,
    after_training=True,
)
def kl_scores(
    model: nn.Module, blocks: list[BlockInfo], batch: Batch, seed: int
) -> dict[str, float]:
    """KL (Jordao et al.'s layer criterion): KL(p_full || p_without_block), batch mean.

    p are the network's softmax outputs. "Without the block" is the block replaced by the
    identity through a forward hook returning the block's input (what deleting a removable
    block does, since its input and output shapes match); no module is deleted, so the
    caller's model is untouched. One forward per block. Large divergence: the block matters.
    Choice: the direction KL(full || removed) asks how much of the trained network's
    prediction is lost; the divergence is in nats, in float64.
    """
    images, _ = batch
    modules = _block_modules(model, blocks)
    with evaluating(model), torch.no_grad():
        reference = _log_probabilities(model(images))
        scores = {}
        for name, module in modules.items():
            ran: list[str] = []
            handles = _identity_hooks(name, module, ran)
            try:
                removed = _log_probabilities(model(images))
            finally:
                for handle in handles:
                    handle.remove()
            _check_all_ran([b for b in blocks if b.name == name], dict.fromkeys(ran))
            divergence = F.kl_div(removed, reference, reduction="batchmean", log_target=True)
            scores[name] = float(divergence)
    return scores


@register_criterion(
    "pls",
    needs_data=True,
    description="PLS + VIP: class information in the pooled output (trained weights, Algorithm 1)",
    whole_blocks=True,
    after_training=True,
)
def pls_scores(
    model: nn.Module, blocks: list[BlockInfo], batch: Batch, seed: int
) -> dict[str, float]:
    """PLS + VIP (Jordao et al., "Deep network compression based on partial least squares").

    Each block's output is pooled to one feature per channel (global average over the
    spatial positions; 2-D outputs are used as they are), the features of all blocks are
    concatenated, and one PLS regression (scikit-learn's NIPALS PLS2, standardised
    features) of them onto the one-hot labels is fitted. A block's score is the mean
    Variable Importance in Projection of its features: how much they serve predicting the
    class.
    Choices: PLS_COMPONENTS = 2 components, and the mean of the VIPs, both as Jordao et
    al.'s code scores a filter; the mean, not the sum, because a sum grows with the
    channel count and would favour the widest stage whatever it does (VIPs average 1 over
    all features). Average pooling, not their code's default max pooling: on the small
    scoring batch, a mean over positions is steadier than one extreme value per map.
    A block whose branch is zero outputs its input, so its features duplicate its
    predecessor's and score the same: PLS measures discriminative power, not change.
    """
    images, labels = batch
    classes = torch.unique(labels)
    if len(classes) < 2:
        raise ConfigError(
            f"criterion 'pls' relates features to class labels; the batch has "
            f"{len(classes)} class, need at least 2"
        )

    def reduce(_: torch.Tensor | None, output: torch.Tensor) -> np.ndarray:
        pooled = output.flatten(2).mean(2) if output.dim() > 2 else output.reshape(len(output), -1)
        return pooled.double().cpu().numpy()

    features = _collect(model, blocks, images, reduce, with_input=False)
    vip = vip_scores(np.concatenate(list(features.values()), axis=1), labels)
    scores, start = {}, 0
    for name, block_features in features.items():
        width = block_features.shape[1]
        scores[name] = float(vip[start : start + width].mean())
        start += width
    return scores


def vip_scores(features: np.ndarray, labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """VIP of each feature column (samples x features) in a PLS fit onto one-hot labels.

    VIP_j = sqrt(p * sum_a SS_a (w_ja / |w_a|)^2 / sum_a SS_a), SS_a = |t_a|^2 |q_a|^2 the
    label variance explained by component a (Wold et al.); mean(VIP^2) over features is 1.
    """
    from sklearn.cross_decomposition import PLSRegression

    labels = np.asarray(labels)
    targets = (labels[:, None] == np.unique(labels)[None, :]).astype(np.float64)
    n_samples, n_features = features.shape
    components = max(1, min(PLS_COMPONENTS, n_samples - 1, n_features))
    pls = PLSRegression(n_components=components, scale=True).fit(features, targets)
    t, w, q = pls.x_scores_, pls.x_weights_, pls.y_loadings_
    explained = (t**2).sum(axis=0) * (q**2).sum(axis=0)
    if explained.sum() <= 0:  # no label variance explained: no feature is preferred
        return np.ones(n_features)
    weights = (w / np.linalg.norm(w, axis=0)) ** 2
    return np.sqrt(n_features * (weights @ explained) / explained.sum())


@register_criterion(
    "cka",
    needs_data=True,
    description="1 - linear CKA between the block's input and output"
    " (trained weights, Algorithm 1)",
    whole_blocks=True,
    after_training=True,
)
def cka_scores(
    model: nn.Module, blocks: list[BlockInfo], batch: Batch, seed: int
) -> dict[str, float]:
    """1 - linear CKA (Kornblith et al. 2019) between the block's input and output.

    Representations are flattened per image (N x C*H*W, as Kornblith et al. do for
    convolutional layers) and CKA is their linear (biased-HSIC) form. CKA 1: the output is
    the input up to an orthogonal transform and a scale, the block changes nothing a linear
    read-out could use, so it goes first (score 0). Needs at least 2 images.
    Choice: a representation constant over the batch has no CKA; we call its CKA 0 (score 1,
    keep) so a block is never removed on no evidence.
    """
    images, _ = batch
    if images.shape[0] < 2:
        raise ConfigError(
            f"criterion 'cka' compares images with each other; got a batch of "
            f"{images.shape[0]}, need at least 2"
        )

    def reduce(block_input: torch.Tensor | None, output: torch.Tensor) -> float:
        assert block_input is not None  # with_input=True guarantees it
        try:
            return 1.0 - linear_cka(block_input, output)
        except ConfigError:  # a representation constant over the batch: CKA is 0/0, keep it
            return 1.0

    return _collect(model, blocks, images, reduce, with_input=True)


def _block_modules(model: nn.Module, blocks: list[BlockInfo]) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    missing = [b.name for b in blocks if not b.name or b.name not in modules]
    if missing:
        raise ConfigError(f"block(s) {', '.join(map(repr, missing))} are not modules of the model")
    return {b.name: modules[b.name] for b in blocks}


def _collect(
    model: nn.Module,
    blocks: list[BlockInfo],
    images: torch.Tensor,
    reduce: Reducer,
    *,
    with_input: bool,
) -> dict[str, Any]:
    """One eval-mode forward; `reduce(input, output)` of each block at its first call.

    Reducing inside the hook keeps one block's activations alive at a time. The input is
    cloned before the block runs, because a block may change it in place (an in-place ReLU
    on its input in a pre-activation block).
    """
    inputs: dict[str, torch.Tensor] = {}
    results: dict[str, Any] = {}

    def keep_input(name: str):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple) -> None:
            if name not in results and args and isinstance(args[0], torch.Tensor):
                inputs[name] = args[0].detach().clone()

        return hook

    def reduce_output(name: str):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if name in results:
                return
            if not isinstance(output, torch.Tensor):
                raise UnsupportedModelError(
                    f"block '{name}' returns a {type(output).__name__}, not a tensor; "
                    "block criteria read a block's output tensor"
                )
            block_input = inputs.pop(name, None)
            if with_input and (block_input is None or block_input.shape != output.shape):
                got = None if block_input is None else tuple(block_input.shape)
                raise UnsupportedModelError(
                    f"block '{name}': input {got} and output {tuple(output.shape)} differ; "
                    "this criterion compares a block's input with its output, so it needs "
                    "blocks that keep the shape (removable blocks do)"
                )
            results[name] = reduce(block_input, output)

        return hook

    handles = []
    for name, module in _block_modules(model, blocks).items():
        if with_input:
            handles.append(module.register_forward_pre_hook(keep_input(name)))
        handles.append(module.register_forward_hook(reduce_output(name)))
    try:
        with evaluating(model), torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    _check_all_ran(blocks, results)
    return {b.name: results[b.name] for b in blocks}


def _identity_hooks(name: str, module: nn.Module, ran: list[str]) -> list[Any]:
    """Hooks that make `module` return its input: the block is skipped as if deleted.
    `name` is appended to `ran` when the block runs (a block that does not run would score
    a divergence of 0 and be removed first)."""
    saved: dict[str, torch.Tensor] = {}

    def keep_input(module: nn.Module, args: tuple) -> None:
        saved["input"] = args[0].clone()  # the block may change its input in place

    def return_input(module: nn.Module, args: tuple, output: Any) -> torch.Tensor:
        block_input = saved.pop("input")
        ran.append(name)
        if not isinstance(output, torch.Tensor) or output.shape != block_input.shape:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
            raise UnsupportedModelError(
                f"criterion 'kl' cannot replace block '{name}' by the identity: its input "
                f"{tuple(block_input.shape)} and output {got} differ (only removable blocks "
                "can be scored)"
            )
        return block_input

    return [
        module.register_forward_pre_hook(keep_input),
        module.register_forward_hook(return_input),
    ]


def _log_probabilities(output: Any) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise UnsupportedModelError(
            f"criterion 'kl' needs the model to return logits of shape (N, classes); got {got}"
        )
    return F.log_softmax(output.double(), dim=1)


def _check_all_ran(blocks: list[BlockInfo], results: dict[str, Any]) -> None:
    missing = [b.name for b in blocks if b.name not in results]
    if missing:
        raise UnsupportedModelError(
            f"block(s) {', '.join(missing)} did not run in the model's forward; "
            "block criteria score blocks from their activations"
        )
