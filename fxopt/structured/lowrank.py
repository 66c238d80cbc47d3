"""Low-rank layers ``W = U V`` (U m x r, V r x n): the 1 x 1 block-low-rank grid.

Cost per token: ``r (m + n)`` multiply-adds and as many parameters, below dense when ``r (m + n) < m n``. Fitted by
the truncated SVD with the square roots of the singular values split between both factors; activation-aware fits
whiten with the full Cholesky factor of the inputs' second moment, which makes the fitted error exactly the output
error on the calibration data (SVD-LLM), or scale the columns by the inputs' RMS (ASVD).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from fxopt.kernels.dispatch import layer_uses_ops
from fxopt.ops.structured import Factor, FactorLayout
from fxopt.structured.calibration import InputStats, Scaling
from fxopt.structured.fit import fitted_layer
from fxopt.structured.grid import GridLayer, GridStructure


@dataclass(frozen=True)
class LowRank(GridStructure):
    """Low-rank structure: W = U V with inner dimension ``rank``.

    Attributes:
        rank: r, between 1 and min(m, n).
    """

    rank: int
    layer_name: ClassVar[str] = "LowRankLinear"

    def grid(self, out_features: int, in_features: int) -> tuple[int, int]:
        return 1, 1

    def check_grid(self, out_features: int, in_features: int) -> None:
        """Every shape has a 1 x 1 grid."""

    def build(self, out_features: int, in_features: int, *, bias: bool = True,
              device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LowRankLinear:
        return LowRankLinear(in_features, out_features, self.rank, bias=bias, device=device, dtype=dtype)


class LowRankLinear(GridLayer):
    """``y = U (V x) + b``: two thin matmuls, never forming W (``torch.ops.fxopt.lowrank`` where
    ``layer_uses_ops`` says so, CUDA; two ``F.linear`` otherwise).

    Args:
        in_features: n.
        out_features: m.
        rank: r, between 1 and min(m, n).
        bias: whether the layer has a bias.
        device: where the parameters live (``"meta"`` to plan costs without memory).
        dtype: the parameters' dtype.

    Example:
        >>> layer = LowRankLinear.from_dense(torch.randn(64, 32), rank=8)
        >>> layer.num_parameters, layer.flops(tokens=10)
        (768, 15360)
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        LowRank(rank).check(out_features, in_features)
        super().__init__(out_features, bias, device, dtype)
        self.rank = rank
        self.u = nn.Parameter(torch.empty(out_features, rank, device=device, dtype=dtype))
        self.v = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random factors that keep the output's scale near a dense layer's (each factor 1/sqrt(fan-in))."""
        nn.init.normal_(self.v, std=1 / math.sqrt(self.in_features))
        nn.init.normal_(self.u, std=1 / math.sqrt(self.rank))

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, *, rank: int,
                   activations: torch.Tensor | InputStats | None = None, scaling: Scaling = "whiten",
                   damp: float = 0.01) -> LowRankLinear:
        """Fit to a dense weight by truncated SVD (``fxopt.structured.fit`` gives the report too).

        Args:
            weight: the (m, n) dense weight.
            bias: the dense bias, copied; ``None`` for none.
            rank: r, between 1 and min(m, n).
            activations: calibration inputs (..., n) or their statistics, for an activation-aware fit.
            scaling: ``"whiten"`` (full Cholesky whitening) or ``"rms"`` (column scaling), with activations.
            damp: the inputs' second moment's ridge, as a fraction of its mean diagonal.

        Returns:
            The fitted layer, in the weight's dtype and device.
        """
        return fitted_layer(cls, weight, LowRank(rank), bias, activations=activations, scaling=scaling,
                            damp=damp)

    @property
    def structure(self) -> LowRank:
        return LowRank(self.rank)

    @property
    def factor_layout(self) -> FactorLayout:
        """Inputs are V's columns, outputs U's rows; the rank between them is not a channel."""
        return self._layout((Factor("v", 1),), (Factor("u", 0),))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if layer_uses_ops(x):
            y = torch.ops.fxopt.lowrank(x, self.u, self.v)
            return y if self.bias is None else y + self.bias
        return F.linear(F.linear(x, self.v), self.u, self.bias)

    def to_dense(self) -> torch.Tensor:
        return self.u @ self.v

    def load_blocks(self, left: torch.Tensor, right: torch.Tensor) -> None:
        with torch.no_grad():
            self.u.copy_(left[0, 0])
            self.v.copy_(right[0, 0])
