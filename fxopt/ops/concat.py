"""Concatenation and splitting: cat/stack and split/chunk/unbind.

``cat`` places each input's channels at an offset of the output (a ``part``); ``split`` does the reverse. A split
whose parts lose different numbers of channels is rewritten to explicit sizes.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from fxopt.ops.cost import memory_cost, view_cost
from fxopt.ops.facts import Facts
from fxopt.ops.forms import aten_ops, bind, methods, register
from fxopt.ops.registry import REGISTRY
from fxopt.ops.resize import Resizer
from fxopt.ops.view import OpView, output_refs, ref_of


def _cat_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    b = bind(node, ["tensors", "dim"], {"dim": 0})
    tensors = b.get("tensors") or []
    return OpView(node, kind, tuple(ref_of(t) for t in tensors), {}, {"dim": int(b.get("dim") or 0)},
                  output_refs(node))


register("cat", [torch.cat, torch.concat, torch.concatenate] + aten_ops("cat", "concat", "concatenate"), _cat_form)
register("stack", [torch.stack] + aten_ops("stack"), _cat_form)


@REGISTRY.rule("cat")
def cat_rule(view: OpView, facts: Facts) -> None:
    """cat: each input is a part of the output at its offset; other dims are coupled."""
    out = view.out
    dim = view.attrs["dim"] % out.ndim
    offset = 0
    parts = []
    for t in view.inputs:
        if t is None:
            facts.barrier(view, "cat of a non-tensor", "")
            return
        if t.ndim != out.ndim:  # legacy empty tensors
            continue
        for d in range(out.ndim):
            if d != dim:
                facts.transfer(out.axis(d), t.axis(d))
        if t.shape[dim] == out.shape[dim]:
            facts.same(out.axis(dim), t.axis(dim))
        else:
            facts.part(out.axis(dim), offset, t.axis(dim))
        parts.append(t.axis(dim))
        offset += t.shape[dim]
    facts.zero(out.axis(dim), "all", parts)


@REGISTRY.rule("stack")
def stack_rule(view: OpView, facts: Facts) -> None:
    """stack: inputs are coupled dim by dim; the new dim is frozen."""
    out = view.out
    dim = view.attrs["dim"] % out.ndim
    facts.freeze(out.axis(dim), f"{view.node.name} stacks along this dim")
    for t in view.inputs:
        if t is None:
            facts.barrier(view, "stack of a non-tensor", "")
            return
        for d in range(t.ndim):
            o = out.axis(d if d < dim else d + 1)
            facts.transfer(o, t.axis(d))


def _split_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    if isinstance(node.target, torch._ops.OpOverload):
        name = node.target.overloadpacket.__name__
    b = bind(node, ["input", "size", "dim"], {"dim": 0})
    if name in ("unbind", "unbind_copy"):
        b = bind(node, ["input", "dim"], {"dim": 0})
    return OpView(node, kind, (ref_of(b.get("input")),), {}, {"dim": int(b.get("dim") or 0), "name": name},
                  output_refs(node))


register("split", [torch.split, torch.chunk, torch.tensor_split, torch.unbind]
         + methods("split", "chunk", "tensor_split", "split_with_sizes", "unbind")
         + aten_ops("split", "chunk", "split_with_sizes", "tensor_split", "unbind", "split_copy",
                    "split_with_sizes_copy", "unbind_copy", "unsafe_split"), _split_form)


@REGISTRY.rule("split")
def split_rule(view: OpView, facts: Facts) -> None:
    """split/chunk: each output is a part of the input; unbind selects, freezing the dim."""
    x = view.inputs[0]
    assert x is not None
    dim = view.attrs["dim"] % x.ndim
    if view.attrs["name"] in ("unbind", "unbind_copy"):
        facts.freeze(x.axis(dim), f"{view.node.name} unbinds this dim")
        for out in view.outputs:
            for d in range(out.ndim):
                facts.transfer(out.axis(d), x.axis(d if d < dim else d + 1))
        return
    offset = 0
    for out in view.outputs:
        for d in range(x.ndim):
            if d != dim:
                facts.transfer(out.axis(d), x.axis(d))
        facts.take(x.axis(dim), offset, offset + out.shape[dim], 1, out.axis(dim))
        offset += out.shape[dim]


@REGISTRY.rewriter("split")
def split_rewrite(view: OpView, resizer: Resizer) -> None:
    """Rewrite split/chunk into a split with the parts' new sizes when any part changed."""
    x = view.inputs[0]
    assert x is not None
    if view.attrs["name"] in ("unbind", "unbind_copy"):
        return
    dim = view.attrs["dim"] % x.ndim
    if not resizer.changed(x.axis(dim)):
        return
    sizes = [resizer.new_size(out.axis(dim)) for out in view.outputs]
    node = view.node
    if node.op == "call_method":
        target: object = "split"
    elif isinstance(node.target, torch._ops.OpOverload):
        target = torch.ops.aten.split_with_sizes.default
    else:
        target = torch.split
    resizer.set_args(node, (node.args[0], sizes, dim), {}, target=target)


REGISTRY.cost("cat", "stack")(memory_cost)
REGISTRY.cost("split")(view_cost)
