"""Triton kernel of ``fxopt::monarch`` for few tokens: both factors in one program, the intermediate on chip.

One program per (token tile, block-row i, output tile): for each block-column j it computes the (tokens, r) piece
``h = R_ij x_j`` in registers and accumulates ``L_ij h``; the (tokens, cols, rows, r) intermediate is never
written, and the regrouping between the factors is the loop order. Imported only when an op runs on CUDA.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fxopt.kernels.triton_tiles import dot, exact_fp32, tile, token_tile


@triton.jit
def _monarch_kernel(x_ptr, right_ptr, left_ptr, y_ptr, T, ROWS, COLS, P, Q, R, SHUFFLE: tl.constexpr,
                    SHUFFLE_IN: tl.constexpr, IEEE: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr,
                    BQ: tl.constexpr, BR: tl.constexpr):
    i = tl.program_id(1)
    ts = tl.program_id(0) * BT + tl.arange(0, BT)
    ps = tl.program_id(2) * BP + tl.arange(0, BP)
    rs = tl.arange(0, BR)
    acc = tl.zeros((BT, BP), dtype=tl.float32)
    for j in range(COLS):
        h = tl.zeros((BT, BR), dtype=tl.float32)
        for k0 in range(0, Q, BQ):
            ks = k0 + tl.arange(0, BQ)
            ins = ks * COLS + j if SHUFFLE_IN else j * Q + ks
            xt = tl.load(x_ptr + ts[:, None] * (COLS * Q) + ins[None, :],
                         mask=(ts[:, None] < T) & (ks[None, :] < Q), other=0.0)
            rt = tl.load(right_ptr + j * (ROWS * R * Q) + (i * R + rs[None, :]) * Q + ks[:, None],
                         mask=(rs[None, :] < R) & (ks[:, None] < Q), other=0.0)
            h += dot(xt, rt, IEEE)
        lt = tl.load(left_ptr + i * P * (COLS * R) + ps[None, :] * (COLS * R) + j * R + rs[:, None],
                     mask=(rs[:, None] < R) & (ps[None, :] < P), other=0.0)
        hd = h.to(lt.dtype)  # the intermediate is rounded to the input dtype, as the torch path stores it
        acc += dot(hd, lt, IEEE)
    outs = ps * ROWS + i if SHUFFLE else i * P + ps
    tl.store(y_ptr + ts[:, None] * (ROWS * P) + outs[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(ts[:, None] < T) & (ps[None, :] < P))


def monarch(x: torch.Tensor, right: torch.Tensor, left: torch.Tensor, rank: int, shuffle: bool,
            shuffle_in: bool = False) -> torch.Tensor:
    """Launch the fused Monarch kernel on a 2-d input (meant for few tokens; ``rank`` up to ``FUSED_RANK``).

    Args:
        x: (tokens, cols q).
        right: (cols, rows r, q).
        left: (rows, p, cols r).
        rank: r.
        shuffle: write y in (p, rows) order.
        shuffle_in: read x in (q, cols) order.

    Returns:
        (tokens, rows p).
    """
    x, right, left = x.contiguous(), right.contiguous(), left.contiguous()
    t, cols, q = x.shape[0], right.shape[0], right.shape[2]
    rows, p = left.shape[0], left.shape[1]
    y = x.new_empty(t, rows * p)
    bt, bp, bq, br = token_tile(t), tile(p, 64), tile(q, 64), tile(rank, 128)
    grid = (triton.cdiv(t, bt), rows, triton.cdiv(p, bp))
    _monarch_kernel[grid](x, right, left, y, t, rows, cols, p, q, rank, shuffle, shuffle_in, exact_fp32(x.dtype), bt,
                          bp, bq, br)
    return y
