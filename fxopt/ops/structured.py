"""Structured linear layers (``fxopt.structured``): the layout protocol they state and their channel rule.

A structured layer (low-rank, block-diagonal, Monarch, BTT, BLAST; also applied over the channels of a 1x1
convolution) computes ``y = x W^T + b`` with W stored as factors. Its input features are summed over (an exact
sink) and its output features are written by its factors' rows and its bias, as for ``nn.Linear``. The features
are spread over the factors' axes: Monarch's output feature ``i p + s`` is row s of block-row i, ``left[i, s, :]``.
Each layer says so with a ``FactorLayout`` (its ``factor_layout`` property): the row-major factors of its input and
output features as axes of its parameters, and which factors cannot change (block counts: removing a block-row of
one layer would need a grid the structure cannot hold). The rule states the factors with ``product`` facts, so
removal slices the factors within blocks (``left[:, kept, :]``) and the layer, whose feature counts are read from
its factors, stays consistent without a rewriter. Its cost is a MAC per token and factor element: for every
structure here, the factors' size is the multiply-adds per token.

This layer of fxopt cannot import the layer classes (``fxopt.structured`` sits above it): they register themselves
with ``register_structured`` when ``fxopt.structured`` is imported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

from fxopt.ops.cost import OpCost, Sizes, op_cost, out_numel
from fxopt.ops.facts import Facts
from fxopt.ops.registry import REGISTRY
from fxopt.ops.view import Axis, OpView, TensorRef, output_refs, param_ref, ref_of

KIND = "structured_linear"


@dataclass(frozen=True)
class Factor:
    """One factor of a layer's input or output features: axis ``dim`` of parameter ``param``.

    Attributes:
        param: the parameter's name on the called module (``"left"``, ``"linear.u"`` inside a channel linear).
        dim: the parameter's axis holding the factor.
        fixed: why the factor may not be pruned (``"block count of MonarchLinear"``), or ``None``.
    """

    param: str
    dim: int
    fixed: str | None = None


@dataclass(frozen=True)
class FactorLayout:
    """Where a structured layer's features live in its parameters.

    Attributes:
        inputs: the row-major factors of the input features (Monarch: block-column, column within the block).
        outputs: the row-major factors of the output features (a shuffled Monarch lists them inner first).
        bias: the bias parameter's name, or ``None`` without a bias.
        feature_dim: the dim of the input and output that holds the features (-1 for a linear, 1 for a channel
            linear over (N, C, *spatial)).
    """

    inputs: tuple[Factor, ...]
    outputs: tuple[Factor, ...]
    bias: str | None = "bias"
    feature_dim: int = -1

    def prefixed(self, prefix: str, feature_dim: int) -> FactorLayout:
        """The same layout seen from a wrapper that holds the layer at ``prefix`` (``"linear."``)."""

        def move(factors: tuple[Factor, ...]) -> tuple[Factor, ...]:
            return tuple(Factor(prefix + f.param, f.dim, f.fixed) for f in factors)

        return FactorLayout(move(self.inputs), move(self.outputs), prefix + self.bias if self.bias else None,
                            feature_dim)


def _structured_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    """The OpView of a call to a structured layer: its input, every parameter (by name: ``"left"``, ``"linear.u"``),
    the layout as attribute."""
    path = str(node.target)
    module = gm.get_submodule(path)
    params: dict[str, TensorRef | None] = {name: param_ref(path, name, tensor)
                                           for name, tensor in module.named_parameters()}
    return OpView(node, kind, (ref_of(node.args[0]),), params, {"layout": module.factor_layout}, output_refs(node),
                  module)


def register_structured(*classes: type[torch.nn.Module]) -> None:
    """Register structured layer classes (each with a ``factor_layout`` property) as kind ``structured_linear``."""
    REGISTRY.register_ops(KIND, classes, _structured_form)


def _axis(view: OpView, factor: Factor) -> Axis:
    ref = view.params[factor.param]
    assert ref is not None, f"{view.node.name}: no parameter {factor.param}"
    return ref.axis(factor.dim)


@REGISTRY.rule(KIND)
def structured_rule(view: OpView, facts: Facts) -> None:
    """Structured linear: input features summed (exact sink); outputs from factor rows and bias; block counts fixed."""
    layout: FactorLayout = view.attrs["layout"]
    x, out = view.inputs[0], view.out
    assert x is not None
    feature = layout.feature_dim % x.ndim
    for d in range(x.ndim):
        if d != feature:
            facts.transfer(out.axis(d), x.axis(d))
    x_f, out_f = x.axis(feature), out.axis(feature)
    facts.product([x_f], [_axis(view, f) for f in layout.inputs])
    facts.product([out_f], [_axis(view, f) for f in layout.outputs])
    for f in (*layout.inputs, *layout.outputs):
        if f.fixed is not None:
            facts.freeze(_axis(view, f), f"{f.fixed} ({view.node.name})")
    sources = [_axis(view, f) for f in layout.outputs]
    bias = view.params.get(layout.bias) if layout.bias else None
    if bias is not None:
        facts.same(out_f, bias.axis(0))
        sources.append(bias.axis(0))
    facts.sink(x_f, True, f"{view.node.name} sums over its input features")
    facts.zero(out_f, "all", sources)


@REGISTRY.cost(KIND)
def structured_cost(view: OpView, sizes: Sizes) -> OpCost:
    """Structured linear: a MAC per token and factor element (the factors' size is the multiply-adds per token),
    plus the bias adds."""
    layout: FactorLayout = view.attrs["layout"]
    out = view.out
    tokens = sizes.numel(out) / sizes.size(out, layout.feature_dim)
    factors = [ref for name, ref in view.params.items() if name != layout.bias and ref is not None]
    macs = tokens * sum(sizes.numel(f) for f in factors)
    bias_adds = out_numel(view, sizes) if layout.bias is not None else 0
    return op_cost(view, sizes, "matmul", 2 * macs + bias_adds, macs)
