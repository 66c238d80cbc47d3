"""What every structured layer and structure shares: the layer base class, the structure contract, the costs.

A *structure* is a frozen dataclass of options (``Monarch(blocks=4, rank=2)``): it checks a shape, builds an empty
layer and fits a dense weight in closed form or by iteration. A *structured layer* is the ``nn.Module`` it builds: a
linear map over the last dimension of its input whose weight is never stored or formed densely.

Cost convention: ``flops`` counts a multiply-add as two floating-point operations (as ``fxopt.analysis.cost`` does),
plus one addition per output for the bias; ``macs_per_token`` is the multiply-add count without the bias.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Self

import torch
import torch.nn as nn

from fxopt.ops.structured import Factor, FactorLayout
from fxopt.structured.calibration import InputTransform
from fxopt.structured.errors import StructureError


def dense_flops(out_features: int, in_features: int, tokens: int = 1, bias: bool = True) -> int:
    """FLOPs of a dense ``nn.Linear`` applied to ``tokens`` rows (multiply-add = 2, plus the bias additions).

    Args:
        out_features: rows m of the weight.
        in_features: columns n of the weight.
        tokens: rows of the input (the product of its leading dimensions).
        bias: whether the bias additions are counted.

    Returns:
        ``tokens * (2 m n + m)`` with a bias, ``tokens * 2 m n`` without.
    """
    return tokens * (2 * out_features * in_features + (out_features if bias else 0))


class StructuredLinear(nn.Module, abc.ABC):
    """A linear layer ``y = x W^T + b`` over the last dimension whose weight W (m x n) has a structure.

    Subclasses store W's factors as parameters (and nothing else but the bias), define ``forward`` without forming
    W, and say in ``factor_layout`` where the features live. The feature counts and the cost (one multiply-add per
    token and stored factor element) are read from the factors' shapes, so a layer whose factors were sliced within
    their blocks (channel pruning) stays consistent without any attribute to rewrite.

    Attributes:
        bias: the (m,) bias, or ``None``.
        fxopt_leaf: fxopt's fx front-end keeps the layer as one ``call_module`` node (its channel rule and cost
            are written for the layer, see ``fxopt.ops.structured``).
    """

    fxopt_leaf = True

    def __init__(self, out_features: int, bias: bool, device: torch.device | str | None,
                 dtype: torch.dtype | None) -> None:
        super().__init__()
        self.bias: nn.Parameter | None
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    @property
    @abc.abstractmethod
    def factor_layout(self) -> FactorLayout:
        """Where the input and output features live in the factors, for fxopt's channel rule."""

    @property
    @abc.abstractmethod
    def structure(self) -> Structure:
        """The structure (options) this layer has; ``structure.build`` makes an empty layer like it."""

    @property
    def in_features(self) -> int:
        """n, the size of the input's last dimension: the product of the input factors' sizes."""
        return self._features(self.factor_layout.inputs)

    @property
    def out_features(self) -> int:
        """m, the size of the output's last dimension: the product of the output factors' sizes."""
        return self._features(self.factor_layout.outputs)

    @property
    def structure_parameters(self) -> int:
        """Number of stored weight parameters: every parameter of the layer but the bias."""
        return sum(p.numel() for name, p in self.named_parameters(recurse=False) if name != "bias")

    @property
    def macs_per_token(self) -> int:
        """Multiply-adds of ``forward`` for one input row, without the bias: one per stored factor element."""
        return self.structure_parameters

    @abc.abstractmethod
    def to_dense(self) -> torch.Tensor:
        """The m x n weight W that ``forward`` applies (the bias is not included)."""

    @property
    def num_parameters(self) -> int:
        """Exact number of parameters: the factors plus m for the bias."""
        return self.structure_parameters + (self.out_features if self.bias is not None else 0)

    def flops(self, tokens: int = 1) -> int:
        """FLOPs of ``forward`` on ``tokens`` input rows (multiply-add = 2, plus one addition per output for the bias).

        Args:
            tokens: rows of the input (the product of its leading dimensions).

        Returns:
            ``tokens * (2 * macs_per_token + m)`` with a bias, without the ``m`` otherwise.
        """
        return tokens * (2 * self.macs_per_token + (self.out_features if self.bias is not None else 0))

    def dense_flops(self, tokens: int = 1) -> int:
        """FLOPs of the dense ``nn.Linear`` this layer stands for, on ``tokens`` rows (same convention as ``flops``)."""
        return dense_flops(self.out_features, self.in_features, tokens, self.bias is not None)

    def extra_repr(self) -> str:
        structure = self.structure
        options = ", ".join(f"{k}={v}" for k, v in vars(structure).items() if k not in structure.fit_options)
        return f"in_features={self.in_features}, out_features={self.out_features}, {options}, " \
               f"bias={self.bias is not None}"

    def _add_bias(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.bias is None else y + self.bias

    def _layout(self, inputs: tuple[Factor, ...], outputs: tuple[Factor, ...]) -> FactorLayout:
        """A layout over this layer's own factors, naming its bias when it has one."""
        return FactorLayout(inputs, outputs, "bias" if self.bias is not None else None)

    def _features(self, factors: tuple[Factor, ...]) -> int:
        return math.prod(getattr(self, f.param).shape[f.dim] for f in factors)


@dataclass(frozen=True)
class Approximation:
    """What a structure's fit of a (transformed) weight returns to ``fxopt.structured.fit``.

    Attributes:
        layer: the fitted layer, without bias, in the fitting dtype.
        error: relative Frobenius error of the objective fitted, ``||(W - W_fit) T|| / ||W T||`` (T = I for a plain
            fit, the input transform otherwise).
        start_error: the same before iterative refinement (equal to ``error`` for closed forms).
        iterations: refinement iterations run (0 for closed forms).
        converged: whether refinement stopped on its tolerance rather than its iteration limit.
    """

    layer: StructuredLinear
    error: float
    start_error: float
    iterations: int = 0
    converged: bool = True


@dataclass(frozen=True)
class Structure(abc.ABC):
    """Options of one structure; subclasses are frozen dataclasses (plain values that print as text).

    A subclass knows which shapes it accepts (``check``), how its input columns group (``input_groups``, along which
    activation-aware whitening is block-diagonal), how to build an empty layer and how to fit a dense weight.
    """

    layer_name: ClassVar[str]
    """The layer class's name, for messages."""
    fit_options: ClassVar[tuple[str, ...]] = ()
    """Fields that steer fitting only (iteration limits), left out of the layer's repr."""

    def with_rank(self, rank: int) -> Self:
        """This structure with ``rank`` replaced, its other options unchanged.

        Raises:
            StructureError: the structure has no rank (block-diagonal).
        """
        if "rank" not in {f.name for f in dataclasses.fields(self)}:
            raise StructureError(f"{self.layer_name} has no rank to set")
        return dataclasses.replace(self, **{"rank": rank})  # a subclass field: the base declares none

    def resolved(self, out_features: int, in_features: int) -> Structure:
        """The structure with every option that depends on the shape made explicit (default splits)."""
        return self

    @abc.abstractmethod
    def check(self, out_features: int, in_features: int) -> None:
        """Raise ``StructureError`` (naming the layer, the shape and what would work) if the shape is impossible."""

    @abc.abstractmethod
    def input_groups(self, out_features: int, in_features: int) -> int:
        """How many equal, contiguous column groups the structure treats separately (whitening blocks)."""

    @abc.abstractmethod
    def build(self, out_features: int, in_features: int, *, bias: bool = True,
              device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> StructuredLinear:
        """An m x n layer with this structure and randomly initialised factors (shape already checked)."""

    @abc.abstractmethod
    def fit_weight(self, weight: torch.Tensor, transform: InputTransform | None) -> Approximation:
        """Fit a checked float weight, minimising ``||(W - W_fit) T||_F`` for the input transform T (or T = I)."""
