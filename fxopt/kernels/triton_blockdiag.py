"""Triton kernel of ``fxopt::blockdiag_matmul``: one program per (token tile, block, output tile).

The input and output perfect shuffles are strided loads and stores (column ``k b + j`` instead of ``j q + k``),
so a Monarch permutation costs no extra pass over memory. Imported only when an op runs on CUDA.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fxopt.kernels.triton_tiles import dot, exact_fp32, tile, token_tile


@triton.jit
def _blockdiag_kernel(x_ptr, w_ptr, y_ptr, T, B, P, Q, SHUFFLE_IN: tl.constexpr, SHUFFLE_OUT: tl.constexpr,
                      IEEE: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr, BQ: tl.constexpr):
    blk = tl.program_id(1)
    ts = tl.program_id(0) * BT + tl.arange(0, BT)
    ps = tl.program_id(2) * BP + tl.arange(0, BP)
    acc = tl.zeros((BT, BP), dtype=tl.float32)
    for k0 in range(0, Q, BQ):
        ks = k0 + tl.arange(0, BQ)
        cols = ks * B + blk if SHUFFLE_IN else blk * Q + ks
        xt = tl.load(x_ptr + ts[:, None] * (B * Q) + cols[None, :], mask=(ts[:, None] < T) & (ks[None, :] < Q),
                     other=0.0)
        wt = tl.load(w_ptr + blk * P * Q + ps[None, :] * Q + ks[:, None], mask=(ps[None, :] < P) & (ks[:, None] < Q),
                     other=0.0)
        acc += dot(xt, wt, IEEE)
    outs = ps * B + blk if SHUFFLE_OUT else blk * P + ps
    tl.store(y_ptr + ts[:, None] * (B * P) + outs[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(ts[:, None] < T) & (ps[None, :] < P))


def blockdiag(x: torch.Tensor, weight: torch.Tensor, shuffle_in: bool, shuffle_out: bool) -> torch.Tensor:
    """Launch the block-diagonal kernel on a 2-d input.

    Args:
        x: (tokens, b q), on the kernel's device, same dtype as ``weight``.
        weight: (b, p, q).
        shuffle_in: read x in (q, b) order.
        shuffle_out: write y in (p, b) order.

    Returns:
        (tokens, b p).
    """
    x, weight = x.contiguous(), weight.contiguous()
    t, (b, p, q) = x.shape[0], weight.shape
    y = x.new_empty(t, b * p)
    bt, bp, bq = token_tile(t), tile(p, 64), tile(q, 32)
    grid = (triton.cdiv(t, bt), b, triton.cdiv(p, bp))
    _blockdiag_kernel[grid](x, weight, y, t, b, p, q, shuffle_in, shuffle_out, exact_fp32(x.dtype), bt, bp, bq)
    return y
