"""Triton kernels of ``fxopt::blast``: the block-column projection, then coupling and block-row projection fused.

Stage 1 is the block-diagonal kernel with ``V_j^T`` as blocks, writing z (tokens, b, r). Stage 2 runs one program
per (token tile, block-row i, output tile): for each rank chunk it forms ``w_i = sum_j s_ij * z_j`` in registers
and accumulates ``U_i w_i``. Neither the (b, b, tokens, r) tensor nor w is ever written. Imported only when an op
runs on CUDA.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fxopt.kernels.triton_blockdiag import blockdiag
from fxopt.kernels.triton_tiles import dot, exact_fp32, tile, token_tile


@triton.jit
def _couple_project_kernel(z_ptr, s_ptr, u_ptr, y_ptr, T, B, P, R, IEEE: tl.constexpr, BT: tl.constexpr,
                           BP: tl.constexpr, BR: tl.constexpr):
    i = tl.program_id(1)
    ts = tl.program_id(0) * BT + tl.arange(0, BT)
    ps = tl.program_id(2) * BP + tl.arange(0, BP)
    acc = tl.zeros((BT, BP), dtype=tl.float32)
    for r0 in range(0, R, BR):
        rs = r0 + tl.arange(0, BR)
        w = tl.zeros((BT, BR), dtype=tl.float32)
        for j in range(B):
            zt = tl.load(z_ptr + ts[:, None] * (B * R) + j * R + rs[None, :],
                         mask=(ts[:, None] < T) & (rs[None, :] < R), other=0.0)
            sv = tl.load(s_ptr + (i * B + j) * R + rs, mask=rs < R, other=0.0)
            w += zt.to(tl.float32) * sv.to(tl.float32)[None, :]
        ut = tl.load(u_ptr + i * P * R + ps[None, :] * R + rs[:, None], mask=(rs[:, None] < R) & (ps[None, :] < P),
                     other=0.0)
        wd = w.to(ut.dtype)
        acc += dot(wd, ut, IEEE)
    tl.store(y_ptr + ts[:, None] * (B * P) + i * P + ps[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(ts[:, None] < T) & (ps[None, :] < P))


def blast(xb: torch.Tensor, u: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Launch the two BLAST kernels.

    Args:
        xb: (tokens, b, q).
        u: (b, p, r).
        s: (b, b, r).
        v: (b, q, r).

    Returns:
        (tokens, b p).
    """
    t, b, q = xb.shape
    p, r = u.shape[1], u.shape[2]
    z = blockdiag(xb.reshape(t, b * q), v.mT, False, False)  # (tokens, b r): z_j = V_j^T x_j
    u, s = u.contiguous(), s.contiguous()
    y = xb.new_empty(t, b * p)
    bt, bp, br = token_tile(t), tile(p, 64), tile(r, 32)
    grid = (triton.cdiv(t, bt), b, triton.cdiv(p, bp))
    _couple_project_kernel[grid](z, s, u, y, t, b, p, r, exact_fp32(xb.dtype), bt, bp, br)
    return y
