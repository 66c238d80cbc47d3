"""``fxopt::lowrank``: ``y = U (V x)``, the two thin GEMMs of a low-rank layer as one op.

The candidates, timed once per shape: two ``F.linear`` calls, one with the product ``U V`` (worth it only when the
rank is close to the layer's width and the tokens many) and, on CUDA with few tokens, one Triton kernel computing
both products with the (tokens, r) intermediate on chip.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fxopt.kernels.dispatch import on_triton
from fxopt.kernels.orders import OrderCache, shape_key

FUSED_TOKENS = 64
"""Up to this many tokens the fused Triton kernel competes; above it two cuBLAS GEMMs are faster."""


def lowrank_reference(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The op's result in plain torch: ``F.linear(F.linear(x, v), u)``.

    Args:
        x: (..., n).
        u: (m, r).
        v: (r, n).

    Returns:
        (..., m).
    """
    return F.linear(F.linear(x, v), u)


def _product(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.linear(x, u @ v)


ORDERS = OrderCache({"thin": lowrank_reference, "product": _product})
"""The CPU contraction orders: two thin GEMMs, or the dense product first."""


@torch.library.custom_op("fxopt::lowrank", mutates_args=())
def lowrank(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Low-rank matmul ``y = U (V x)`` over the last dimension of x.

    Args:
        x: (..., n) activations.
        u: (m, r) left factor.
        v: (r, n) right factor.

    Returns:
        (..., m).

    Example:
        >>> torch.ops.fxopt.lowrank(torch.randn(5, 8), torch.randn(6, 2), torch.randn(2, 8)).shape
        torch.Size([5, 6])
    """
    x2, kernel = x.reshape(-1, x.shape[-1]), None
    if on_triton(x, u, v) and x2.shape[0] <= FUSED_TOKENS:
        from fxopt.kernels import triton_lowrank
        kernel = triton_lowrank.lowrank
    y2 = ORDERS(shape_key(x2, u, v), x2, u, v, kernel=kernel)
    return y2.reshape(*x.shape[:-1], u.shape[0])


@lowrank.register_fake
def _(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    torch._check(x.shape[-1] == v.shape[1], lambda: "x's last dim must be v's columns")
    return x.new_empty(*x.shape[:-1], u.shape[0])


def _setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    x, u, v = ctx.saved_tensors
    x2, g2 = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
    gh = g2 @ u  # the gradient at the (tokens, r) intermediate
    grad_x = (gh @ v).reshape(x.shape) if ctx.needs_input_grad[0] else None
    grad_u = g2.mT @ (x2 @ v.mT) if ctx.needs_input_grad[1] else None  # the intermediate, recomputed
    grad_v = gh.mT @ x2 if ctx.needs_input_grad[2] else None
    return grad_x, grad_u, grad_v


lowrank.register_autograd(_backward, setup_context=_setup)
