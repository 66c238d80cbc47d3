"""Block-diagonal layers: W keeps b diagonal blocks of (m/b) x (n/b); 1/b of the parameters and multiply-adds.

The fit keeps W's diagonal blocks, which is optimal in Frobenius norm. Diagonal activation scaling does not change
that (it scales a block's columns and is undone exactly), so ``scaling="rms"`` gives the plain fit. With
``scaling="whiten"`` the fit is the exact least-squares optimum on the calibration data: the dropped blocks'
contribution is regressed onto the kept block's inputs, ``B_i = (W G)_ii G_ii^{-1}`` for the (damped) second
moment G, so inputs that correlate across groups are not lost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from fxopt.kernels.dispatch import layer_uses_ops
from fxopt.ops.structured import Factor, FactorLayout
from fxopt.structured.base import Approximation, Structure, StructuredLinear
from fxopt.structured.calibration import InputStats, InputTransform, Scaling
from fxopt.structured.errors import StructureError, divisors
from fxopt.structured.fit import fitted_layer
from fxopt.structured.grid import cut


@dataclass(frozen=True)
class BlockDiagonal(Structure):
    """Block-diagonal structure with ``blocks`` diagonal blocks.

    Attributes:
        blocks: b, dividing both m and n.
    """

    blocks: int
    layer_name: ClassVar[str] = "BlockDiagonalLinear"

    def check(self, out_features: int, in_features: int) -> None:
        if self.blocks < 1 or out_features % self.blocks or in_features % self.blocks:
            common = sorted(set(divisors(out_features)) & set(divisors(in_features)))
            raise StructureError(f"{self.layer_name}: blocks={self.blocks} does not divide both dimensions of the "
                                 f"{out_features}x{in_features} weight; block counts that do: {common}")

    def input_groups(self, out_features: int, in_features: int) -> int:
        return self.blocks

    def build(self, out_features: int, in_features: int, *, bias: bool = True,
              device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> BlockDiagonalLinear:
        return BlockDiagonalLinear(in_features, out_features, self.blocks, bias=bias, device=device, dtype=dtype)

    def fit_weight(self, weight: torch.Tensor, transform: InputTransform | None) -> Approximation:
        """The diagonal blocks of W, or with whitening their least-squares correction on the data."""
        b = self.blocks
        if transform is None or transform.scaling == "rms":
            kept = cut(weight, b, b).diagonal(dim1=0, dim2=1).permute(2, 0, 1)
        else:
            gram = cut(transform.gram, b, b).diagonal(dim1=0, dim2=1).permute(2, 0, 1)
            cross = cut(weight @ transform.gram, b, b).diagonal(dim1=0, dim2=1).permute(2, 0, 1)
            kept = torch.linalg.solve(gram, cross.mT).mT  # G_ii is symmetric: B_i G_ii = (W G)_ii
        layer = self.build(*weight.shape, bias=False, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(kept)
        diff = weight - layer.to_dense()
        if transform is None:
            error = diff.norm() / weight.norm()
        elif transform.scaling == "rms":
            scale = transform.factors.reshape(-1)
            error = (diff * scale).norm() / (weight * scale).norm()
        else:
            error = (((diff @ transform.gram) * diff).sum() / ((weight @ transform.gram) * weight).sum()).sqrt()
        error = float(error.nan_to_num(0.0))
        return Approximation(layer, error, error)


class BlockDiagonalLinear(StructuredLinear):
    """``y_i = B_i x_i + b_i`` for b blocks: one batched matmul over the input reshaped to (tokens, b, n/b).

    The matmul is ``torch.ops.fxopt.blockdiag_matmul`` where ``layer_uses_ops`` says so (CUDA), else an einsum.

    Args:
        in_features: n, divisible by ``blocks``.
        out_features: m, divisible by ``blocks``.
        blocks: b.
        bias: whether the layer has a bias.
        device: where the parameters live (``"meta"`` to plan costs without memory).
        dtype: the parameters' dtype.

    Example:
        >>> layer = BlockDiagonalLinear.from_dense(torch.randn(64, 96), blocks=4)
        >>> layer.weight.shape, layer.num_parameters
        (torch.Size([4, 16, 24]), 1536)
    """

    def __init__(self, in_features: int, out_features: int, blocks: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        BlockDiagonal(blocks).check(out_features, in_features)
        super().__init__(out_features, bias, device, dtype)
        self.blocks = blocks
        q = in_features // blocks
        self.weight = nn.Parameter(torch.empty(blocks, out_features // blocks, q, device=device, dtype=dtype))
        nn.init.normal_(self.weight, std=1 / math.sqrt(q))

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, *, blocks: int,
                   activations: torch.Tensor | InputStats | None = None, scaling: Scaling = "whiten",
                   damp: float = 0.01) -> BlockDiagonalLinear:
        """Fit to a dense weight: its diagonal blocks, or their correction on calibration data.

        Args:
            weight: the (m, n) dense weight.
            bias: the dense bias, copied; ``None`` for none.
            blocks: b, dividing m and n.
            activations: calibration inputs (..., n) or their statistics, for an activation-aware fit.
            scaling: ``"whiten"`` (least squares on the data) or ``"rms"`` (the same as no activations).
            damp: the inputs' second moment's ridge, as a fraction of its mean diagonal.

        Returns:
            The fitted layer, in the weight's dtype and device.
        """
        return fitted_layer(cls, weight, BlockDiagonal(blocks), bias, activations=activations, scaling=scaling,
                            damp=damp)

    @property
    def structure(self) -> BlockDiagonal:
        return BlockDiagonal(self.blocks)

    @property
    def factor_layout(self) -> FactorLayout:
        """Inputs are (block, column), outputs (block, row) of the weight; the block count is fixed."""
        block = Factor("weight", 0, "blocks of a BlockDiagonalLinear are fixed (rows and columns within blocks are "
                                    "prunable)")
        return self._layout((block, Factor("weight", 2)), (block, Factor("weight", 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if layer_uses_ops(x):
            return self._add_bias(torch.ops.fxopt.blockdiag_matmul(x, self.weight, False, False))
        lead = x.shape[:-1]
        y = torch.einsum("tbq,bpq->tbp", x.reshape(-1, self.blocks, self.in_features // self.blocks), self.weight)
        return self._add_bias(y.reshape(*lead, self.out_features))

    def to_dense(self) -> torch.Tensor:
        return torch.block_diag(*self.weight.unbind(0))
