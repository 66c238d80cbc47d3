"""Tile sizes and the tile product shared by the Triton kernels (``tl.dot`` needs every tile dimension to be at least
16)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def tile(size: int, largest: int) -> int:
    """The power-of-two tile covering ``size`` (at least 16, at most ``largest``).

    Args:
        size: the extent of the dimension.
        largest: the cap (registers and shared memory bound the tile).

    Returns:
        A power of two in [16, largest].
    """
    return max(16, min(largest, triton.next_power_of_2(size)))


def token_tile(tokens: int) -> int:
    """Token tile: 16 rows for decode-sized batches, 64 otherwise."""
    return 16 if tokens <= 16 else 64


def exact_fp32(dtype: torch.dtype) -> bool:
    """Whether the kernel's dots run in IEEE fp32 (fp32 inputs, matching torch's default of no TF32)."""
    return dtype == torch.float32


@triton.jit
def dot(a, b, IEEE: tl.constexpr):
    """``tl.dot(a, b)``; in IEEE fp32, without TF32, when ``IEEE`` (``exact_fp32`` says when)."""
    if IEEE:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out
