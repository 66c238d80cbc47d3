"""``fxopt::blockdiag_matmul``: a block-diagonal matmul with optional perfect shuffles of its input and output.

With b blocks ``weight[i]`` (p x q), the op maps x (..., b q) to y (..., b p), ``y_i = weight[i] x_i``. The
shuffles are the Monarch permutations fused into the index arithmetic, never applied as a separate copy:
``shuffle_in`` reads block j from the strided columns ``j, j + b, j + 2b, ...`` (the input in (q, b) order) and
``shuffle_out`` writes row s of block i to column ``s b + i`` (the output in (p, b) order).
"""

from __future__ import annotations

from typing import Any

import torch

from fxopt.kernels.dispatch import on_triton
from fxopt.kernels.orders import OrderCache, shape_key


def split_blocks(x: torch.Tensor, blocks: int, shuffle: bool) -> torch.Tensor:
    """The (tokens, b, size / b) block view of a 2-d ``x``, columns read in shuffled (size / b, b) order if asked.

    Args:
        x: (tokens, size).
        blocks: b, dividing size.
        shuffle: whether block j holds the columns ``j, j + b, ...``.

    Returns:
        A (tokens, b, size / b) view of ``x``.
    """
    t, size = x.shape
    return x.reshape(t, size // blocks, blocks).transpose(1, 2) if shuffle else x.reshape(t, blocks, size // blocks)


def join_blocks(y: torch.Tensor, shuffle: bool) -> torch.Tensor:
    """The (tokens, b p) matrix of a (tokens, b, p) block result, in (p, b) order when ``shuffle``."""
    t, b, p = y.shape
    return (y.transpose(1, 2) if shuffle else y).reshape(t, b * p)


def _einsum(x2: torch.Tensor, weight: torch.Tensor, shuffle_in: bool, shuffle_out: bool) -> torch.Tensor:
    y = torch.einsum("tbq,bpq->tbp", split_blocks(x2, weight.shape[0], shuffle_in), weight)
    return join_blocks(y, shuffle_out)


def _bmm(x2: torch.Tensor, weight: torch.Tensor, shuffle_in: bool, shuffle_out: bool) -> torch.Tensor:
    y = torch.bmm(split_blocks(x2, weight.shape[0], shuffle_in).transpose(0, 1), weight.mT).transpose(0, 1)
    return join_blocks(y, shuffle_out)


ORDERS = OrderCache({"einsum": _einsum, "bmm": _bmm})
"""The CPU contraction orders of the block product (tokens x blocks batched either way)."""


def blockdiag_reference(x: torch.Tensor, weight: torch.Tensor, shuffle_in: bool = False,
                        shuffle_out: bool = False) -> torch.Tensor:
    """The op's result in plain torch (one einsum), the reference tests and benchmarks compare against.

    Args:
        x: (..., b q).
        weight: (b, p, q).
        shuffle_in: read the input in (q, b) order.
        shuffle_out: write the output in (p, b) order.

    Returns:
        (..., b p).
    """
    return _einsum(x.reshape(-1, x.shape[-1]), weight, shuffle_in, shuffle_out).reshape(*x.shape[:-1], -1)


@torch.library.custom_op("fxopt::blockdiag_matmul", mutates_args=())
def blockdiag_matmul(x: torch.Tensor, weight: torch.Tensor, shuffle_in: bool = False,
                     shuffle_out: bool = False) -> torch.Tensor:
    """Block-diagonal matmul ``y_i = weight[i] x_i`` with the input and output perfect shuffles fused in.

    Runs the fastest of the torch contraction orders and, on CUDA, the Triton kernel
    (``fxopt.kernels.triton_blockdiag``), measured once per shape.

    Args:
        x: (..., b q) activations.
        weight: (b, p, q) diagonal blocks.
        shuffle_in: block j reads columns ``j, j + b, ...`` of x (x in (q, b) order).
        shuffle_out: row s of block i goes to column ``s b + i`` (y in (p, b) order).

    Returns:
        (..., b p).

    Example:
        >>> w = torch.randn(2, 3, 4)
        >>> torch.ops.fxopt.blockdiag_matmul(torch.randn(5, 8), w, False, True).shape
        torch.Size([5, 6])
    """
    x2, kernel = x.reshape(-1, x.shape[-1]), None
    if on_triton(x, weight):
        from fxopt.kernels import triton_blockdiag
        kernel = triton_blockdiag.blockdiag
    y2 = ORDERS((shape_key(x2, weight), shuffle_in, shuffle_out), x2, weight, shuffle_in, shuffle_out, kernel=kernel)
    return y2.reshape(*x.shape[:-1], -1)


@blockdiag_matmul.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, shuffle_in: bool = False, shuffle_out: bool = False) -> torch.Tensor:
    torch._check(x.shape[-1] == weight.shape[0] * weight.shape[2], lambda: "x's last dim must be blocks * q")
    return x.new_empty(*x.shape[:-1], weight.shape[0] * weight.shape[1])


def _setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    x, weight, shuffle_in, shuffle_out = inputs
    ctx.save_for_backward(x, weight)
    ctx.shuffles = (shuffle_in, shuffle_out)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    x, weight = ctx.saved_tensors
    shuffle_in, shuffle_out = ctx.shuffles
    grad_x = grad_w = None
    if ctx.needs_input_grad[0]:  # the transpose of a block-diagonal map is block-diagonal, shuffles swapped
        grad_x = blockdiag_matmul(grad, weight.mT.contiguous(), shuffle_out, shuffle_in)
    if ctx.needs_input_grad[1]:
        b = weight.shape[0]
        gb = split_blocks(grad.reshape(-1, grad.shape[-1]), b, shuffle_out)
        xb = split_blocks(x.reshape(-1, x.shape[-1]), b, shuffle_in)
        grad_w = torch.einsum("tbp,tbq->bpq", gb, xb)
    return grad_x, grad_w, None, None


blockdiag_matmul.register_autograd(_backward, setup_context=_setup)
