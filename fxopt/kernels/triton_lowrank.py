"""Triton kernel of ``fxopt::lowrank`` for few tokens: ``U (V x)`` in one program per (token tile, output tile).

Each program computes its (tokens, r) intermediate ``h = V x`` chunk by chunk of the rank, in registers, and
accumulates ``U h``; h is never written. The programs share V through the cache, which is the right trade when the
tokens are few (decode) and the launch of a second GEMM costs more than re-reading V. Imported only on CUDA.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fxopt.kernels.triton_tiles import dot, exact_fp32, tile, token_tile


@triton.jit
def _lowrank_kernel(x_ptr, u_ptr, v_ptr, y_ptr, T, M, N, R, IEEE: tl.constexpr, BT: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr):
    ts = tl.program_id(0) * BT + tl.arange(0, BT)
    ms = tl.program_id(1) * BM + tl.arange(0, BM)
    acc = tl.zeros((BT, BM), dtype=tl.float32)
    for r0 in range(0, R, BR):
        rs = r0 + tl.arange(0, BR)
        h = tl.zeros((BT, BR), dtype=tl.float32)
        for k0 in range(0, N, BN):
            ks = k0 + tl.arange(0, BN)
            xt = tl.load(x_ptr + ts[:, None] * N + ks[None, :], mask=(ts[:, None] < T) & (ks[None, :] < N),
                         other=0.0)
            vt = tl.load(v_ptr + rs[None, :] * N + ks[:, None], mask=(rs[None, :] < R) & (ks[:, None] < N),
                         other=0.0)
            h += dot(xt, vt, IEEE)
        ut = tl.load(u_ptr + ms[None, :] * R + rs[:, None], mask=(rs[:, None] < R) & (ms[None, :] < M), other=0.0)
        hd = h.to(ut.dtype)  # the intermediate is rounded to the input dtype, as the torch path stores it
        acc += dot(hd, ut, IEEE)
    tl.store(y_ptr + ts[:, None] * M + ms[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(ts[:, None] < T) & (ms[None, :] < M))


def lowrank(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Launch the fused low-rank kernel on a 2-d input (meant for few tokens).

    Args:
        x: (tokens, n).
        u: (m, r).
        v: (r, n).

    Returns:
        (tokens, m).
    """
    x, u, v = x.contiguous(), u.contiguous(), v.contiguous()
    (t, n), (m, r) = x.shape, u.shape
    y = x.new_empty(t, m)
    bt, bm, bn, br = token_tile(t), tile(m, 64), tile(n, 64), tile(r, 32)
    grid = (triton.cdiv(t, bt), triton.cdiv(m, bm))
    _lowrank_kernel[grid](x, u, v, y, t, m, n, r, exact_fp32(x.dtype), bt, bm, bn, br)
    return y
