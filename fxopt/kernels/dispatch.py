"""Which path runs: the Triton kernel inside an op, and the fxopt op or plain torch inside a structured layer.

Two rules live here, one per level:

- ``on_triton``: an ``fxopt::`` op runs its Triton kernel on CUDA tensors of one kernel dtype (triton imported
  lazily), and its torch contraction orders otherwise.
- ``layer_uses_ops``: a structured layer (``fxopt.structured``) calls the ``torch.ops.fxopt`` op on CUDA tensors,
  where the fused kernels realise the FLOP saving, and its plain-torch forward everywhere else. On the CPU the op
  only picks among the same torch contractions the layer runs, plus a custom-op dispatch per call, and
  ``python -m benchmarks.kernels --layers`` measured it no faster than the plain forward (``docs/kernels.md``,
  "Dispatch"); fake and meta tensors (shape propagation, the speed gate's predictions) take the plain path too.

``forced_path`` overrides the layer rule inside a ``with`` block, for tests and benchmarks; it restores the
previous choice on exit, exceptions included.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Iterator
from typing import Literal

import torch

Path = Literal["ops", "torch"]
PATHS: tuple[Path, ...] = ("ops", "torch")
"""The layer paths: ``"ops"`` calls ``torch.ops.fxopt``, ``"torch"`` runs the layer's plain-torch forward."""

_FORCED: dict[str, Path | None] = {"path": None}
"""The path ``forced_path`` set, ``None`` outside it (a plain dict: torch.compile guards on its value)."""


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


def layer_uses_ops(x: torch.Tensor) -> bool:
    """Whether a structured layer called on ``x`` runs its ``torch.ops.fxopt`` op rather than plain torch.

    The rule: the path ``forced_path`` set, if any; else the op on CUDA tensors and plain torch on every other
    device (the CPU measurement behind it is in ``docs/kernels.md``).

    Args:
        x: the layer's input.

    Returns:
        ``True`` for the op path, ``False`` for the plain-torch path.

    Example:
        >>> layer_uses_ops(torch.ones(2, 4))
        False
        >>> with forced_path("ops"):
        ...     layer_uses_ops(torch.ones(2, 4))
        True
    """
    forced = _FORCED["path"]
    if forced is not None:
        return forced == "ops"
    return x.device.type == "cuda"


@contextlib.contextmanager
def forced_path(path: Path | None) -> Iterator[None]:
    """Run structured layers on ``path`` inside the block, whatever their inputs' device.

    Args:
        path: ``"ops"``, ``"torch"``, or ``None`` for the device rule of ``layer_uses_ops``.

    Yields:
        Nothing; the previous choice is restored on exit.

    Raises:
        ValueError: ``path`` is not one of ``PATHS`` or ``None``.
    """
    if path is not None and path not in PATHS:
        raise ValueError(f"unknown layer path {path!r}; use one of {', '.join(PATHS)} or None (the device rule)")
    previous = _FORCED["path"]
    _FORCED["path"] = path
    try:
        yield
    finally:
        _FORCED["path"] = previous
