"""Monarch layers (Dao et al., 2022), rectangular and with a rank per block: the b x b block-low-rank grid.

With b blocks, W (m x n) is cut into b x b blocks of (m/b) x (n/b), each of rank r. As a product this is
``L P^T R`` with R block-diagonal (b blocks of (b r) x (n/b)), P^T the perfect shuffle regrouping R's outputs by
block-row, and L block-diagonal (b blocks of (m/b) x (b r)). Dao et al.'s ``M = P L P^T R`` adds an output perfect
shuffle P (``shuffle=True``); fly's square Monarch with b blocks is the case ``r = n / b^2`` (rank 1 when
``b = sqrt(n)``). Any b dividing both m and n works, square or not, and any rank up to the block size.

Cost per token: ``b r (m + n)`` multiply-adds and as many parameters (``2 n^2 / b`` for fly's square case).
Fitted in closed form: a truncated SVD of each of the b^2 blocks (after un-shuffling W's rows when ``shuffle``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fxopt.structured.calibration import InputStats, Scaling
from fxopt.structured.errors import StructureError, divisors
from fxopt.structured.fit import fitted_layer
from fxopt.structured.grid import GridLinear, GridStructure


@dataclass(frozen=True)
class Monarch(GridStructure):
    """Monarch structure: a ``blocks x blocks`` grid of rank-``rank`` blocks.

    Attributes:
        blocks: b, dividing both m and n.
        rank: r, between 1 and min(m/b, n/b); ``n / b^2`` is fly's Monarch.
        shuffle: whether the outputs come in Dao et al.'s perfect-shuffle order (``M = P L P^T R``).
    """

    blocks: int
    rank: int
    shuffle: bool = False
    layer_name: ClassVar[str] = "MonarchLinear"

    def grid(self, out_features: int, in_features: int) -> tuple[int, int]:
        return self.blocks, self.blocks

    def check_grid(self, out_features: int, in_features: int) -> None:
        if self.blocks < 1 or out_features % self.blocks or in_features % self.blocks:
            common = sorted(set(divisors(out_features)) & set(divisors(in_features)))
            raise StructureError(f"{self.layer_name}: blocks={self.blocks} does not divide both dimensions of the "
                                 f"{out_features}x{in_features} weight; block counts that do: {common}")

    def build(self, out_features: int, in_features: int, *, bias: bool = True,
              device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> MonarchLinear:
        return MonarchLinear(in_features, out_features, self.blocks, self.rank, self.shuffle, bias=bias,
                             device=device, dtype=dtype)


class MonarchLinear(GridLinear):
    """A Monarch layer: two batched matmuls (b blocks each) with a regrouping between them.

    Args:
        in_features: n, divisible by ``blocks``.
        out_features: m, divisible by ``blocks``.
        blocks: b.
        rank: r per block, between 1 and min(m/b, n/b).
        shuffle: outputs in Dao et al.'s perfect-shuffle order.
        bias: whether the layer has a bias.
        device: where the parameters live (``"meta"`` to plan costs without memory).
        dtype: the parameters' dtype.

    Example:
        >>> layer = MonarchLinear.from_dense(torch.randn(64, 96), blocks=4, rank=2)
        >>> layer.num_parameters, layer.dense_flops(1) // layer.flops(1)
        (1280, 4)
    """

    def __init__(self, in_features: int, out_features: int, blocks: int, rank: int, shuffle: bool = False,
                 bias: bool = True, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        Monarch(blocks, rank, shuffle).check(out_features, in_features)
        super().__init__(in_features, out_features, blocks, blocks, rank, shuffle, bias, device, dtype)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, *, blocks: int, rank: int,
                   shuffle: bool = False, activations: torch.Tensor | InputStats | None = None,
                   scaling: Scaling = "whiten", damp: float = 0.01) -> MonarchLinear:
        """Fit to a dense weight by one batched SVD of its b^2 blocks (``fxopt.structured.fit`` gives the report).

        Args:
            weight: the (m, n) dense weight.
            bias: the dense bias, copied; ``None`` for none.
            blocks: b, dividing m and n.
            rank: r per block.
            shuffle: outputs in Dao et al.'s perfect-shuffle order.
            activations: calibration inputs (..., n) or their statistics, for an activation-aware fit.
            scaling: ``"whiten"`` (Cholesky per block-column) or ``"rms"`` (column scaling), with activations.
            damp: the inputs' second moment's ridge, as a fraction of its mean diagonal.

        Returns:
            The fitted layer, in the weight's dtype and device.
        """
        return fitted_layer(cls, weight, Monarch(blocks, rank, shuffle), bias, activations=activations,
                            scaling=scaling, damp=damp)

    @property
    def structure(self) -> Monarch:
        return Monarch(self.rows, self.rank, self.shuffle)
