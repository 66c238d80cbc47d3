"""Calibration statistics of a layer's inputs and the input transforms of activation-aware fitting.

A plain fit minimises ``||W - W_fit||_F``. The output error on inputs X is ``||X (W - W_fit)^T||_F``, which equals
``||(W - W_fit) L||_F`` for any L with ``L L^T = X^T X``. Fitting ``W T`` instead of W and undoing T in the
structure's right factor keeps every fit closed form while weighting the error by the data:

- ``"rms"``: ``T = diag(sqrt(E[x_j^2]))`` (ASVD-style column scaling); exact when the inputs are uncorrelated.
- ``"whiten"``: T = the Cholesky factor of the (damped) second moment, block-diagonal along the structure's
  column groups (SVD-LLM-style whitening). For a plain low-rank fit (one group) the fitted error is then the
  output error on the calibration data (exactly, as ``damp`` goes to 0); for a block grid, covariance between
  column groups is ignored.

Both damp the second moment by ``damp * mean(diag)`` so that dead or collinear inputs do not make T singular.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

Scaling = Literal["rms", "whiten"]
SCALINGS: tuple[str, ...] = get_args(Scaling)


@dataclass(frozen=True)
class InputStats:
    """The second moment ``E[x x^T]`` of a layer's input rows, accumulated over calibration batches.

    Attributes:
        gram: (n, n) mean of ``x x^T`` over the rows seen.
        count: number of rows seen.
    """

    gram: torch.Tensor
    count: int

    @classmethod
    def of(cls, inputs: torch.Tensor) -> InputStats:
        """Statistics of one batch of inputs.

        Args:
            inputs: (..., n) calibration inputs; every leading index is one row.

        Returns:
            The mean outer product over the rows, computed in at least float32.

        Example:
            >>> stats = InputStats.of(torch.randn(8, 16, 64))
            >>> stats.gram.shape, stats.count
            (torch.Size([64, 64]), 128)
        """
        rows = inputs.detach().reshape(-1, inputs.shape[-1])
        rows = rows.to(torch.promote_types(rows.dtype, torch.float32))
        return cls(rows.T @ rows / max(rows.shape[0], 1), rows.shape[0])

    def merge(self, other: InputStats) -> InputStats:
        """The statistics of both batches together (count-weighted mean of the two second moments)."""
        count = self.count + other.count
        return InputStats((self.gram * self.count + other.gram * other.count) / max(count, 1), count)


@dataclass(frozen=True)
class InputTransform:
    """The block-diagonal right transform T of an activation-aware fit: fit ``W T``, then undo T.

    Attributes:
        scaling: ``"rms"`` (diagonal T) or ``"whiten"`` (lower-triangular Cholesky blocks).
        factors: (groups, q) diagonal entries for ``"rms"``, (groups, q, q) lower-triangular blocks for ``"whiten"``.
        gram: the damped (n, n) second moment T was computed from.
    """

    scaling: Scaling
    factors: torch.Tensor
    gram: torch.Tensor

    @classmethod
    def build(cls, stats: InputStats, groups: int, scaling: Scaling, damp: float) -> InputTransform:
        """The transform for ``groups`` equal contiguous column groups.

        Args:
            stats: the input statistics (n x n second moment).
            groups: number of column groups; must divide n (the structure checked it).
            scaling: ``"rms"`` or ``"whiten"``.
            damp: ridge added to the second moment's diagonal, as a fraction of its mean diagonal.

        Returns:
            The transform, in the statistics' dtype and device.
        """
        n = stats.gram.shape[0]
        diag = stats.gram.diagonal()
        gram = stats.gram + damp * diag.mean().clamp_min(torch.finfo(diag.dtype).tiny) * torch.eye(
            n, dtype=diag.dtype, device=diag.device)
        q = n // groups
        if scaling == "rms":
            return cls(scaling, gram.diagonal().sqrt().reshape(groups, q), gram)
        blocks = torch.stack([gram[g * q:(g + 1) * q, g * q:(g + 1) * q] for g in range(groups)])
        return cls(scaling, torch.linalg.cholesky(blocks), gram)

    def to(self, dtype: torch.dtype) -> InputTransform:
        """The same transform in another dtype (fits run in the weight's compute dtype)."""
        return InputTransform(self.scaling, self.factors.to(dtype), self.gram.to(dtype))

    def scale(self, blocks: torch.Tensor) -> torch.Tensor:
        """``W T`` blockwise: blocks (..., groups, p, q) times the group's block of T."""
        if self.scaling == "rms":
            return blocks * self.factors[:, None, :]
        return blocks @ self.factors

    def unscale(self, right: torch.Tensor) -> torch.Tensor:
        """``R T^{-1}`` blockwise: right factors (..., groups, r, q) times the inverse of the group's block of T."""
        if self.scaling == "rms":
            return right / self.factors[:, None, :]
        return torch.linalg.solve_triangular(self.factors, right, upper=False, left=False)


def output_error(weight: torch.Tensor, fitted: torch.Tensor, stats: InputStats) -> float:
    """Relative output error ``||X (W - W_fit)^T||_F / ||X W^T||_F`` on the calibration rows, from their statistics.

    Args:
        weight: the dense (m, n) weight.
        fitted: the fitted (m, n) weight.
        stats: the calibration inputs' second moment (undamped).

    Returns:
        The relative error (0 when W is 0 on the data and the fit is exact).
    """
    gram = stats.gram.to(weight.dtype)
    diff = weight - fitted
    num = ((diff @ gram) * diff).sum().clamp_min(0)
    den = ((weight @ gram) * weight).sum()
    return float((num / den).sqrt()) if den > 0 else float(num > 0)
