"""Shape ops: reshape family, permutes, expand/repeat, indexing and slicing, size reads and tensor factories.

Reshapes relate dims by row-major products (``512 -> 8 x 64`` makes heads and head_dim factors of the
projection's output channels; ``C x H x W -> C*H*W`` makes a Linear's input a product with the channels in
front). Slices relate a range of one dim to another (``part``). Rewriters put the new sizes into every
constant that names a changed dim.
"""

from __future__ import annotations

import builtins
import operator
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

UNBOUNDED = 2**62


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


def _size_args(node: fx.Node) -> tuple[list[Any], bool]:
    """The size list of view/reshape/expand-like calls and whether it was passed as varargs."""
    rest = list(node.args[1:])
    if "size" in node.kwargs or "shape" in node.kwargs:
        return list(node.kwargs.get("size", node.kwargs.get("shape"))), False
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
    if value.op == "call_method" and value.target == "size" and len(value.args) > 1:
        t = ref_of(value.args[0])
        return t is not None and resizer.changed(t.axis(int(value.args[1])))
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
    sizes, varargs = _size_args(node)
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
    name = _name(view.node)
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


def _name(node: fx.Node) -> str:
    t = node.target
    if isinstance(t, str):
        return t
    if isinstance(t, torch._ops.OpOverload):
        return t.overloadpacket.__name__
    return getattr(t, "__name__", str(t))


# ---------------------------------------------------------------- permutes
def _permute_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    name = _name(node)
    x = node.args[0]
    rest = list(node.args[1:])
    xr = ref_of(x)
    nd = xr.ndim if xr is not None else 0
    if name in ("permute",):
        dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
        if not dims:
            dims = node.kwargs.get("dims", [])
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
    if _name(view.node) in ("expand", "broadcast_to", "expand_copy"):
        rewrite_sizes(view, resizer, view.out)


def _repeat_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    name = _name(node)
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


# ---------------------------------------------------------------- getitem / slicing / select / index
def _getitem_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    src, idx = node.args[0], node.args[1]
    if isinstance(src, fx.Node) and isinstance(src.meta.get("val"), (tuple, list)) and isinstance(idx, int):
        refs = {r.key: r for r in output_refs(src)}
        key = f"{src.name}#{idx % len(src.meta['val'])}"
        if isinstance(node.meta.get("val"), (tuple, list)):  # a nested tuple: its elements, in order
            inner = tuple(refs.get(f"{key}.{j}") for j in range(len(node.meta["val"])))
            return OpView(node, "tuple_item", inner, {}, {"index": idx}, output_refs(node))
        return OpView(node, "tuple_item", (refs.get(key),), {}, {"index": idx}, output_refs(node))
    return OpView(node, kind, (ref_of(src),), {}, {"index": idx}, output_refs(node))


register("getitem", [operator.getitem], _getitem_form)


@REGISTRY.rule("tuple_item")
def tuple_item_rule(view: OpView, facts: Facts) -> None:
    """Element of a multi-output op: the same tensor (or, for a nested tuple, the same tensors in order)."""
    if not view.outputs:
        return
    if any(x is None for x in view.inputs) or len(view.inputs) != len(view.outputs):
        facts.barrier(view, f"{view.node.name} takes an element the analysis cannot see", "")
        return
    for x, out in zip(view.inputs, view.outputs):
        for a, b in zip(x.axes(), out.axes()):
            facts.transfer(b, a)


def expand_index(index: Any, ndim: int) -> list[Any] | None:
    """Normalize a getitem index into one entry per input dim plus ``None`` insertions; None if unsupported."""
    items = list(index) if isinstance(index, tuple) else [index]
    n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
    out: list[Any] = []
    for i in items:
        if i is Ellipsis:
            out.extend([slice(None)] * (ndim - n_real))
        else:
            out.append(i)
    while sum(1 for i in out if i is not None) < ndim:
        out.append(slice(None))
    for i in out:
        if isinstance(i, fx.Node) and isinstance(i.meta.get("val"), torch.Tensor):
            continue
        if not (i is None or isinstance(i, (int, slice))):
            return None
    return out


def _dynamic(item: slice) -> bool:
    return any(isinstance(v, fx.Node) for v in (item.start, item.stop, item.step))


@REGISTRY.rule("getitem")
def getitem_rule(view: OpView, facts: Facts) -> None:
    """Tensor indexing with ints, slices, None and Ellipsis; tensor indices are barriers."""
    x = view.inputs[0]
    if x is None or not view.outputs:
        return
    out = view.out
    items = expand_index(view.attrs["index"], x.ndim)
    if items is None:
        facts.barrier(view, "indexing with tensors or dynamic bounds", "use index_select on a frozen dim")
        return
    tensors = [i for i in items if isinstance(i, fx.Node)]
    if len(tensors) > 1 or (tensors and None in items):
        facts.barrier(view, "indexing with several index tensors", "index one dim at a time")
        return
    extra = out.ndim - sum(1 for i in items if not isinstance(i, int)) if tensors else 0
    d = j = 0
    for item in items:
        if item is None:
            j += 1
            continue
        if isinstance(item, fx.Node):  # gather along this dim: the index tensor's dims replace it
            facts.freeze(x.axis(d), f"{view.node.name} gathers along this dim")
            for k in range(j, j + extra + 1):
                facts.freeze(out.axis(k), f"{view.node.name} gathers along this dim")
            d += 1
            j += extra + 1
            continue
        if isinstance(item, int):
            facts.freeze(x.axis(d), f"{view.node.name} selects one index of this dim")
            d += 1
            continue
        if _dynamic(item):  # bounds computed at run time: only a no-op slice is understood
            if out.shape[j] == x.shape[d]:
                facts.transfer(out.axis(j), x.axis(d))
            else:
                facts.freeze(x.axis(d), f"{view.node.name} slices with run-time bounds")
                facts.freeze(out.axis(j), f"{view.node.name} slices with run-time bounds")
            d += 1
            j += 1
            continue
        start, stop, step = item.indices(x.shape[d])
        if step != 1:
            facts.freeze(x.axis(d), f"{view.node.name} takes a strided slice")
            facts.freeze(out.axis(j), f"{view.node.name} takes a strided slice")
        elif stop - start == x.shape[d]:
            facts.transfer(out.axis(j), x.axis(d))
        else:
            facts.part(x.axis(d), start, out.axis(j))
            facts.zero(out.axis(j), "all", [x.axis(d)])
        d += 1
        j += 1


def new_bounds(resizer: Resizer, axis: Axis, start: int, stop: int) -> tuple[int, int]:
    """Slice bounds after pruning: count kept elements before each bound."""
    kept = resizer.kept(axis)
    return int((kept < start).sum()), int((kept < stop).sum())


@REGISTRY.rewriter("getitem")
def getitem_rewrite(view: OpView, resizer: Resizer) -> None:
    """Shift slice bounds over removed elements; the index is rewritten in expanded form (no Ellipsis)."""
    x = view.inputs[0]
    if x is None:
        return
    items = expand_index(view.attrs["index"], x.ndim)
    if items is None:
        return
    new_items = list(items)
    changed = False
    d = 0
    for k, item in enumerate(items):
        if item is None:
            continue
        if isinstance(item, slice) and not _dynamic(item) and resizer.changed(x.axis(d)):
            start, stop, _ = item.indices(x.shape[d])
            if stop - start != x.shape[d]:
                a, b = new_bounds(resizer, x.axis(d), start, stop)
                new_items[k] = slice(a, b, None)
                changed = True
        d += 1
    if changed:
        resizer.set_args(view.node, (view.node.args[0], tuple(new_items)))


def _slice_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    name = _name(node)
    if name == "narrow":
        b = bind(node, ["input", "dim", "start", "length"])
        start = int(b["start"])
        return OpView(node, kind, (ref_of(b["input"]),), {}, {"dim": int(b["dim"]), "start": start,
                                                             "stop": start + int(b["length"]), "step": 1,
                                                             "narrow": True}, output_refs(node))
    b = bind(node, ["input", "dim", "start", "end", "step"], {"dim": 0, "start": None, "end": None, "step": 1})
    return OpView(node, kind, (ref_of(b["input"]),), {}, {"dim": int(b["dim"]), "start": b["start"],
                                                         "stop": b["end"], "step": b["step"], "narrow": False},
                  output_refs(node))


register("slice", [torch.narrow] + methods("narrow") + aten_ops("slice", "narrow", "slice_copy"), _slice_form)


@REGISTRY.rule("slice")
def slice_rule(view: OpView, facts: Facts) -> None:
    """aten.slice / narrow: a contiguous range of one dim (strided slices freeze it)."""
    x, out = view.inputs[0], view.out
    assert x is not None
    dim = view.attrs["dim"] % x.ndim
    start, stop, step = slice(view.attrs["start"], view.attrs["stop"], view.attrs["step"]).indices(x.shape[dim])
    for d in range(x.ndim):
        if d != dim:
            facts.transfer(out.axis(d), x.axis(d))
    if step != 1:
        facts.freeze(x.axis(dim), f"{view.node.name} takes a strided slice")
        facts.freeze(out.axis(dim), f"{view.node.name} takes a strided slice")
    elif stop - start == x.shape[dim]:
        facts.transfer(out.axis(dim), x.axis(dim))
    else:
        facts.part(x.axis(dim), start, out.axis(dim))
        facts.zero(out.axis(dim), "all", [x.axis(dim)])


@REGISTRY.rewriter("slice")
def slice_rewrite(view: OpView, resizer: Resizer) -> None:
    """Shift the bounds of a slice/narrow over removed elements."""
    x = view.inputs[0]
    assert x is not None
    dim = view.attrs["dim"] % x.ndim
    if not resizer.changed(x.axis(dim)):
        return
    start, stop, _ = slice(view.attrs["start"], view.attrs["stop"], view.attrs["step"]).indices(x.shape[dim])
    if stop - start == x.shape[dim]:
        return
    a, b = new_bounds(resizer, x.axis(dim), start, stop)
    args = list(view.node.args)
    if view.attrs["narrow"]:
        args = [args[0], dim, a, b - a]
    else:
        args = [args[0], dim, a, b] + ([view.attrs["step"]] if view.attrs["step"] != 1 else [])
    resizer.set_args(view.node, tuple(args), {})


def _select_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    b = bind(node, ["input", "dim", "index"])
    return OpView(node, kind, (ref_of(b["input"]),), {}, {"dim": int(b["dim"])}, output_refs(node))


register("select", [torch.select] + methods("select") + aten_ops("select", "select_copy"), _select_form)


@REGISTRY.rule("select")
def select_rule(view: OpView, facts: Facts) -> None:
    """select(dim, i): that dim is frozen; the others pass through."""
    x, out = view.inputs[0], view.out
    assert x is not None
    dim = view.attrs["dim"] % x.ndim
    facts.freeze(x.axis(dim), f"{view.node.name} selects one index of this dim")
    j = 0
    for d in range(x.ndim):
        if d != dim:
            facts.transfer(out.axis(j), x.axis(d))
            j += 1


def _index_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    name = _name(node)
    if name in ("index_select",):
        b = bind(node, ["input", "dim", "index"])
        return OpView(node, kind, (ref_of(b["input"]),), {}, {"dims": [int(b["dim"])]}, output_refs(node))
    if name in ("gather",):
        b = bind(node, ["input", "dim", "index"])
        return OpView(node, "gather", (ref_of(b["input"]), ref_of(b["index"])), {}, {"dim": int(b["dim"])},
                      output_refs(node))
    b = bind(node, ["input", "indices"])
    idx = b.get("indices") or []
    dims = [k for k, i in enumerate(idx) if i is not None]
    return OpView(node, kind, (ref_of(b["input"]),), {}, {"dims": dims}, output_refs(node))


register("index", [torch.index_select, torch.gather] + methods("index_select", "gather")
         + aten_ops("index", "index_select", "gather"), _index_form)


@REGISTRY.rule("gather")
def gather_rule(view: OpView, facts: Facts) -> None:
    """gather(x, dim, index): the gathered dim is frozen; other dims of x, index and out are coupled."""
    x, index = view.inputs
    out = view.out
    assert x is not None
    dim = view.attrs["dim"] % x.ndim
    facts.freeze(x.axis(dim), f"{view.node.name} gathers along this dim")
    facts.freeze(out.axis(dim), f"{view.node.name} gathers along this dim")
    for d in range(x.ndim):
        if d != dim and x.shape[d] == out.shape[d]:
            facts.transfer(out.axis(d), x.axis(d))
        if index is not None and d != dim and index.shape[d] == out.shape[d]:
            facts.same(index.axis(d), out.axis(d))


@REGISTRY.rule("index")
def index_rule(view: OpView, facts: Facts) -> None:
    """Gather by an index tensor along one dim: that dim is frozen, dims before and after pass through."""
    x, out = view.inputs[0], view.out
    assert x is not None
    dims = sorted(d % x.ndim for d in view.attrs["dims"])
    for d in dims:
        facts.freeze(x.axis(d), f"{view.node.name} gathers along this dim")
    kept = [d for d in range(x.ndim) if d not in dims]
    n_new = out.ndim - len(kept)
    adjacent = dims == list(range(dims[0], dims[-1] + 1))
    first = dims[0] if adjacent else 0
    new_dims = range(first, first + n_new)
    rest = [d for d in range(out.ndim) if d not in new_dims]
    for d in new_dims:
        facts.freeze(out.axis(d), f"{view.node.name} gathers along this dim")
    for o, d in zip(rest, kept):
        facts.transfer(out.axis(o), x.axis(d))


# ---------------------------------------------------------------- size reads and factories
def _no_tensor_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    return OpView(node, kind, (ref_of(node.args[0]) if node.args else None,), {}, {}, output_refs(node))


def _getattr_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    attr = node.args[1] if len(node.args) > 1 else None
    x = ref_of(node.args[0])
    if x is not None and isinstance(node.meta.get("val"), torch.Tensor):
        if attr in ("T", "mT", "mH", "H"):
            perm = list(range(x.ndim))
            if attr in ("T", "H"):
                perm.reverse()
            elif x.ndim >= 2:
                perm[-1], perm[-2] = perm[-2], perm[-1]
            return OpView(node, "permute", (x,), {}, {"perm": perm}, output_refs(node))
        if attr in ("data", "real"):
            return OpView(node, "unary_zero", (x,), {}, {}, output_refs(node))
        return OpView(node, "unknown", (x,), {}, {}, output_refs(node))
    return OpView(node, kind, (x,), {}, {}, output_refs(node))


register("size_read", [builtins.getattr], _getattr_form)
register("size_read", [torch.numel] + methods("size", "dim", "numel", "get_device", "nelement")
         + aten_ops("sym_size", "sym_numel", "sym_stride", "size", "dim", "_assert_tensor_metadata", "_assert_async",
                    "_assert_scalar", "sym_constrain_range_for_size", "_functional_assert_async"), _no_tensor_form)


@REGISTRY.rule("size_read")
def size_read_rule(view: OpView, facts: Facts) -> None:
    """Reading a size couples nothing; the rewriters of the ops that use the size put in new values."""


FACTORIES = ["zeros", "ones", "full", "empty", "arange", "rand", "randn", "randint", "linspace", "eye",
             "tensor", "scalar_tensor", "as_tensor"]
LIKE = ["zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like"]
register("factory", [getattr(torch, n) for n in FACTORIES] + methods("new_zeros", "new_ones", "new_full",
                                                                     "new_empty", "new_tensor")
         + aten_ops(*FACTORIES, "new_zeros", "new_ones", "new_full", "new_empty", "full_like"), _no_tensor_form)
register("like", [getattr(torch, n) for n in LIKE] + aten_ops(*LIKE, "fill", "fill_", "zero_", "zero")
         + methods("fill_", "zero_"), _no_tensor_form)


POSITIONAL = ("arange", "linspace", "eye", "tensor", "scalar_tensor", "as_tensor", "randint", "new_tensor",
              "rand", "randn")


@REGISTRY.rule("factory")
def factory_rule(view: OpView, facts: Facts) -> None:
    """Constant-valued factories (zeros, ones, full) resize freely, and zeros are zero in every channel;
    position- or data-valued ones are frozen."""
    if _name(view.node) in POSITIONAL:
        for out in view.outputs:
            for a in out.axes():
                facts.freeze(a, f"{view.node.name} holds position-dependent values")
    elif _name(view.node) in ("zeros", "new_zeros"):
        for out in view.outputs:
            for a in out.axes():
                facts.zero(a, "always", ())


@REGISTRY.rewriter("factory")
def factory_rewrite(view: OpView, resizer: Resizer) -> None:
    """Factories given an explicit size list get the new sizes of changed dims."""
    if not view.outputs or _name(view.node) in POSITIONAL:
        return
    out = view.out
    sizes, _ = _size_args(view.node) if view.node.op == "call_method" else (list(view.node.args[:1]), False)
    if view.node.op != "call_method" and len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
        new = [resizer.new_size(out.axis(d)) if isinstance(s, int) else s for d, s in enumerate(sizes[0])]
        if list(new) != list(sizes[0]):
            resizer.set_args(view.node, (new, *view.node.args[1:]))
    elif view.node.op != "call_method" and len(view.node.args) == out.ndim and _name(view.node) != "full":
        # torch.zeros(d0, d1, ...): the sizes as separate arguments
        new_args = tuple(resizer.new_size(out.axis(d)) if isinstance(s, int) else s
                         for d, s in enumerate(view.node.args))
        if new_args != tuple(view.node.args):
            resizer.set_args(view.node, new_args)
    elif view.node.op == "call_method" and len(sizes) == out.ndim:
        rewrite_sizes(view, resizer, out)


@REGISTRY.rule("like")
def like_rule(view: OpView, facts: Facts) -> None:
    """zeros_like and friends: a new tensor with the same dims as the input."""
    x = view.inputs[0]
    if x is None or not view.outputs:
        return
    for a, b in zip(x.axes(), view.out.axes()):
        facts.same(a, b)


# ---------------------------------------------------------------- costs
REGISTRY.cost("reshape", "permute", "expand", "getitem", "tuple_item", "slice", "select", "size_read")(view_cost)
REGISTRY.cost("repeat", "like", "factory", "index", "gather")(memory_cost)
