"""Numerical comparison of two modules' outputs, with fxopt's tolerances in one place.

The pass manager's checks use it; ``fxopt.testing`` re-exports ``assert_equivalent`` and ``TOLERANCES`` for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fxopt.input_dims import Sizes, captured_dims, size_sets

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
                      rtol: float | None = None, atol: float | None = None, sizes: Sizes = None) -> Difference:
    """Assert that two modules compute the same outputs on ``inputs`` within the dtype's tolerance.

    The tolerance is ``atol + rtol * |reference|`` elementwise, with ``atol`` scaled by the reference's
    largest magnitude so that large activations are not held to an absolute 1e-5.

    Args:
        reference: the module to match.
        other: the module checked.
        inputs: the example inputs.
        rtol: relative tolerance (default: the dtype's, ``TOLERANCES``).
        atol: absolute tolerance as a share of the reference's largest magnitude.
        sizes: other input sizes to compare at as well (``fxopt.input_dims.Sizes``), the batch and sequence
            dims ``other`` was captured with; ``"other"`` picks two sets.

    Returns:
        The largest Difference (relative to its scale) over all the input sets.

    Raises:
        AssertionError: naming the worst error, the tolerance and, at other sizes, the input shapes.

    Example:
        >>> assert_equivalent(model, pruned_gm, (ids,), sizes=[{"batch": 4, "sequence": 64}])
    """
    worst = _assert_close(reference, other, inputs, rtol, atol)
    for extra in size_sets(inputs, captured_dims(other, inputs), sizes):
        try:
            diff = _assert_close(reference, other, extra, rtol, atol)
        except Exception as exc:
            shapes = [tuple(x.shape) for x in tensors_of(extra)]
            raise AssertionError(f"at input shapes {shapes}: {exc}") from exc
        worst = diff if diff.relative > worst.relative else worst
    return worst


def _assert_close(reference: torch.nn.Module, other: torch.nn.Module, inputs: Sequence[Any],
                  rtol: float | None, atol: float | None) -> Difference:
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
