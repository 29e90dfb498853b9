"""Linear CKA (Kornblith et al., ICML 2019): how similar two representations of the same
examples are. The block criterion `cka` and the lottery's stage analysis both use it, so it
sits here, below both."""

from __future__ import annotations

import torch

from compressor.errors import ConfigError

# Centred values below this fraction of a representation's largest magnitude are rounding
# noise from subtracting the mean (float64 sums of n equal values are exact only to ~n eps).
_CONSTANT_RTOL = 1e-10


def _centred(name: str, rep: torch.Tensor) -> torch.Tensor:
    """`rep` as an (n, features) float64 matrix, column-centred and scaled to unit norm."""
    if not isinstance(rep, torch.Tensor):
        raise ConfigError(f"linear_cka: {name} must be a torch.Tensor, got {type(rep).__name__}")
    if rep.ndim == 0 or rep.shape[0] < 2:
        raise ConfigError(
            f"linear_cka: {name} needs at least 2 examples (rows), got shape {tuple(rep.shape)}"
        )
    rep = rep.detach().to(device="cpu", dtype=torch.float64).reshape(rep.shape[0], -1)
    if rep.shape[1] == 0:
        raise ConfigError(f"linear_cka: {name} has no features per example")
    if not torch.isfinite(rep).all():
        raise ConfigError(f"linear_cka: {name} contains NaN or infinite values")
    centred = rep - rep.mean(dim=0, keepdim=True)
    if centred.abs().max() <= _CONSTANT_RTOL * rep.abs().max():
        raise ConfigError(
            f"linear_cka: {name} is the same for every example (zero variance after "
            "centring), so CKA is 0/0; a dead stage (all-zero ReLU output) does this"
        )
    # CKA is scale invariant: unit Frobenius norm keeps the squared sums below near 1.
    return centred / torch.linalg.matrix_norm(centred)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between two representations of the same n examples, in [0, 1].

    Row i of `x` (n x p) and of `y` (n x q) describe example i; higher-dimensional inputs
    are flattened per example (n x C x H x W -> n x CHW). With X, Y column-centred,

        CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) = <K, L>_F / (||K||_F ||L||_F),

    K = X X^T and L = Y Y^T being the centred linear Gram matrices. Both forms are the
    same number; the one with the smaller intermediate matrices is used (Gram: n x n;
    feature space: p x q, p x p and q x q), so a few hundred images of a 16k-feature stage
    cost n x n and not 16k x 16k. Everything runs in float64 on the CPU after scaling
    each centred matrix to unit Frobenius norm, which keeps the fourth-power sums near 1
    whatever the activations' magnitude; the result is clamped to [0, 1] against rounding.

    Invariant to orthogonal transforms and isotropic scaling of either representation,
    and to adding a constant per feature; not invariant to general invertible linear maps.
    With n << p it is biased upwards (even independent features score well above 0), so
    compare models on the same n, and prefer n well above the smaller width.

    Raises ConfigError for fewer than 2 examples, differing n, non-finite values, and a
    representation that is constant over the examples (CKA would be 0/0).
    """
    xc, yc = _centred("x", x), _centred("y", y)
    if xc.shape[0] != yc.shape[0]:
        raise ConfigError(
            f"linear_cka: x and y must describe the same examples, got {xc.shape[0]} "
            f"and {yc.shape[0]} rows"
        )
    n, p, q = xc.shape[0], xc.shape[1], yc.shape[1]
    if n * n <= p * q + p * p + q * q:
        gram_x, gram_y = xc @ xc.T, yc @ yc.T
        cross = (gram_x * gram_y).sum()
        norm_x, norm_y = torch.linalg.matrix_norm(gram_x), torch.linalg.matrix_norm(gram_y)
    else:
        cross = torch.linalg.matrix_norm(yc.T @ xc) ** 2
        norm_x, norm_y = torch.linalg.matrix_norm(xc.T @ xc), torch.linalg.matrix_norm(yc.T @ yc)
    return min(1.0, max(0.0, float(cross / (norm_x * norm_y))))
