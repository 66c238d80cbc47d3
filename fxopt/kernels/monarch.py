"""``fxopt::monarch``: a block-low-rank grid (Monarch, 2-core BTT) as two block-diagonal factors and a regrouping.

The layout is ``fxopt.structured.grid.GridLinear``'s: ``right`` (cols, rows r, q) holds the right factors of
block-column j stacked, ``left`` (rows, p, cols r) the left factors of block-row i side by side. Per token,
``z_j = right[j] x_j`` (all cols blocks), the (tokens, cols, rows, r) intermediate is regrouped to (rows, cols) order
and ``y_i = left[i] [z_i0; ...]``; ``shuffle`` writes the output in (p, rows) order (Dao et al.'s final P) and
``shuffle_in`` reads the input in (q, cols) order (block-column j from the strided columns ``j, j + cols, ...``: the
blocked output of a shuffled layer whose shuffle the ``permute`` pass dropped), both fused into the index arithmetic.
Candidates, timed once per shape: two einsums, two bmm and, on CUDA with few tokens, one Triton kernel that keeps
the intermediate on chip.
"""

from __future__ import annotations

from typing import Any

import torch

from fxopt.kernels.blockdiag import join_blocks, split_blocks
from fxopt.kernels.dispatch import on_triton
from fxopt.kernels.orders import OrderCache, shape_key

FUSED_TOKENS = 64
"""Up to this many tokens the fused Triton kernel competes; above it two batched cuBLAS GEMMs are faster."""
FUSED_RANK = 128
"""The largest rank the fused kernel holds on chip (one tile of the intermediate per block)."""


def _einsum(x2: torch.Tensor, right: torch.Tensor, left: torch.Tensor, rank: int, shuffle: bool,
            shuffle_in: bool = False) -> torch.Tensor:
    cols, rows = right.shape[0], left.shape[0]
    xb = split_blocks(x2, cols, shuffle_in)
    z = torch.einsum("tjq,jkq->tjk", xb, right).reshape(x2.shape[0], cols, rows, rank)
    return join_blocks(torch.einsum("tjir,ipjr->tip", z, left.reshape(rows, -1, cols, rank)), shuffle)


def monarch_bmm(x2: torch.Tensor, right: torch.Tensor, left: torch.Tensor, rank: int, shuffle: bool = False,
                shuffle_in: bool = False) -> torch.Tensor:
    """The op's ``bmm`` order in plain torch: two batched matmuls over the blocks, one regrouping copy between.

    The structured layers' plain-torch path (``fxopt.structured.grid.GridLinear``) runs it directly: no custom-op
    dispatch, autograd through the bmm calls, the same ATen ops under fake tensors as on real ones.

    Args:
        x2: (tokens, cols q).
        right: (cols, rows r, q).
        left: (rows, p, cols r).
        rank: r.
        shuffle: output in (p, rows) order.
        shuffle_in: input in (q, cols) order.

    Returns:
        (tokens, rows p).
    """
    cols, rows, t = right.shape[0], left.shape[0], x2.shape[0]
    z = torch.bmm(split_blocks(x2, cols, shuffle_in).transpose(0, 1), right.mT)  # (cols, t, rows r)
    z = z.reshape(cols, t, rows, rank).permute(2, 1, 0, 3).reshape(rows, t, cols * rank)
    return join_blocks(torch.bmm(z, left.mT).transpose(0, 1), shuffle)


ORDERS = OrderCache({"einsum": _einsum, "bmm": monarch_bmm})
"""The CPU contraction orders: two einsums over (tokens, blocks), or two bmm over the blocks."""


def monarch_reference(x: torch.Tensor, right: torch.Tensor, left: torch.Tensor, rank: int,
                      shuffle: bool = False, shuffle_in: bool = False) -> torch.Tensor:
    """The op's result in plain torch (two einsums), the reference tests and benchmarks compare against.

    The arguments are ``monarch_bmm``'s, except that ``x`` may have any leading dimensions: (..., cols q) gives
    (..., rows p).
    """
    return _einsum(x.reshape(-1, x.shape[-1]), right, left, rank, shuffle, shuffle_in).reshape(*x.shape[:-1], -1)


@torch.library.custom_op("fxopt::monarch", mutates_args=())
def monarch(x: torch.Tensor, right: torch.Tensor, left: torch.Tensor, rank: int,
            shuffle: bool = False, shuffle_in: bool = False) -> torch.Tensor:
    """Monarch / 2-core BTT matmul: block-diagonal ``right``, regrouping, block-diagonal ``left``.

    Args:
        x: (..., cols q) activations.
        right: (cols, rows r, q), the right factors of each block-column stacked.
        left: (rows, p, cols r), the left factors of each block-row side by side.
        rank: r, the rank of every block.
        shuffle: write the output in (p, rows) order (``M = P L P^T R``).
        shuffle_in: block-column j reads columns ``j, j + cols, ...`` of x (x in (q, cols) order).

    Returns:
        (..., rows p).

    Example:
        >>> right, left = torch.randn(2, 4, 3), torch.randn(2, 5, 4)
        >>> torch.ops.fxopt.monarch(torch.randn(7, 6), right, left, 2, False).shape
        torch.Size([7, 10])
    """
    x2, kernel = x.reshape(-1, x.shape[-1]), None
    if on_triton(x, right, left) and x2.shape[0] <= FUSED_TOKENS and rank <= FUSED_RANK:
        from fxopt.kernels import triton_monarch
        kernel = triton_monarch.monarch
    y2 = ORDERS((shape_key(x2, right, left), rank, shuffle, shuffle_in), x2, right, left, rank, shuffle, shuffle_in,
                kernel=kernel)
    return y2.reshape(*x.shape[:-1], -1)


@monarch.register_fake
def _(x: torch.Tensor, right: torch.Tensor, left: torch.Tensor, rank: int, shuffle: bool = False,
      shuffle_in: bool = False) -> torch.Tensor:
    torch._check(x.shape[-1] == right.shape[0] * right.shape[2], lambda: "x's last dim must be cols * q")
    return x.new_empty(*x.shape[:-1], left.shape[0] * left.shape[1])


def _setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    x, right, left, rank, shuffle, shuffle_in = inputs
    ctx.save_for_backward(x, right, left)
    ctx.rank, ctx.shuffle, ctx.shuffle_in = rank, shuffle, shuffle_in


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    x, right, left = ctx.saved_tensors
    cols, rows, r = right.shape[0], left.shape[0], ctx.rank
    xb = split_blocks(x.reshape(-1, cols * right.shape[2]), cols, ctx.shuffle_in)
    t = xb.shape[0]
    g = grad.reshape(t, -1)
    gy = g.reshape(t, -1, rows).transpose(1, 2) if ctx.shuffle else g.reshape(t, rows, -1)
    left4 = left.reshape(rows, -1, cols, r)
    z = torch.einsum("tjq,jkq->tjk", xb, right).reshape(t, cols, rows, r)  # recomputed, not stored
    gz = torch.einsum("tip,ipjr->tjir", gy, left4).reshape(t, cols, rows * r)
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = join_blocks(torch.einsum("tjk,jkq->tjq", gz, right), ctx.shuffle_in).reshape(x.shape)
    grad_right = torch.einsum("tjk,tjq->jkq", gz, xb) if ctx.needs_input_grad[1] else None
    grad_left = torch.einsum("tip,tjir->ipjr", gy, z).reshape(left.shape) if ctx.needs_input_grad[2] else None
    return grad_x, grad_right, grad_left, None, None, None


monarch.register_autograd(_backward, setup_context=_setup)
