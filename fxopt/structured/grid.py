"""Block-low-rank grids: the closed-form fit shared by low-rank, Monarch and BTT, and the grid layer itself.

A grid structure cuts W (m x n), after an optional fixed shuffle of its rows, into ``rows x cols`` blocks of
``p x q`` (``m = rows p``, ``n = cols q``), each block of rank r. Low-rank is the 1 x 1 grid, Monarch with b blocks
the b x b grid, and 2-core BTT the ``m1 x n0`` grid of ``m0 x n1`` blocks. The best fit in Frobenius norm is the
truncated SVD of every block (Eckart-Young per block, the blocks being independent), computed as one batched SVD
on the weight's device; its error is known from the discarded singular values alone.

The grid layer (``GridLinear``) stores, for block (i, j) = ``L_ij R_ij``, the left factors of block-row i side by side
(``left[i] = [L_i0 ... L_i,cols-1]``, p x cols r) and the right factors of block-column j stacked
(``right[j] = [R_0j; ...; R_rows-1,j]``, rows r x q): these are the two cores of a 2-core BTT, and the two
block-diagonal factors of Monarch.
"""

from __future__ import annotations

import abc
import math

import torch
import torch.nn as nn

from fxopt.kernels.dispatch import layer_uses_ops
from fxopt.kernels.monarch import monarch_bmm
from fxopt.ops.structured import Factor, FactorLayout
from fxopt.structured.base import Approximation, Structure, StructuredLinear
from fxopt.structured.calibration import InputTransform
from fxopt.structured.errors import StructureError, divisors


def cut(weight: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The (rows, cols, p, q) view of W's blocks: ``cut(W)[i, j] = W[i p:(i+1) p, j q:(j+1) q]``."""
    m, n = weight.shape
    return weight.reshape(rows, m // rows, cols, n // cols).transpose(1, 2)


def uncut(blocks: torch.Tensor) -> torch.Tensor:
    """The (m, n) matrix whose ``cut`` is ``blocks`` (rows, cols, p, q)."""
    rows, cols, p, q = blocks.shape
    return blocks.transpose(1, 2).reshape(rows * p, cols * q)


def tail_errors(sigma: torch.Tensor) -> torch.Tensor:
    """Relative error of keeping ranks 0..k of every block, from the blocks' singular values.

    Args:
        sigma: (..., k) singular values of each block, in decreasing order.

    Returns:
        (k + 1,) float64 errors ``sqrt(sum of discarded sigma^2 / sum of all sigma^2)``; entry r keeps rank r.
    """
    per_rank = sigma.reshape(-1, sigma.shape[-1]).double().square().sum(0)
    tail = torch.cat([per_rank.flip(0).cumsum(0).flip(0), per_rank.new_zeros(1)])
    total = tail[0]
    return (tail / total).sqrt() if total > 0 else torch.zeros_like(tail)


def group_rows(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Rows reordered from interleaved order ``s * groups + i`` to grouped order ``i * p + s`` (p rows per group)."""
    m, n = weight.shape
    return weight.reshape(m // groups, groups, n).transpose(0, 1).reshape(m, n)


def interleave_rows(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The inverse of ``group_rows``: grouped order ``i * p + s`` back to interleaved order ``s * groups + i``."""
    m, n = weight.shape
    return weight.reshape(groups, m // groups, n).transpose(0, 1).reshape(m, n)


class GridLayer(StructuredLinear):
    """A structured layer whose parameters can be loaded from the truncated SVD factors of a grid's blocks."""

    @abc.abstractmethod
    def load_blocks(self, left: torch.Tensor, right: torch.Tensor) -> None:
        """Set the factors so that block (i, j) is ``left[i, j] @ right[i, j]``.

        Args:
            left: (rows, cols, p, r) left factors.
            right: (rows, cols, r, q) right factors.
        """


class GridStructure(Structure):
    """A structure that is a block-low-rank grid (rank r per block) after an optional shuffle of W's rows.

    Subclasses are frozen dataclasses with a ``rank`` field; they give the grid for a shape and build the layer.
    """

    rank: int
    shuffle: bool = False

    @abc.abstractmethod
    def grid(self, out_features: int, in_features: int) -> tuple[int, int]:
        """The (rows, cols) block counts for an m x n weight (the shape has been checked)."""

    def input_groups(self, out_features: int, in_features: int) -> int:
        """The grid's block-columns: activation-aware whitening is block-diagonal along them."""
        return self.grid(out_features, in_features)[1]

    @abc.abstractmethod
    def check_grid(self, out_features: int, in_features: int) -> None:
        """Raise ``StructureError`` (listing the counts that would work) unless the grid divides the shape."""

    def check(self, out_features: int, in_features: int) -> None:
        """Raise ``StructureError`` unless the grid divides the shape and ``1 <= rank <= min(p, q)``."""
        self.check_grid(out_features, in_features)
        rows, cols = self.grid(out_features, in_features)
        p, q = out_features // rows, in_features // cols
        if not 1 <= self.rank <= min(p, q):
            raise StructureError(
                f"{self.layer_name}: rank {self.rank} is impossible for {p}x{q} blocks ({rows}x{cols} grid of a "
                f"{out_features}x{in_features} weight); use 1 <= rank <= {min(p, q)}")

    def cut_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """W's (rows, cols, p, q) blocks, rows unshuffled first when the structure shuffles its outputs."""
        rows, cols = self.grid(*weight.shape)
        return cut(group_rows(weight, rows) if self.shuffle else weight, rows, cols)

    def fit_weight(self, weight: torch.Tensor, transform: InputTransform | None) -> Approximation:
        """Truncated SVD of every block of ``W T`` (one batched SVD), T undone in the right factors."""
        blocks = self.cut_weight(weight)
        scaled = blocks if transform is None else transform.scale(blocks)
        u, sigma, vh = torch.linalg.svd(scaled, full_matrices=False)
        root = sigma[..., :self.rank].sqrt()
        left = u[..., :self.rank] * root[..., None, :]
        right = root[..., :, None] * vh[..., :self.rank, :]
        if transform is not None:
            right = transform.unscale(right)
        layer = self.build(*weight.shape, bias=False, device=weight.device, dtype=weight.dtype)
        assert isinstance(layer, GridLayer)
        layer.load_blocks(left, right)
        error = float(tail_errors(sigma)[self.rank])
        return Approximation(layer, error, error)

    def errors_by_rank(self, weight: torch.Tensor, transform: InputTransform | None) -> torch.Tensor:
        """Relative objective error at ranks 0..min(p, q), from the singular values of one batched SVD."""
        blocks = self.cut_weight(weight)
        return tail_errors(torch.linalg.svdvals(blocks if transform is None else transform.scale(blocks)))


class GridLinear(GridLayer):
    """A ``rows x cols`` grid of rank-r blocks: ``y_i = sum_j L_ij (R_ij x_j)``, output rows optionally shuffled.

    Forward (per token, never forming W): ``z_j = right[j] x_j`` (all block-columns, one batched matmul), regroup
    z from (j, i) to (i, j) order, ``y_i = left[i] [z_i0; ...; z_i,cols-1]`` (one batched matmul). Cost per token:
    ``r (rows n + cols m)`` multiply-adds, the same number of parameters. Where ``layer_uses_ops`` says so (CUDA
    tensors) the forward is one ``torch.ops.fxopt.monarch`` call, else the op's ``bmm`` order in plain torch
    (``fxopt.kernels.monarch.monarch_bmm``: fastest on the CPU from 1 to 256 tokens, without the op's dispatch).

    ``in_blocked`` (set by the ``permute`` pass, never by a fit) says the input arrives in (column, block-column)
    order: block-column j is the strided columns ``j, j + cols, ...``, which is how a shuffled grid layer with
    ``cols`` rows per block writes its output when its shuffle is dropped. The layer reads that order directly (a
    strided read on both paths, ``shuffle_in``), never through a separate copy.

    Args:
        in_features: n, divisible by ``cols``.
        out_features: m, divisible by ``rows``.
        rows: block-rows (Monarch: b; BTT: m1).
        cols: block-columns (Monarch: b; BTT: n0).
        rank: rank of every block.
        shuffle: output rows in (row-in-block, block) order ``s * rows + i`` (Dao et al.'s final permutation P).
        bias: whether the layer has a bias.
        device: where the parameters live (``"meta"`` to plan costs without memory).
        dtype: the parameters' dtype.
    """

    def __init__(self, in_features: int, out_features: int, rows: int, cols: int, rank: int, shuffle: bool = False,
                 bias: bool = True, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(out_features, bias, device, dtype)
        self.rows, self.cols, self.rank, self.shuffle = rows, cols, rank, shuffle
        self.in_blocked = False
        p, q = out_features // rows, in_features // cols
        self.left = nn.Parameter(torch.empty(rows, p, cols * rank, device=device, dtype=dtype))
        self.right = nn.Parameter(torch.empty(cols, rows * rank, q, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random factors that keep the output's scale near a dense layer's (each factor 1/sqrt(fan-in))."""
        nn.init.normal_(self.right, std=1 / math.sqrt(self.right.shape[-1]))
        nn.init.normal_(self.left, std=1 / math.sqrt(self.left.shape[-1]))

    @property
    def factor_layout(self) -> FactorLayout:
        """Inputs are (block-column, column) of ``right``, outputs (block-row, row) of ``left`` (row first when
        shuffled); the block counts are fixed, rows and columns within blocks are channels."""
        name = type(self).__name__
        block_rows = Factor("left", 0, f"block-rows of a {name} are fixed (rows within blocks are prunable)")
        block_cols = Factor("right", 0, f"block-columns of a {name} are fixed (columns within blocks are prunable)")
        rows = (Factor("left", 1), block_rows) if self.shuffle else (block_rows, Factor("left", 1))
        cols = (Factor("right", 2), block_cols) if self.in_blocked else (block_cols, Factor("right", 2))
        return self._layout(cols, rows)

    def _left4(self) -> torch.Tensor:
        return self.left.reshape(self.rows, -1, self.cols, self.rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, x2 = x.shape[:-1], x.reshape(-1, x.shape[-1])
        product = torch.ops.fxopt.monarch if layer_uses_ops(x) else monarch_bmm
        y = product(x2, self.right, self.left, self.rank, self.shuffle, self.in_blocked)
        return self._add_bias(y.reshape(*lead, y.shape[-1]))

    def to_dense(self) -> torch.Tensor:
        right = self.right.reshape(self.cols, self.rows, self.rank, -1)
        weight = uncut(torch.einsum("ipjr,jirq->ijpq", self._left4(), right))
        weight = interleave_rows(weight, self.rows) if self.shuffle else weight
        return interleave_rows(weight.T, self.cols).T if self.in_blocked else weight

    def load_blocks(self, left: torch.Tensor, right: torch.Tensor) -> None:
        with torch.no_grad():
            self.left.copy_(left.permute(0, 2, 1, 3).reshape(self.left.shape))
            self.right.copy_(right.transpose(0, 1).reshape(self.right.shape))


def checked_split(name: str, what: str, shape: tuple[int, int], outer: int | None) -> int:
    """The outer factor of one dimension ``size = outer * inner``: ``outer`` if it divides, else the most even split.

    Args:
        name: the layer, for the message.
        what: ``"m1"`` (splits out_features, ``shape[0]``) or ``"n0"`` (splits in_features, ``shape[1]``).
        shape: the (out_features, in_features) weight shape.
        outer: the requested outer factor, or ``None`` for the largest divisor ``<= sqrt(size)``.

    Returns:
        The outer factor.

    Raises:
        StructureError: ``outer`` does not divide the dimension; the message lists its divisors.
    """
    axis = 0 if what == "m1" else 1
    size = shape[axis]
    if outer is None:
        return max(d for d in range(1, math.isqrt(size) + 1) if size % d == 0)
    if outer < 1 or size % outer:
        raise StructureError(f"{name}: {what}={outer} does not divide {('out', 'in')[axis]}_features={size} of the "
                             f"{shape[0]}x{shape[1]} weight; use one of {divisors(size)}")
    return outer
