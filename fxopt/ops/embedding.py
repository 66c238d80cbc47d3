"""Embedding lookups: the embedding dim is a channel produced by the table's columns; the vocabulary is frozen."""

from __future__ import annotations

import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from fxopt.ops.cost import memory_cost
from fxopt.ops.facts import Facts
from fxopt.ops.forms import aten_ops, bind, register
from fxopt.ops.registry import REGISTRY
from fxopt.ops.resize import Resizer
from fxopt.ops.view import OpView, output_refs, param_ref, ref_of, tensor_attr


def _embedding_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        weight = param_ref(str(node.target), "weight", tensor_attr(m, "weight"))
        return OpView(node, kind, (ref_of(node.args[0]),), {"weight": weight}, {}, output_refs(node), m)
    if node.target is F.embedding:
        b = bind(node, ["input", "weight"])
    else:
        b = bind(node, ["weight", "input"])
    return OpView(node, kind, (ref_of(b.get("input")),), {"weight": ref_of(b.get("weight"))}, {}, output_refs(node))


register("embedding", [nn.Embedding, F.embedding] + aten_ops("embedding"), _embedding_form)


@REGISTRY.rule("embedding")
def embedding_rule(view: OpView, facts: Facts) -> None:
    """Embedding: output's last dim is the table's dim 1 (zero when those columns are); ids dims pass through."""
    ids, out, w = view.inputs[0], view.out, view.params["weight"]
    assert ids is not None and w is not None
    for d in range(ids.ndim):
        facts.same(ids.axis(d), out.axis(d))
    facts.freeze(w.axis(0), "vocabulary dim of an embedding table")
    facts.same(out.axis(-1), w.axis(1))
    facts.zero(out.axis(-1), "all", [w.axis(1)])


@REGISTRY.rewriter("embedding")
def embedding_rewrite(view: OpView, resizer: Resizer) -> None:
    """Keep ``embedding_dim`` in step with the sliced table."""
    if view.module is not None:
        resizer.set_module_attr(view, "embedding_dim", view.module_tensor("weight").shape[1])


REGISTRY.cost("embedding")(memory_cost)
