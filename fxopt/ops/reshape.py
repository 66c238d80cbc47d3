"""Reshape-family ops: view/reshape/flatten/unflatten, permutes, expand and repeat.

Reshapes relate dims by row-major products (``512 -> 8 x 64`` makes heads and head_dim factors of the
projection's output channels; ``C x H x W -> C*H*W`` makes a Linear's input a product with the channels in
front). Rewriters put the new sizes into every constant that names a changed dim (``rewrite_sizes``, also used by
the factories of ``fxopt.ops.factories``).
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from fxopt.ops.cost import memory_cost, view_cost
from fxopt.ops.facts import Facts
from fxopt.ops.forms import aten_ops, bind, int_list, methods, register
from fxopt.ops.registry import REGISTRY
from fxopt.ops.resize import Resizer
from fxopt.ops.view import Axis, OpView, TensorRef, output_refs, ref_of


# ---------------------------------------------------------------- reshape family
def _reshape_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        return OpView(node, kind, (ref_of(node.args[0]),), {}, {}, output_refs(node), m)
    x = node.args[0] if node.args else node.kwargs.get("input", node.kwargs.get("self"))
    return OpView(node, kind, (ref_of(x),), {}, {}, output_refs(node))


register("reshape", [torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze, torch.unflatten, nn.Flatten,
                     nn.Unflatten, torch.ravel]
         + methods("view", "reshape", "flatten", "squeeze", "unsqueeze", "unflatten", "view_as", "reshape_as",
                   "ravel", "squeeze_", "unsqueeze_")
         + aten_ops("view", "reshape", "_unsafe_view", "flatten", "squeeze", "unsqueeze", "unflatten",
                    "squeeze_copy", "unsqueeze_copy", "view_copy"), _reshape_form)


def align_reshape(src: tuple[int, ...], dst: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of non-unit dims of ``src`` and ``dst`` with equal products; None if the totals differ."""
    s = [d for d, n in enumerate(src) if n != 1]
    t = [d for d, n in enumerate(dst) if n != 1]
    chunks: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(s) and j < len(t):
        a, b = [s[i]], [t[j]]
        pa, pb = src[s[i]], dst[t[j]]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb:
                if i >= len(s):
                    return None
                a.append(s[i])
                pa *= src[s[i]]
                i += 1
            else:
                if j >= len(t):
                    return None
                b.append(t[j])
                pb *= dst[t[j]]
                j += 1
        chunks.append((a, b))
    if i != len(s) or j != len(t):
        return None
    return chunks


@REGISTRY.rule("reshape")
def reshape_rule(view: OpView, facts: Facts) -> None:
    """Reshape-like ops: dims are related by row-major products; zero passes through."""
    x, out = view.inputs[0], view.out
    assert x is not None
    chunks = align_reshape(x.shape, out.shape)
    if chunks is None:
        facts.barrier(view, f"{view.node.name} changes the number of elements", "check the traced shapes")
        return
    for a, b in chunks:
        src = [x.axis(d) for d in a]
        dst = [out.axis(d) for d in b]
        if facts.product(src, dst):
            for o in dst:
                facts.zero(o, "all", src)


def size_args(node: fx.Node) -> tuple[list[Any], bool]:
    """The size list of view/reshape/expand-like calls and whether it was passed as varargs."""
    rest = list(node.args[1:])
    if "size" in node.kwargs or "shape" in node.kwargs:
        size = node.kwargs.get("size", node.kwargs.get("shape"))
        return (list(size) if isinstance(size, (list, tuple)) else [size]), False
    if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
        return list(rest[0]), False
    return rest, True


def reads_changed_size(value: Any, resizer: Resizer, depth: int = 0) -> bool:
    """Whether a run-time size expression (``C // heads`` from ``x.shape``) reads a dim that pruning changes."""
    if not isinstance(value, fx.Node) or depth > 32:
        return False
    if value.op == "call_function" and value.target is operator.getitem and isinstance(value.args[1], int):
        src = value.args[0]
        if isinstance(src, fx.Node) and _is_whole_shape_read(src):
            t = ref_of(src.args[0])
            return t is not None and resizer.changed(t.axis(value.args[1]))
    if value.op == "call_function" and value.target is torch.ops.aten.sym_size.int \
            and isinstance(value.args[1], int):  # export's size reads
        t = ref_of(value.args[0])
        return t is not None and resizer.changed(t.axis(value.args[1]))
    if value.op == "call_method" and value.target == "size" and len(value.args) > 1 and isinstance(value.args[1], int):
        t = ref_of(value.args[0])
        return t is not None and resizer.changed(t.axis(value.args[1]))
    t = ref_of(value)
    if t is not None:
        return any(resizer.changed(a) for a in t.axes())
    return any(reads_changed_size(a, resizer, depth + 1) for a in value.all_input_nodes)


def _is_whole_shape_read(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target is builtins.getattr and node.args[1:] == ("shape",):
        return True
    return node.op == "call_method" and node.target == "size" and len(node.args) == 1 and not node.kwargs


def rewrite_sizes(view: OpView, resizer: Resizer, out: TensorRef) -> None:
    """Replace the size entries of changed output dims by their new sizes (``-1`` entries are left alone)."""
    node = view.node
    sizes, varargs = size_args(node)
    if len(sizes) != out.ndim:
        return
    new = list(sizes)
    changed = False
    for d, s in enumerate(sizes):
        n = resizer.new_size(out.axis(d))
        resized = n != out.shape[d] and not (isinstance(s, int) and s == -1)
        if resized or reads_changed_size(s, resizer):
            new[d] = n
            changed = True
    if not changed:
        return
    if "size" in node.kwargs or "shape" in node.kwargs:
        key = "size" if "size" in node.kwargs else "shape"
        resizer.set_args(node, node.args, {**node.kwargs, key: new})
    elif varargs:
        resizer.set_args(node, (node.args[0], *new))
    else:
        resizer.set_args(node, (node.args[0], new, *node.args[2:]))


@REGISTRY.rewriter("reshape")
def reshape_rewrite(view: OpView, resizer: Resizer) -> None:
    """view/reshape: put new sizes in the target shape; flatten/squeeze need nothing; unflatten's sizes."""
    name = op_name(view.node)
    if name in ("view", "reshape", "_unsafe_view", "view_copy"):
        rewrite_sizes(view, resizer, view.out)
    elif name == "unflatten":
        x, out = view.inputs[0], view.out
        assert x is not None
        b = bind(view.node, ["input", "dim", "sizes"])
        dim = int(b["dim"]) % x.ndim
        sizes = list(b["sizes"])
        new = [resizer.new_size(out.axis(dim + k)) if s != -1 else -1 for k, s in enumerate(sizes)]
        if new != sizes:
            resizer.set_args(view.node, (view.node.args[0], dim, new), {})
    elif isinstance(view.module, nn.Unflatten):
        out = view.out
        dim = view.module.dim % out.ndim
        resizer.set_module_attr(view, "unflattened_size", tuple(resizer.new_size(out.axis(dim + k))
                                                               for k in range(len(view.module.unflattened_size))))


def op_name(node: fx.Node) -> str:
    t = node.target
    if isinstance(t, str):
        return t
    if isinstance(t, torch._ops.OpOverload):
        return t.overloadpacket.__name__
    return getattr(t, "__name__", str(t))


# ---------------------------------------------------------------- permutes
def _permute_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    name = op_name(node)
    x = node.args[0]
    rest = list(node.args[1:])
    xr = ref_of(x)
    nd = xr.ndim if xr is not None else 0
    if name in ("permute",):
        dims: Sequence[Any] = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
        if not dims:
            given = node.kwargs.get("dims", [])
            dims = given if isinstance(given, (list, tuple)) else [given]
        perm = [int(d) % nd for d in dims]
    elif name in ("transpose", "swapaxes", "transpose_", "swapdims"):
        b = bind(node, ["input", "dim0", "dim1"])
        d0, d1 = int(b["dim0"]) % nd, int(b["dim1"]) % nd
        perm = list(range(nd))
        perm[d0], perm[d1] = perm[d1], perm[d0]
    elif name in ("t", "numpy_T"):
        perm = list(reversed(range(nd)))
    elif name in ("movedim", "moveaxis"):
        b = bind(node, ["input", "source", "destination"])
        src, dst = int_list(b["source"]), int_list(b["destination"])
        src = [s % nd for s in src]
        dst = [d % nd for d in dst]
        rest_dims = [d for d in range(nd) if d not in src]
        perm = [-1] * nd
        for s, d in zip(src, dst):
            perm[d] = s
        it = iter(rest_dims)
        perm = [p if p >= 0 else next(it) for p in perm]
    else:
        perm = list(range(nd))
    return OpView(node, kind, (xr,), {}, {"perm": perm}, output_refs(node))


register("permute", [torch.permute, torch.transpose, torch.swapaxes, torch.t, torch.movedim, torch.moveaxis]
         + methods("permute", "transpose", "swapaxes", "t", "movedim", "moveaxis", "transpose_", "swapdims")
         + aten_ops("permute", "transpose", "t", "movedim", "swapaxes", "permute_copy", "transpose_copy"),
         _permute_form)


@REGISTRY.rule("permute")
def permute_rule(view: OpView, facts: Facts) -> None:
    """Permutes: output dim i is input dim perm[i]."""
    x, out = view.inputs[0], view.out
    assert x is not None
    for i, p in enumerate(view.attrs["perm"]):
        facts.transfer(out.axis(i), x.axis(p))


# ---------------------------------------------------------------- expand / repeat
def _expand_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    x = node.args[0]
    other = node.args[1] if len(node.args) > 1 else None
    return OpView(node, kind, (ref_of(x), ref_of(other)), {}, {}, output_refs(node))


register("expand", [torch.broadcast_to] + methods("expand", "expand_as", "broadcast_to")
         + aten_ops("expand", "expand_as", "broadcast_to", "expand_copy"), _expand_form)


@REGISTRY.rule("expand")
def expand_rule(view: OpView, facts: Facts) -> None:
    """expand: equal-size aligned dims pass through; broadcast dims are new, never zero-driven."""
    x, out = view.inputs[0], view.out
    assert x is not None
    lead = out.ndim - x.ndim
    for d in range(x.ndim):
        if x.shape[d] == out.shape[lead + d] and x.shape[d] != 1:
            facts.transfer(out.axis(lead + d), x.axis(d))
        elif x.shape[d] == 1 and out.shape[lead + d] > 1:
            facts.tag(out.axis(lead + d), "repeat")


@REGISTRY.rewriter("expand")
def expand_rewrite(view: OpView, resizer: Resizer) -> None:
    """expand: new sizes for changed dims."""
    if op_name(view.node) in ("expand", "broadcast_to", "expand_copy"):
        rewrite_sizes(view, resizer, view.out)


def _repeat_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    name = op_name(node)
    if name == "repeat_interleave":
        b = bind(node, ["input", "repeats", "dim"])
        return OpView(node, kind, (ref_of(b["input"]),), {}, {"repeats": b.get("repeats"), "dim": b.get("dim"),
                                                                 "interleave": True}, output_refs(node))
    rest = list(node.args[1:])
    reps = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
    return OpView(node, kind, (ref_of(node.args[0]),), {}, {"repeats": list(reps), "interleave": False},
                  output_refs(node))


register("repeat", [torch.repeat_interleave, torch.tile] + methods("repeat", "repeat_interleave", "tile")
         + aten_ops("repeat", "repeat_interleave", "tile"), _repeat_form)


@REGISTRY.rule("repeat")
def repeat_rule(view: OpView, facts: Facts) -> None:
    """repeat tiles a dim (``out = copies x in``); repeat_interleave repeats each element (``in x copies``)."""
    x, out = view.inputs[0], view.out
    assert x is not None
    if view.attrs["interleave"]:
        dim, reps = view.attrs["dim"], view.attrs["repeats"]
        if dim is None or not isinstance(reps, int):
            facts.barrier(view, "repeat_interleave without an int count and dim", "pass repeats=int and dim")
            return
        dim %= x.ndim
        for d in range(x.ndim):
            if d == dim:
                copies = Axis(f"{view.node.name}:copies", 0, reps)
                facts.tag(copies, "repeat")
                facts.product([out.axis(d)], [x.axis(d), copies])
                facts.zero(out.axis(d), "all", [x.axis(d)])
            else:
                facts.transfer(out.axis(d), x.axis(d))
        return
    lead = out.ndim - x.ndim
    for d in range(out.ndim):
        xd = d - lead
        if xd < 0:
            continue
        if out.shape[d] == x.shape[xd]:
            facts.transfer(out.axis(d), x.axis(xd))
        else:
            copies = Axis(f"{view.node.name}:copies{d}", 0, out.shape[d] // x.shape[xd])
            facts.tag(copies, "repeat")
            facts.product([out.axis(d)], [copies, x.axis(xd)])
            facts.zero(out.axis(d), "all", [x.axis(xd)])


@REGISTRY.rewriter("repeat")
def repeat_rewrite(view: OpView, resizer: Resizer) -> None:
    """Put the new number of copies into repeat_interleave / repeat when the copies factor shrank."""
    x, out = view.inputs[0], view.out
    assert x is not None
    node = view.node
    if view.attrs["interleave"]:
        copies = Axis(f"{node.name}:copies", 0, view.attrs["repeats"])
        if resizer.changed(copies):
            resizer.set_arg(OpView(node, view.kind, view.inputs, {}, {"_argnames": ("input", "repeats", "dim")}),
                            "repeats", resizer.new_size(copies))
        return
    lead = out.ndim - x.ndim
    reps = list(view.attrs["repeats"])
    new = list(reps)
    for d in range(out.ndim):
        xd = d - lead
        if xd >= 0 and out.shape[d] != x.shape[xd]:
            copies = Axis(f"{node.name}:copies{d}", 0, out.shape[d] // x.shape[xd])
            new[d] = resizer.new_size(copies)
    if new != reps:
        resizer.set_args(node, (node.args[0], new), {})


# ---------------------------------------------------------------- costs
REGISTRY.cost("reshape", "permute", "expand")(view_cost)
REGISTRY.cost("repeat")(memory_cost)
