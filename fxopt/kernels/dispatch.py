"""When an op hands its work to a Triton kernel: CUDA tensors, with triton importable (imported lazily)."""

from __future__ import annotations

import functools
import importlib.util

import torch


@functools.cache
def triton_installed() -> bool:
    """Whether ``triton`` can be imported (looked up once, without importing it)."""
    return importlib.util.find_spec("triton") is not None


def on_triton(x: torch.Tensor) -> bool:
    """Whether an op on ``x`` runs its Triton kernel: ``x`` is a CUDA tensor and triton is installed.

    Args:
        x: the op's activation input.

    Returns:
        ``True`` for the Triton path, ``False`` for the torch path.
    """
    return x.device.type == "cuda" and triton_installed()
