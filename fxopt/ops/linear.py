"""Linear layers in module, functional and ATen form (``addmm`` included)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fxopt.analysis.facts import Facts
from fxopt.ops.forms import aten_ops, function_form, module_form, register
from fxopt.ops.registry import REGISTRY
from fxopt.ops.view import OpView

register("linear", [nn.Linear, nn.LazyLinear], module_form())
register("linear", [F.linear] + aten_ops("linear"), function_form(["input", "weight", "bias"], ["input"],
                                                                  ["weight", "bias"]))


@REGISTRY.rule("linear")
def linear_rule(view: OpView, facts: Facts) -> None:
    """Linear: last input dim summed against weight columns (exact sink); outputs from weight rows and bias."""
    x, out = view.inputs[0], view.out
    w, b = view.params["weight"], view.params.get("bias")
    assert x is not None and w is not None
    for d in range(x.ndim - 1):
        facts.transfer(out.axis(d), x.axis(d))
    facts.same(x.axis(-1), w.axis(1))
    facts.sink(x.axis(-1), True, f"{view.node.name} sums over its input features")
    facts.same(out.axis(-1), w.axis(0))
    if b is not None:
        facts.same(out.axis(-1), b.axis(0))
    facts.zero(out.axis(-1), "all", [w.axis(0)] + ([b.axis(0)] if b is not None else []))


@REGISTRY.rewriter("linear")
def linear_rewrite(view: OpView, resizer) -> None:  # type: ignore[no-untyped-def]
    """Keep ``in_features``/``out_features`` in step with the sliced weight."""
    if view.module is not None:
        view.module.out_features, view.module.in_features = view.module.weight.shape
