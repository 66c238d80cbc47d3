"""Indexing ops: tuple items, getitem, slicing, select, gather and index.

Slices relate a range of one dim to another (``part``); a dim that is indexed by data (gather, index) is frozen.
Rewriters move slice bounds when the sliced dim loses channels.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx

from fxopt.ops.cost import memory_cost, view_cost
from fxopt.ops.facts import Facts
from fxopt.ops.forms import aten_ops, bind, methods, register
from fxopt.ops.registry import REGISTRY
from fxopt.ops.reshape import op_name
from fxopt.ops.resize import Resizer
from fxopt.ops.view import Axis, OpView, output_refs, ref_of


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
    inputs = [x for x in view.inputs if x is not None]
    if len(inputs) != len(view.inputs) or len(inputs) != len(view.outputs):
        facts.barrier(view, f"{view.node.name} takes an element the analysis cannot see", "")
        return
    for x, out in zip(inputs, view.outputs):
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
        facts.take(x.axis(d), start, stop, step, out.axis(j))
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
    name = op_name(node)
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
    for d in range(x.ndim):
        if d != dim:
            facts.transfer(out.axis(d), x.axis(d))
    start, stop, step = slice(view.attrs["start"], view.attrs["stop"], view.attrs["step"]).indices(x.shape[dim])
    facts.take(x.axis(dim), start, stop, step, out.axis(dim))


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
    name = op_name(node)
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


# ---------------------------------------------------------------- costs
REGISTRY.cost("getitem", "tuple_item", "slice", "select")(view_cost)
REGISTRY.cost("index", "gather")(memory_cost)
