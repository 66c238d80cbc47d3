"""BLAST layers (Lee et al., 2024): b x b blocks ``A_ij = U_i diag(s_ij) V_j^T`` with shared bases.

``U_i`` (p x r) is shared along block-row i, ``V_j`` (q x r) along block-column j, and each block has its own
coupling vector ``s_ij`` of length r. Parameters and multiply-adds per token: ``r (m + n + b^2)``. The forward
projects per block-column (``z_j = V_j^T x_j``, r n), couples diagonally (``w_i = sum_j s_ij * z_j``, r b^2, one
batched matmul over the rank) and projects per block-row (``y_i = U_i w_i``, r m); it never forms the
(b, b, tokens, r) tensor of the reference implementation. BLAST can represent low-rank (b = 1), block-diagonal and
Monarch (rank r/b per block) matrices. It has no closed-form fit: ``fxopt.structured.blast_fit`` starts from a
block-low-rank fit and refines by alternating least squares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from fxopt.kernels.blast import blast_rank_major
from fxopt.kernels.dispatch import layer_uses_ops
from fxopt.ops.structured import Factor, FactorLayout
from fxopt.structured.base import Approximation, Structure, StructuredLinear
from fxopt.structured.blast_fit import refine_blast
from fxopt.structured.calibration import InputStats, InputTransform, Scaling
from fxopt.structured.errors import StructureError, divisors
from fxopt.structured.fit import fitted_layer
from fxopt.structured.grid import cut, uncut


@dataclass(frozen=True)
class Blast(Structure):
    """BLAST structure: a ``blocks x blocks`` grid with shared bases of rank ``rank``.

    Attributes:
        blocks: b, dividing both m and n.
        rank: r, between 1 and ``b min(m/b, n/b)`` (that rank represents every matrix).
        max_iter: the most alternating least-squares iterations of a fit.
        tol: a fit stops when an iteration improves the relative error by less than ``tol`` times its value.
    """

    blocks: int
    rank: int
    max_iter: int = 50
    tol: float = 1e-4
    layer_name: ClassVar[str] = "BlastLinear"
    fit_options: ClassVar[tuple[str, ...]] = ("max_iter", "tol")

    def check(self, out_features: int, in_features: int) -> None:
        b = self.blocks
        if b < 1 or out_features % b or in_features % b:
            common = sorted(set(divisors(out_features)) & set(divisors(in_features)))
            raise StructureError(f"{self.layer_name}: blocks={b} does not divide both dimensions of the "
                                 f"{out_features}x{in_features} weight; block counts that do: {common}")
        most = b * min(out_features // b, in_features // b)
        if not 1 <= self.rank <= most:
            raise StructureError(f"{self.layer_name}: rank {self.rank} is impossible for {b}x{b} blocks of a "
                                 f"{out_features}x{in_features} weight; use 1 <= rank <= {most}")
        if self.max_iter < 0 or self.tol < 0:
            raise StructureError(f"{self.layer_name}: max_iter={self.max_iter} and tol={self.tol} must be >= 0")

    def input_groups(self, out_features: int, in_features: int) -> int:
        return self.blocks

    def build(self, out_features: int, in_features: int, *, bias: bool = True,
              device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> BlastLinear:
        return BlastLinear(in_features, out_features, self.blocks, self.rank, bias=bias, device=device, dtype=dtype)

    def fit_weight(self, weight: torch.Tensor, transform: InputTransform | None) -> Approximation:
        """Alternating least squares on ``||(W - BLAST) T||_F`` from a block-low-rank start, T undone in V."""
        blocks = cut(weight, self.blocks, self.blocks)
        result = refine_blast(blocks if transform is None else transform.scale(blocks), self.rank, self.max_iter,
                              self.tol)
        f = result.factors
        v = f.v if transform is None else transform.unscale(f.v.mT).mT
        layer = self.build(*weight.shape, bias=False, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            layer.u.copy_(f.u)
            layer.s.copy_(f.s)
            layer.v.copy_(v)
        return Approximation(layer, result.error, result.start_error, result.iterations, result.converged)


class BlastLinear(StructuredLinear):
    """A BLAST layer: project per block-column, couple diagonally, project per block-row.

    One ``torch.ops.fxopt.blast`` call where ``layer_uses_ops`` says so (CUDA), else the op's rank-major order in
    plain torch (``fxopt.kernels.blast.blast_rank_major``: three bmm, the coupling batched over the rank).

    Args:
        in_features: n, divisible by ``blocks``.
        out_features: m, divisible by ``blocks``.
        blocks: b.
        rank: r.
        bias: whether the layer has a bias.
        device: where the parameters live (``"meta"`` to plan costs without memory).
        dtype: the parameters' dtype.

    Example:
        >>> layer = BlastLinear.from_dense(torch.randn(64, 96), blocks=4, rank=8)
        >>> layer.num_parameters, layer.s.shape
        (1408, torch.Size([4, 4, 8]))
    """

    def __init__(self, in_features: int, out_features: int, blocks: int, rank: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        Blast(blocks, rank).check(out_features, in_features)
        super().__init__(out_features, bias, device, dtype)
        self.blocks, self.rank = blocks, rank
        p, q = out_features // blocks, in_features // blocks
        self.u = nn.Parameter(torch.empty(blocks, p, rank, device=device, dtype=dtype))
        self.s = nn.Parameter(torch.empty(blocks, blocks, rank, device=device, dtype=dtype))
        self.v = nn.Parameter(torch.empty(blocks, q, rank, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random factors that keep the output's scale near a dense layer's (each factor 1/sqrt(fan-in))."""
        nn.init.normal_(self.v, std=1 / math.sqrt(self.v.shape[1]))
        nn.init.normal_(self.s, std=1 / math.sqrt(self.blocks))
        nn.init.normal_(self.u, std=1 / math.sqrt(self.rank))

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, *, blocks: int, rank: int,
                   max_iter: int = 50, tol: float = 1e-4, activations: torch.Tensor | InputStats | None = None,
                   scaling: Scaling = "whiten", damp: float = 0.01) -> BlastLinear:
        """Fit to a dense weight by alternating least squares (``fxopt.structured.fit`` gives the report).

        Args:
            weight: the (m, n) dense weight.
            bias: the dense bias, copied; ``None`` for none.
            blocks: b, dividing m and n.
            rank: r.
            max_iter: the most refinement iterations.
            tol: the relative improvement below which refinement stops.
            activations: calibration inputs (..., n) or their statistics, for an activation-aware fit.
            scaling: ``"whiten"`` (Cholesky per block-column) or ``"rms"`` (column scaling), with activations.
            damp: the inputs' second moment's ridge, as a fraction of its mean diagonal.

        Returns:
            The fitted layer, in the weight's dtype and device.
        """
        return fitted_layer(cls, weight, Blast(blocks, rank, max_iter, tol), bias, activations=activations,
                            scaling=scaling, damp=damp)

    @property
    def structure(self) -> Blast:
        return Blast(self.blocks, self.rank)

    @property
    def factor_layout(self) -> FactorLayout:
        """Inputs are (block-column, row) of V, outputs (block-row, row) of U; block counts and rank are fixed."""
        fixed = "blocks of a BlastLinear are fixed (rows and columns within blocks are prunable)"
        return self._layout((Factor("v", 0, fixed), Factor("v", 1)), (Factor("u", 0, fixed), Factor("u", 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if layer_uses_ops(x):
            return self._add_bias(torch.ops.fxopt.blast(x, self.u, self.s, self.v))
        lead, b = x.shape[:-1], self.blocks
        y = blast_rank_major(x.reshape(-1, b, self.v.shape[1]), self.u, self.s, self.v)
        return self._add_bias(y.reshape(*lead, b * self.u.shape[1]))

    def to_dense(self) -> torch.Tensor:
        return uncut(torch.einsum("ijr,ipr,jqr->ijpq", self.s, self.u, self.v))
