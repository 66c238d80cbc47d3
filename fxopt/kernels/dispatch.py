"""When an op hands its work to a Triton kernel: CUDA tensors, with triton importable (imported lazily)."""

from __future__ import annotations

import functools
import importlib.util

import torch


@functools.cache
def triton_installed() -> bool:
    """Whether ``triton`` can be imported (looked up once, without importing it)."""
    return importlib.util.find_spec("triton") is not None


KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
"""The dtypes the Triton kernels take (float64 and mixed dtypes stay on the torch path)."""


def on_triton(*tensors: torch.Tensor) -> bool:
    """Whether an op on ``tensors`` runs its Triton kernel: CUDA tensors of one kernel dtype, triton installed.

    Args:
        *tensors: the op's tensor inputs, activations first.

    Returns:
        ``True`` for the Triton path, ``False`` for the torch path.
    """
    x = tensors[0]
    return (x.device.type == "cuda" and x.dtype in KERNEL_DTYPES and all(t.dtype == x.dtype for t in tensors)
            and triton_installed())
