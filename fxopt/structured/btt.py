"""2-core block tensor-train (BTT) layers (Qiu et al., 2024): the m1 x n0 block-low-rank grid.

With ``m = m1 m0`` and ``n = n0 n1``, the two cores are ``W1 (m1, m0, n0 r)`` and ``W2 (n0, m1 r, n1)``
(compute-better-spent's layout); W is an ``m1 x n0`` grid of ``m0 x n1`` blocks, each of rank r. Monarch with b
blocks is the case ``m1 = n0 = b``. Cost per token: ``r m1 n0 (m0 + n1) = r (m1 n + n0 m)`` multiply-adds and as
many parameters. Fitted in closed form: a truncated SVD of each of the ``m1 n0`` blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fxopt.structured.calibration import InputStats, Scaling
from fxopt.structured.fit import fitted_layer
from fxopt.structured.grid import GridLinear, GridStructure, checked_split


@dataclass(frozen=True)
class BTT(GridStructure):
    """2-core BTT structure: ranks ``rank`` between the cores, output split ``m1 x m0``, input split ``n0 x n1``.

    Attributes:
        rank: r, between 1 and min(m0, n1).
        m1: block-rows (the first core's batch), dividing m; ``None`` for the largest divisor <= sqrt(m).
        n0: block-columns (the second core's batch), dividing n; ``None`` for the largest divisor <= sqrt(n).
    """

    rank: int
    m1: int | None = None
    n0: int | None = None
    layer_name: ClassVar[str] = "BTTLinear"

    def grid(self, out_features: int, in_features: int) -> tuple[int, int]:
        shape = (out_features, in_features)
        return (checked_split(self.layer_name, "m1", shape, self.m1),
                checked_split(self.layer_name, "n0", shape, self.n0))

    def check_grid(self, out_features: int, in_features: int) -> None:
        self.grid(out_features, in_features)

    def resolved(self, out_features: int, in_features: int) -> BTT:
        """The structure with the default splits made explicit."""
        m1, n0 = self.grid(out_features, in_features)
        return BTT(self.rank, m1, n0)

    def build(self, out_features: int, in_features: int, *, bias: bool = True,
              device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> BTTLinear:
        return BTTLinear(in_features, out_features, self.rank, self.m1, self.n0, bias=bias, device=device,
                         dtype=dtype)


class BTTLinear(GridLinear):
    """A 2-core BTT layer: a batched matmul with the second core, a regrouping, a batched matmul with the first.

    Args:
        in_features: n = n0 n1.
        out_features: m = m1 m0.
        rank: r, between 1 and min(m0, n1).
        m1: block-rows dividing m (``None``: the most even split).
        n0: block-columns dividing n (``None``: the most even split).
        bias: whether the layer has a bias.
        device: where the parameters live (``"meta"`` to plan costs without memory).
        dtype: the parameters' dtype.

    Example:
        >>> layer = BTTLinear.from_dense(torch.randn(64, 96), rank=2)
        >>> layer.structure
        BTT(rank=2, m1=8, n0=8)
    """

    def __init__(self, in_features: int, out_features: int, rank: int, m1: int | None = None, n0: int | None = None,
                 bias: bool = True, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        spec = BTT(rank, m1, n0)
        spec.check(out_features, in_features)
        rows, cols = spec.grid(out_features, in_features)
        super().__init__(in_features, out_features, rows, cols, rank, False, bias, device, dtype)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, *, rank: int, m1: int | None = None,
                   n0: int | None = None, activations: torch.Tensor | InputStats | None = None,
                   scaling: Scaling = "whiten", damp: float = 0.01) -> BTTLinear:
        """Fit to a dense weight by one batched SVD of its ``m1 n0`` blocks (``fxopt.structured.fit`` reports).

        Args:
            weight: the (m, n) dense weight.
            bias: the dense bias, copied; ``None`` for none.
            rank: r, between 1 and min(m0, n1).
            m1: block-rows dividing m (``None``: the most even split).
            n0: block-columns dividing n (``None``: the most even split).
            activations: calibration inputs (..., n) or their statistics, for an activation-aware fit.
            scaling: ``"whiten"`` (Cholesky per block-column) or ``"rms"`` (column scaling), with activations.
            damp: the inputs' second moment's ridge, as a fraction of its mean diagonal.

        Returns:
            The fitted layer, in the weight's dtype and device.
        """
        return fitted_layer(cls, weight, BTT(rank, m1, n0), bias, activations=activations, scaling=scaling,
                            damp=damp)

    @property
    def structure(self) -> BTT:
        return BTT(self.rank, self.rows, self.cols)
