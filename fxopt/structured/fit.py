"""Fitting a structure to a pretrained dense weight: one entry point, the fit report and rank selection.

``fit(weight, structure)`` checks the weight and the structure's shape, builds the activation-aware input transform
from calibration inputs when given, lets the structure fit (closed form for the block-low-rank family, alternating
least squares for BLAST) and measures the result: objective error, weight error, output error on the calibration
data, parameters and FLOPs before and after. ``choose_rank`` picks the smallest rank within an error budget from one
SVD, without trial fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn as nn

from fxopt.structured.base import Structure, StructuredLinear, dense_flops
from fxopt.structured.calibration import (
    SCALINGS,
    InputStats,
    InputTransform,
    Scaling,
    output_error,
)
from fxopt.structured.errors import StructureError
from fxopt.structured.grid import GridStructure

G = TypeVar("G", bound=GridStructure)
L = TypeVar("L", bound=StructuredLinear)


@dataclass(frozen=True)
class FitReport:
    """How well a structured layer approximates the dense weight it was fitted to, and what it costs.

    Attributes:
        structure: the structure's options as text, e.g. ``"Monarch(blocks=4, rank=2, shuffle=False)"``.
        shape: (out_features, in_features) of the weight.
        scaling: ``"none"`` for a plain fit, else the activation scaling (``"rms"`` or ``"whiten"``).
        error: relative Frobenius error of the fitted objective ``||(W - W_fit) T|| / ||W T||`` (T = I for a plain
            fit); for closed forms it comes from the discarded singular values.
        weight_error: ``||W - W_fit||_F / ||W||_F``, measured on the fitted layer's ``to_dense()``.
        output_error: ``||X (W - W_fit)^T|| / ||X W^T||`` on the calibration inputs; ``None`` without them.
        params_before: parameters of the dense layer (weight and bias).
        params_after: parameters of the structured layer (factors and bias).
        flops_before: FLOPs per token of the dense layer (multiply-add = 2, plus the bias).
        flops_after: FLOPs per token of the structured layer (same convention).
        iterations: refinement iterations (0 for closed-form fits).
        start_error: ``error`` before refinement (equal to ``error`` for closed forms).
        converged: whether refinement stopped on its tolerance (always true for closed forms).
    """

    structure: str
    shape: tuple[int, int]
    scaling: str
    error: float
    weight_error: float
    output_error: float | None
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    iterations: int
    start_error: float
    converged: bool

    @property
    def param_ratio(self) -> float:
        """Parameters after / before."""
        return self.params_after / self.params_before

    @property
    def flop_ratio(self) -> float:
        """FLOPs per token after / before."""
        return self.flops_after / self.flops_before

    def __str__(self) -> str:
        m, n = self.shape
        out = "" if self.output_error is None else f", output error {self.output_error:.4g}"
        refine = f", {self.iterations} iterations from {self.start_error:.4g}" if self.iterations else ""
        return (f"{self.structure} on {m}x{n} ({self.scaling}): error {self.error:.4g}{refine}, weight error "
                f"{self.weight_error:.4g}{out}; params {self.param_ratio:.3f}x, FLOPs {self.flop_ratio:.3f}x")


@dataclass(frozen=True)
class Fit:
    """A fitted structured layer and its report.

    Attributes:
        layer: the structured layer, in the weight's dtype and device, with the bias copied.
        report: the fit's figures.
    """

    layer: StructuredLinear
    report: FitReport


def fit(weight: torch.Tensor, structure: Structure, bias: torch.Tensor | None = None, *,
        activations: torch.Tensor | InputStats | None = None, scaling: Scaling = "whiten",
        damp: float = 0.01) -> Fit:
    """Fit a structured layer to a dense ``nn.Linear`` weight (and bias).

    Args:
        weight: the (out_features, in_features) dense weight; fitting runs on its device, in float32 at least.
        structure: the structure and its options, e.g. ``Monarch(blocks=4, rank=2)``.
        bias: the dense layer's bias, copied unchanged; ``None`` for none.
        activations: calibration inputs of the layer, (..., in_features), or their ``InputStats``; with them the
            fit minimises the error on the data (activation-aware), without them the error on the weights.
        scaling: with activations, ``"whiten"`` (Cholesky whitening, block-diagonal along the structure's column
            groups) or ``"rms"`` (diagonal scaling by the inputs' root mean square).
        damp: ridge added to the inputs' second moment, as a fraction of its mean diagonal.

    Returns:
        The layer and its report.

    Raises:
        StructureError: the weight is not 2-D floating point, the bias or activations do not match it, or the
            structure is impossible for its shape (the message says what would work).

    Example:
        >>> w = torch.randn(64, 96)
        >>> result = fit(w, Monarch(blocks=4, rank=2))
        >>> result.layer(torch.randn(5, 96)).shape, result.report.params_after
        (torch.Size([5, 64]), 1280)
    """
    check_weight(weight, bias, structure)
    m, n = weight.shape
    structure.check(m, n)
    with torch.no_grad():
        work = weight.detach().to(torch.promote_types(weight.dtype, torch.float32))
        stats = _stats(activations, structure, work)
        approx = structure.fit_weight(work, _transform(stats, structure, work, scaling, damp))
        fitted = approx.layer.to_dense()
        norm = work.norm()
        weight_error = float((work - fitted).norm() / norm) if norm > 0 else float(fitted.norm() > 0)
        out_error = None if stats is None else output_error(work, fitted, stats)
    layer = approx.layer.to(dtype=weight.dtype)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().to(device=weight.device, dtype=weight.dtype).clone())
    report = FitReport(
        structure=repr(structure.resolved(m, n)), shape=(m, n), scaling="none" if stats is None else scaling,
        error=approx.error, weight_error=weight_error, output_error=out_error,
        params_before=m * n + (m if bias is not None else 0), params_after=layer.num_parameters,
        flops_before=dense_flops(m, n, 1, bias is not None), flops_after=layer.flops(1),
        iterations=approx.iterations, start_error=approx.start_error, converged=approx.converged)
    return Fit(layer, report)



def fitted_layer(layer_type: type[L], weight: torch.Tensor, structure: Structure, bias: torch.Tensor | None = None,
                 *, activations: torch.Tensor | InputStats | None = None, scaling: Scaling = "whiten",
                 damp: float = 0.01) -> L:
    """``fit(...).layer``, checked to be the ``layer_type`` the structure builds (the layers' ``from_dense``).

    Raises:
        TypeError: ``structure`` builds another kind of layer.
    """
    layer = fit(weight, structure, bias, activations=activations, scaling=scaling, damp=damp).layer
    if not isinstance(layer, layer_type):
        raise TypeError(f"{type(structure).__name__} builds a {type(layer).__name__}, not a {layer_type.__name__}")
    return layer

def error_by_rank(weight: torch.Tensor, structure: Structure, *,
                  activations: torch.Tensor | InputStats | None = None, scaling: Scaling = "whiten",
                  damp: float = 0.01) -> torch.Tensor:
    """The fitted objective's relative error at every rank, from one batched SVD (no trial fits).

    Args:
        weight: the (out_features, in_features) dense weight.
        structure: a closed-form ranked structure (``LowRank``, ``Monarch``, ``BTT``); its rank is not used.
        activations: calibration inputs or their statistics, as for ``fit``.
        scaling: the activation scaling, as for ``fit``.
        damp: the second moment's ridge, as for ``fit``.

    Returns:
        (k + 1,) float64 tensor; entry r is the error ``fit`` reports at rank r (entry 0 is 1, entry k is 0).
    """
    check_weight(weight, None, structure)
    if not isinstance(structure, GridStructure):
        raise StructureError(f"{structure.layer_name} has no closed-form error curve over ranks; fit it at a few "
                             f"ranks instead (closed forms: LowRank, Monarch, BTT)")
    m, n = weight.shape
    structure.check_grid(m, n)
    with torch.no_grad():
        work = weight.detach().to(torch.promote_types(weight.dtype, torch.float32))
        stats = _stats(activations, structure, work)
        return structure.errors_by_rank(work, _transform(stats, structure, work, scaling, damp))


def choose_rank(weight: torch.Tensor, structure: G, budget: float, *,
                activations: torch.Tensor | InputStats | None = None, scaling: Scaling = "whiten",
                damp: float = 0.01) -> G:
    """The structure with the smallest rank whose fitted error is within ``budget``, from one SVD.

    Args:
        weight: the (out_features, in_features) dense weight.
        structure: a closed-form ranked structure (``LowRank``, ``Monarch``, ``BTT``); its rank is replaced.
        budget: the largest acceptable relative error of the fitted objective (``FitReport.error``).
        activations: calibration inputs or their statistics, as for ``fit``.
        scaling: the activation scaling, as for ``fit``.
        damp: the second moment's ridge, as for ``fit``.

    Returns:
        ``structure`` with ``rank`` set (at least 1; full block rank if nothing smaller meets the budget).

    Example:
        >>> choose_rank(torch.eye(64), LowRank(rank=1), budget=0.5)  # error sqrt((64 - r) / 64)
        LowRank(rank=48)
    """
    errors = error_by_rank(weight, structure, activations=activations, scaling=scaling, damp=damp)
    within = (errors[1:] <= budget).nonzero()
    rank = int(within[0]) + 1 if len(within) else len(errors) - 1
    return structure.with_rank(rank)


def check_weight(weight: torch.Tensor, bias: torch.Tensor | None, structure: Structure) -> None:
    """Raise ``StructureError`` unless ``weight`` is a 2-D floating-point matrix and ``bias`` matches its rows."""
    name = structure.layer_name
    if weight.dim() != 2:
        raise StructureError(f"{name} fits a 2-D (out_features, in_features) weight, got shape {tuple(weight.shape)}; "
                             f"a 1x1 convolution's weight goes through ChannelLinear.from_conv1x1")
    if not weight.is_floating_point():
        raise StructureError(f"{name} fits a floating-point weight, got {weight.dtype}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise StructureError(f"{name}: bias of shape {tuple(bias.shape)} does not match the weight's "
                             f"{weight.shape[0]} output rows; pass a ({weight.shape[0]},) bias or None")


def _stats(activations: torch.Tensor | InputStats | None, structure: Structure,
           work: torch.Tensor) -> InputStats | None:
    """The calibration statistics on the weight's device, checked against its input features."""
    if activations is None:
        return None
    n = work.shape[1]
    stats = activations if isinstance(activations, InputStats) else InputStats.of(activations)
    if stats.gram.shape != (n, n):
        raise StructureError(f"{structure.layer_name}: calibration inputs have {stats.gram.shape[-1]} features, the "
                             f"weight has in_features={n}; pass the layer's own inputs, shaped (..., {n})")
    return InputStats(stats.gram.to(device=work.device), stats.count)


def _transform(stats: InputStats | None, structure: Structure, work: torch.Tensor, scaling: Scaling,
               damp: float) -> InputTransform | None:
    """The input transform along the structure's column groups, in the fitting dtype (``None`` without data)."""
    if scaling not in SCALINGS:
        raise StructureError(f"unknown activation scaling {scaling!r}: use one of {', '.join(SCALINGS)}")
    if stats is None:
        return None
    return InputTransform.build(stats, structure.input_groups(*work.shape), scaling, damp).to(work.dtype)
