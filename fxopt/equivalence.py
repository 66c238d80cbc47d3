"""Numerical comparison of two modules' outputs, with fxopt's tolerances in one place.

The pass manager's checks use it; ``fxopt.testing`` re-exports ``assert_equivalent`` and ``TOLERANCES`` for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

# (rtol, atol relative to the reference's largest magnitude) per dtype.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-9),
    torch.float32: (1e-4, 1e-5),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (5e-3, 5e-3),
}


@dataclass(frozen=True)
class Difference:
    """How far apart two outputs are: the largest absolute error and the reference's scale."""

    max_abs: float
    scale: float

    @property
    def relative(self) -> float:
        """Largest absolute error divided by the reference's largest magnitude."""
        return self.max_abs / max(self.scale, 1e-30)


def tensors_of(value: Any) -> list[torch.Tensor]:
    """Every floating or integer tensor in a (nested) output, in pytree order."""
    if hasattr(value, "to_tuple"):
        value = value.to_tuple()
    leaves, _ = torch.utils._pytree.tree_flatten(value)
    return [t for t in leaves if isinstance(t, torch.Tensor)]


def run(module: torch.nn.Module, inputs: Sequence[Any]) -> list[torch.Tensor]:
    """Run ``module`` without gradients and return its output tensors."""
    with torch.no_grad():
        return tensors_of(module(*inputs))


def compare(reference: Sequence[torch.Tensor], other: Sequence[torch.Tensor]) -> Difference:
    """Largest absolute difference and reference scale over matching outputs; shapes must agree."""
    if len(reference) != len(other):
        raise AssertionError(f"{len(reference)} outputs vs {len(other)}")
    worst, scale = 0.0, 0.0
    for r, o in zip(reference, other):
        if r.shape != o.shape:
            raise AssertionError(f"output shape {tuple(o.shape)} differs from {tuple(r.shape)}")
        if not r.is_floating_point():
            if not torch.equal(r, o):
                raise AssertionError("integer outputs differ")
            continue
        worst = max(worst, (r.double() - o.double()).abs().max().item() if r.numel() else 0.0)
        scale = max(scale, r.double().abs().max().item() if r.numel() else 0.0)
    return Difference(worst, scale)


def assert_equivalent(reference: torch.nn.Module, other: torch.nn.Module, inputs: Sequence[Any],
                      rtol: float | None = None, atol: float | None = None) -> Difference:
    """Assert that two modules compute the same outputs on ``inputs`` within the dtype's tolerance.

    The tolerance is ``atol + rtol * |reference|`` elementwise, with ``atol`` scaled by the reference's
    largest magnitude so that large activations are not held to an absolute 1e-5.

    Returns:
        The measured Difference.

    Raises:
        AssertionError: naming the worst error and the tolerance.
    """
    ref = run(reference, inputs)
    out = run(other, inputs)
    diff = compare(ref, out)
    for r, o in zip(ref, out):
        if not r.is_floating_point():
            continue
        d_rtol, d_atol = TOLERANCES.get(r.dtype, TOLERANCES[torch.float32])
        rt = d_rtol if rtol is None else rtol
        at = (d_atol if atol is None else atol) * max(1.0, diff.scale)
        torch.testing.assert_close(o, r, rtol=rt, atol=at)
    return diff
