"""``fxopt::blast``: a BLAST matmul (Lee et al., 2024) that never forms the (b, b, tokens, r) tensor.

With b blocks, ``u`` (b, p, r), ``s`` (b, b, r) and ``v`` (b, q, r): project per block-column
``z_j = V_j^T x_j``, couple diagonally ``w_i = sum_j s_ij * z_j``, project per block-row ``y_i = U_i w_i``.
The intermediates are (tokens, b, r), never (b, b, tokens, r). On CUDA the projection runs as the block-diagonal
Triton kernel and one fused kernel couples and projects (``w`` stays on chip); it competes with the torch orders,
timed once per shape.
"""

from __future__ import annotations

from typing import Any

import torch

from fxopt.kernels.dispatch import on_triton
from fxopt.kernels.orders import OrderCache, shape_key


def _einsum(xb: torch.Tensor, u: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    z = torch.einsum("tjq,jqr->tjr", xb, v)
    w = torch.einsum("tjr,ijr->tir", z, s)
    return torch.einsum("tir,ipr->tip", w, u)


def blast_rank_major(xb: torch.Tensor, u: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The op's ``rank_major`` order in plain torch: three bmm, the coupling batched over the rank.

    ``fxopt.structured.blast.BlastLinear``'s plain-torch path runs it directly (no custom-op dispatch).

    Args:
        xb: (tokens, b, q) blocked activations.
        u: (b, p, r).
        s: (b, b, r).
        v: (b, q, r).

    Returns:
        (tokens, b, p).
    """
    z = torch.bmm(xb.transpose(0, 1), v).permute(2, 1, 0)  # (r, t, j)
    w = torch.bmm(z, s.permute(2, 1, 0))  # (r, t, i): one (t x b) @ (b x b) matmul per rank
    return torch.bmm(w.permute(2, 1, 0), u.mT).transpose(0, 1)


ORDERS = OrderCache({"einsum": _einsum, "rank_major": blast_rank_major})
"""The CPU contraction orders: three einsums, or three bmm with the coupling batched over the rank."""


def blast_reference(x: torch.Tensor, u: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The op's result in plain torch (three einsums), the reference tests and benchmarks compare against.

    Args:
        x: (..., b q).
        u: (b, p, r).
        s: (b, b, r).
        v: (b, q, r).

    Returns:
        (..., b p).
    """
    xb = x.reshape(-1, v.shape[0], v.shape[1])
    return _einsum(xb, u, s, v).reshape(*x.shape[:-1], -1)


@torch.library.custom_op("fxopt::blast", mutates_args=())
def blast(x: torch.Tensor, u: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """BLAST matmul ``y_i = U_i sum_j diag(s_ij) V_j^T x_j``.

    Args:
        x: (..., b q) activations.
        u: (b, p, r) bases shared along each block-row.
        s: (b, b, r) coupling vectors, one per block.
        v: (b, q, r) bases shared along each block-column.

    Returns:
        (..., b p).

    Example:
        >>> u, s, v = torch.randn(2, 3, 4), torch.randn(2, 2, 4), torch.randn(2, 5, 4)
        >>> torch.ops.fxopt.blast(torch.randn(7, 10), u, s, v).shape
        torch.Size([7, 6])
    """
    xb, kernel = x.reshape(-1, v.shape[0], v.shape[1]), None
    if on_triton(x, u, s, v):
        from fxopt.kernels import triton_blast
        kernel = triton_blast.blast
    y = ORDERS(shape_key(xb, u, s, v), xb, u, s, v, kernel=kernel)
    return y.reshape(*x.shape[:-1], -1)


@blast.register_fake
def _(x: torch.Tensor, u: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    torch._check(x.shape[-1] == v.shape[0] * v.shape[1], lambda: "x's last dim must be blocks * q")
    return x.new_empty(*x.shape[:-1], u.shape[0] * u.shape[1])


def _setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    x, u, s, v = ctx.saved_tensors
    b = v.shape[0]
    xb, gy = x.reshape(-1, b, v.shape[1]), grad.reshape(-1, b, u.shape[1])
    z = torch.einsum("tjq,jqr->tjr", xb, v)  # the (tokens, b, r) intermediates, recomputed
    w = torch.einsum("tjr,ijr->tir", z, s)
    gw = torch.einsum("tip,ipr->tir", gy, u)
    gz = torch.einsum("tir,ijr->tjr", gw, s)
    grad_x = torch.einsum("tjr,jqr->tjq", gz, v).reshape(x.shape) if ctx.needs_input_grad[0] else None
    grad_u = torch.einsum("tip,tir->ipr", gy, w) if ctx.needs_input_grad[1] else None
    grad_s = torch.einsum("tir,tjr->ijr", gw, z) if ctx.needs_input_grad[2] else None
    grad_v = torch.einsum("tjr,tjq->jqr", gz, xb) if ctx.needs_input_grad[3] else None
    return grad_x, grad_u, grad_s, grad_v


blast.register_autograd(_backward, setup_context=_setup)
