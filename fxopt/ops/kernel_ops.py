"""The structured-layer ops of ``fxopt.kernels`` as graph nodes: ``torch.ops.fxopt.*`` after ``torch.export``.

Under ``torch.fx`` the structured layers stay leaf modules (their rules are the structured modules'); a graph from
``torch.export`` has their ops instead. Leading dims (batch, sequence) pass through. The feature dims are frozen:
a block-diagonal, Monarch, BLAST or low-rank weight cannot drop one input or output channel without a refit, so
its neighbours keep those channels (a barrier on two axes, not on the node). Cost: a multiply-add per token and
stored factor element, which is the layers' ``macs_per_token``.
"""

from __future__ import annotations

import torch

import fxopt.kernels  # noqa: F401  (registers torch.ops.fxopt)
from fxopt.ops.cost import OpCost, Sizes, default_cost, op_cost
from fxopt.ops.facts import Facts
from fxopt.ops.forms import function_form, register
from fxopt.ops.registry import REGISTRY
from fxopt.ops.view import OpView

FACTORS = {
    "blockdiag_matmul": ["weight"],
    "monarch": ["right", "left"],
    "blast": ["u", "s", "v"],
    "lowrank": ["u", "v"],
}
"""Kind (the op's name) -> its factor arguments, in the op's argument order after ``x``."""

_ATTRIBUTES = {"blockdiag_matmul": ["shuffle_in", "shuffle_out"], "monarch": ["rank", "shuffle", "shuffle_in"]}

for _kind, _factors in FACTORS.items():
    register(_kind, [getattr(torch.ops.fxopt, _kind)],
             function_form(["x", *_factors, *_ATTRIBUTES.get(_kind, [])], ["x"], _factors))


@REGISTRY.rule(*FACTORS)
def structured_matmul_rule(view: OpView, facts: Facts) -> None:
    """fxopt structured matmul: leading dims pass through; input and output features frozen (a refit is needed)."""
    x, out = view.inputs[0], view.out
    assert x is not None
    for d in range(x.ndim - 1):
        facts.transfer(out.axis(d), x.axis(d))
    reason = f"{view.node.name} is a structured matmul ({view.kind}): dropping a feature needs a refit"
    facts.freeze(x.axis(-1), reason)
    facts.freeze(out.axis(-1), reason)
    for name in FACTORS[view.kind]:
        factor = view.params.get(name)
        if factor is not None:
            for d in range(factor.ndim):
                facts.freeze(factor.axis(d), reason)


@REGISTRY.cost(*FACTORS)
def structured_matmul_cost(view: OpView, sizes: Sizes) -> OpCost:
    """fxopt structured matmul: a MAC per token and factor element (the layers' ``macs_per_token``)."""
    x = view.inputs[0]
    factors = [view.params.get(name) for name in FACTORS[view.kind]]
    if x is None or any(f is None for f in factors):
        return default_cost(view, sizes)
    tokens = sizes.numel(x, range(x.ndim - 1))
    macs = tokens * sum((sizes.numel(f) for f in factors if f is not None), start=0)
    return op_cost(view, sizes, "matmul", 2 * macs, macs)
