"""Attention and matrix products: matmul/bmm/einsum, scaled_dot_product_attention, nn.MultiheadAttention.

Matrix products couple batch dims by broadcasting and sum over the contracted dim (an exact sink: a zero on
either side contributes nothing). ``scaled_dot_product_attention`` couples heads across q, k, v and the output;
with grouped-query attention the query heads are ``kv_heads x repeats``, so query heads follow their KV head.
An attention head of the output is zero when the value head is.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import sympy
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from fxopt.ops.cost import OpCost, Sizes, default_cost, op_cost, out_numel
from fxopt.ops.facts import Facts
from fxopt.ops.forms import aten_ops, bind, methods, register
from fxopt.ops.registry import REGISTRY
from fxopt.ops.resize import Resizer
from fxopt.ops.view import PARAM_PREFIX, Axis, OpView, TensorRef, output_refs, param_ref, ref_of


def _matmul_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    b = bind(node, ["input", "other"])
    return OpView(node, kind, (ref_of(b.get("input")), ref_of(b.get("other"))), {}, {}, output_refs(node))


register("matmul", [torch.matmul, operator.matmul, torch.bmm, torch.mm] + methods("matmul", "bmm", "mm")
         + aten_ops("matmul", "bmm", "mm"), _matmul_form)


def couple_batch(out: TensorRef, a: TensorRef, b: TensorRef, facts: Facts, out_batch: int) -> None:
    """Couple the broadcast batch dims of a matrix product; output batch zero if either side is."""
    for d in range(out_batch):
        back = out.ndim - d
        srcs: list[Axis] = []
        for t in (a, b):
            td = t.ndim - back
            if td >= 0 and t.shape[td] == out.shape[d] and out.shape[d] != 1:
                facts.same(t.axis(td), out.axis(d))
                srcs.append(t.axis(td))
        facts.zero(out.axis(d), "any", srcs)


@REGISTRY.rule("matmul")
def matmul_rule(view: OpView, facts: Facts) -> None:
    """a @ b: batch dims broadcast, a's last dim contracts with b's second-to-last (exact sink).

    Between two activations of 3 or more dims, dim -3 is tagged as heads and the contracted dim as head_dim: in
    4-d attention dim -3 is the heads, in 3-d attention (``nn.MultiheadAttention`` when it returns the weights,
    ``(batch x heads, tokens, head_dim)`` operands) the heads are a factor of it.
    """
    a, b = view.inputs
    out = view.out
    if a is None or b is None or a.ndim < 2 or b.ndim < 2:
        facts.barrier(view, "matmul with a vector operand", "unsqueeze to a matrix first")
        return
    facts.same(a.axis(-1), b.axis(-2))
    facts.sink(a.axis(-1), True, f"{view.node.name} contracts this dim", alternatives=[b.axis(-2)])
    facts.same(out.axis(-2), a.axis(-2))
    facts.zero(out.axis(-2), "any", [a.axis(-2)])
    facts.same(out.axis(-1), b.axis(-1))
    facts.zero(out.axis(-1), "any", [b.axis(-1)])
    couple_batch(out, a, b, facts, out.ndim - 2)
    if _activation_product((a, b), min_ndim=3):  # hand-written attention (Swin, XCiT, MHA's weights path)
        facts.tag(out.axis(-3), "head")
        facts.tag(a.axis(-1), "head_dim")


def _einsum_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    eq = node.args[0]
    ops: Sequence[Any] = node.args[1:]
    if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
        ops = ops[0]
    return OpView(node, kind, tuple(ref_of(o) for o in ops), {}, {"equation": eq}, output_refs(node))


register("einsum", [torch.einsum] + aten_ops("einsum"), _einsum_form)


@REGISTRY.rule("einsum")
def einsum_rule(view: OpView, facts: Facts) -> None:
    """einsum: dims sharing a letter are coupled; letters missing from the output are exact sinks.

    Between two activations of 4 or more dims, the output's dim -3 is tagged as heads, contracted dims as head_dim.
    """
    eq = str(view.attrs["equation"]).replace(" ", "")
    if "..." in eq or "->" not in eq:
        facts.barrier(view, "einsum with ellipsis or implicit output", "write the output subscripts explicitly")
        return
    lhs, rhs = eq.split("->")
    specs = lhs.split(",")
    if len(specs) != len(view.inputs) or any(t is None for t in view.inputs):
        facts.barrier(view, "einsum operands do not match the equation", "")
        return
    out = view.out
    by_letter: dict[str, list[Axis]] = {}
    for spec, t in zip(specs, view.inputs):
        assert t is not None
        for d, letter in enumerate(spec):
            by_letter.setdefault(letter, []).append(t.axis(d))
    for letter, axes in by_letter.items():
        axes = [a for a in axes if a.size != 1]
        for a in axes[1:]:
            facts.same(axes[0], a)
        if letter in rhs:
            o = out.axis(rhs.index(letter))
            if axes:
                facts.same(o, axes[0])
            facts.zero(o, "any", axes)
        elif axes:
            facts.sink(axes[0], True, f"{view.node.name} contracts this dim", alternatives=axes[1:])
    if _activation_product(view.inputs) and out.ndim >= 4:  # hand-written attention (torchvision MaxViT)
        facts.tag(out.axis(-3), "head")
        for letter, axes in by_letter.items():
            if letter not in rhs and axes:
                facts.tag(axes[0], "head_dim")


def _activation_product(inputs: tuple[TensorRef | None, ...], min_ndim: int = 4) -> bool:
    """Two activations of ``min_ndim`` or more dims: the (batch, heads, tokens, head_dim) operands of attention."""
    return len(inputs) == 2 and all(t is not None and t.ndim >= min_ndim and not t.key.startswith(PARAM_PREFIX)
                                    for t in inputs)


def _sdpa_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    b = bind(node, ["query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"])
    return OpView(node, kind, (ref_of(b["query"]), ref_of(b["key"]), ref_of(b["value"]), ref_of(b.get("attn_mask"))),
                  {}, {"scale": b.get("scale"), "enable_gqa": b.get("enable_gqa", False),
                       "_argnames": ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale",
                                     "enable_gqa")}, output_refs(node))


register("sdpa", [F.scaled_dot_product_attention] + aten_ops("scaled_dot_product_attention"), _sdpa_form)


def gqa_axis(view: OpView, repeats: int) -> Axis:
    """The synthetic axis of the query heads sharing one KV head."""
    return Axis(f"{view.node.name}:gqa", 0, repeats)


@REGISTRY.rule("sdpa")
def sdpa_rule(view: OpView, facts: Facts) -> None:
    """SDPA: heads coupled across q/k/v/out (GQA: q heads = kv heads x repeats); q.k contracts head_dim."""
    q, k, v, mask = view.inputs
    out = view.out
    assert q is not None and k is not None and v is not None
    nb = q.ndim - 3
    for d in range(nb):
        for t in (k, v):
            if t.ndim == q.ndim and t.shape[d] == q.shape[d]:
                facts.same(t.axis(d), q.axis(d))
        facts.same(out.axis(d), q.axis(d))
    if q.ndim >= 4:
        hq, hk = q.axis(-3), k.axis(-3)
        facts.same(k.axis(-3), v.axis(-3))
        if hq.size == hk.size:
            facts.same(hq, hk)
        elif hq.size % hk.size == 0:
            facts.product([hq], [hk, gqa_axis(view, hq.size // hk.size)])
        facts.same(out.axis(-3), hq)
        facts.tag(hq, "head")
        facts.tag(hk, "head")
        facts.zero(out.axis(-3), "any", [v.axis(-3)])
    for d in range(nb - (1 if q.ndim >= 4 else 0)):
        facts.zero(out.axis(d), "any", [v.axis(d)])
    facts.same(q.axis(-1), k.axis(-1))
    facts.sink(q.axis(-1), True, f"{view.node.name} contracts head_dim in q.k", alternatives=[k.axis(-1)])
    facts.tag(q.axis(-1), "head_dim")
    facts.same(k.axis(-2), v.axis(-2))
    facts.sink(k.axis(-2), False, f"{view.node.name} normalizes attention over keys")
    facts.same(out.axis(-2), q.axis(-2))
    facts.same(out.axis(-1), v.axis(-1))
    facts.tag(v.axis(-1), "head_dim")
    facts.zero(out.axis(-1), "any", [v.axis(-1)])
    if mask is not None:
        for d in range(1, mask.ndim + 1):
            m = mask.axis(-d)
            if d <= out.ndim and m.size == out.shape[-d] and m.size != 1:
                facts.same(m, out.axis(-d))


@REGISTRY.rewriter("sdpa")
def sdpa_rewrite(view: OpView, resizer: Resizer) -> None:
    """Pin the softmax scale to the original 1/sqrt(head_dim) when head_dim shrinks."""
    q = view.inputs[0]
    assert q is not None
    if view.attrs.get("scale") is None and resizer.changed(q.axis(-1)):
        resizer.set_args(view.node, view.node.args, {**view.node.kwargs, "scale": q.shape[-1] ** -0.5})


def _mha_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    path = str(node.target)
    m = gm.get_submodule(path)
    assert isinstance(m, nn.MultiheadAttention), "the mha form is registered for nn.MultiheadAttention only"
    b = bind(node, ["query", "key", "value"])
    params = {n: param_ref(path, n, getattr(m, n, None)) for n in ("in_proj_weight", "in_proj_bias")}
    params["out_weight"] = param_ref(f"{path}.out_proj", "weight", m.out_proj.weight)
    params["out_bias"] = param_ref(f"{path}.out_proj", "bias", m.out_proj.bias)
    return OpView(node, kind, (ref_of(b["query"]), ref_of(b["key"]), ref_of(b["value"])), params,
                  {"num_heads": m.num_heads, "batch_first": m.batch_first}, output_refs(node), m)


register("mha", [nn.MultiheadAttention], _mha_form)


@REGISTRY.rule("mha")
def mha_rule(view: OpView, facts: Facts) -> None:
    """nn.MultiheadAttention as a leaf: it ties embed_dim to heads x head_dim, so every dim it touches is frozen."""
    facts.barrier(view, "nn.MultiheadAttention requires num_heads * head_dim == embed_dim",
                  "trace with frontend='export' to decompose it into prunable linear + attention ops")


# ---------------------------------------------------------------- costs
@REGISTRY.cost("matmul")
def matmul_cost(view: OpView, sizes: Sizes) -> OpCost:
    """a @ b: a MAC per output element and element of the contracted dim."""
    a = view.inputs[0]
    macs = out_numel(view, sizes) * (sizes.size(a, -1) if a is not None and a.ndim else 1)
    return op_cost(view, sizes, "matmul", 2 * macs, macs)


def _einsum_sizes(view: OpView, sizes: Sizes) -> dict[str, sympy.Expr] | None:
    """Each letter's size; None when the equation has an ellipsis or an implicit output, or misses an operand."""
    eq = str(view.attrs.get("equation", "")).replace(" ", "")
    specs = eq.split("->")[0].split(",")
    if "->" not in eq or "..." in eq or len(specs) != len(view.inputs):
        return None
    letters: dict[str, sympy.Expr] = {}
    for spec, t in zip(specs, view.inputs):
        if t is None or len(spec) != t.ndim:
            return None
        for d, letter in enumerate(spec):
            if letter not in letters or t.shape[d] != 1:  # a broadcast operand's size 1 does not count
                letters[letter] = sizes.size(t, d)
    return letters


@REGISTRY.cost("einsum")
def einsum_cost(view: OpView, sizes: Sizes) -> OpCost:
    """einsum: a MAC per combination of its letters' values (per output element when the equation is unclear)."""
    letters = _einsum_sizes(view, sizes)
    macs = sympy.Mul(*letters.values()) if letters is not None else out_numel(view, sizes)
    return op_cost(view, sizes, "matmul", 2 * macs, macs)


@REGISTRY.cost("sdpa")
def sdpa_cost(view: OpView, sizes: Sizes) -> OpCost:
    """SDPA: q.k scores and the weighted sum of v (a MAC per score and head_dim each), 5 FLOPs per score (softmax)."""
    q, k, v = view.inputs[:3]
    if q is None or k is None or v is None:
        return op_cost(view, sizes, "attention", out_numel(view, sizes))
    scores = sizes.numel(q, range(q.ndim - 1)) * sizes.size(k, -2)
    macs = scores * sizes.size(q, -1) + scores * sizes.size(v, -1)
    return op_cost(view, sizes, "attention", 2 * macs + 5 * scores, macs)


@REGISTRY.cost("mha")
def mha_cost(view: OpView, sizes: Sizes) -> OpCost:
    """nn.MultiheadAttention: q, k, v and output projections plus the scores and their weighted sum of v."""
    q, k = view.inputs[0], view.inputs[1]
    if q is None or k is None:
        return default_cost(view, sizes)
    e = sizes.size(q, -1)
    tokens_q, tokens_k = sizes.numel(q, range(q.ndim - 1)), sizes.numel(k, range(k.ndim - 1))
    seq_k = sizes.size(k, 1 if view.attrs.get("batch_first") and k.ndim == 3 else 0)
    macs = 2 * tokens_q * e * e + 2 * tokens_k * e * e + 2 * tokens_q * seq_k * e
    return op_cost(view, sizes, "attention", 2 * macs, macs)
