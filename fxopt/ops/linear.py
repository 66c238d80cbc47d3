"""Linear layers in module, functional and ATen form (``addmm`` included)."""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from fxopt.ops.cost import OpCost, Sizes, default_cost, op_cost, out_numel
from fxopt.ops.facts import Facts
from fxopt.ops.forms import aten_ops, function_form, module_form, register
from fxopt.ops.registry import REGISTRY
from fxopt.ops.resize import Resizer
from fxopt.ops.view import Axis, OpView

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
def linear_rewrite(view: OpView, resizer: Resizer) -> None:
    """Keep ``in_features``/``out_features`` in step with the sliced weight."""
    if view.module is not None:
        out_features, in_features = view.module_tensor("weight").shape
        resizer.set_module_attr(view, "out_features", out_features)
        resizer.set_module_attr(view, "in_features", in_features)


def _addmm_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    from fxopt.ops.forms import bind
    from fxopt.ops.view import output_refs, ref_of

    b = bind(node, ["bias", "input", "weight"])
    return OpView(node, kind, (ref_of(b.get("input")),), {"weight": ref_of(b.get("weight")),
                                                           "bias": ref_of(b.get("bias"))},
                  {"beta": b.get("beta", 1), "alpha": b.get("alpha", 1)}, output_refs(node))


register("addmm", [torch.addmm] + aten_ops("addmm"), _addmm_form)


@REGISTRY.rule("addmm")
def addmm_rule(view: OpView, facts: Facts) -> None:
    """addmm(bias, x, w) = bias + x @ w (GPT-2's Conv1D): w is (in, out), transposed against nn.Linear."""
    x, out = view.inputs[0], view.out
    w, b = view.params["weight"], view.params.get("bias")
    assert x is not None and w is not None
    facts.transfer(out.axis(0), x.axis(0))
    facts.same(x.axis(1), w.axis(0))
    facts.sink(x.axis(1), True, f"{view.node.name} sums over its input features", alternatives=[w.axis(0)])
    facts.same(out.axis(1), w.axis(1))
    srcs: list[Axis | None] = [w.axis(1)]
    if b is not None:
        for d in range(1, b.ndim + 1):
            if b.shape[-d] == out.shape[-d] and b.shape[-d] != 1:
                facts.same(b.axis(-d), out.axis(-d))
        if b.shape[-1] == out.shape[-1]:
            srcs.append(b.axis(-1))
        else:
            srcs.append(None)
    facts.zero(out.axis(1), "all", srcs)


@REGISTRY.cost("linear", "addmm")
def linear_cost(view: OpView, sizes: Sizes) -> OpCost:
    """Linear / addmm: a MAC per output element and input feature, plus the bias adds."""
    w = view.params.get("weight")
    if w is None:
        return default_cost(view, sizes)
    in_features = sizes.size(w, 0 if view.kind == "addmm" else 1)  # addmm's weight is (in, out)
    n = out_numel(view, sizes)
    bias_adds = n if view.params.get("bias") is not None else 0
    return op_cost(view, sizes, "matmul", 2 * n * in_features + bias_adds, n * in_features, sizes.shape(w))
