"""Reductions and normalizing maps over a dim: sum, mean, max, var, norm, softmax, cumsum, argmax, topk.

A reduced dim is a sink: exact for sums and p-norms with p >= 0 (zero channels add nothing), not exact for
statistics whose result depends on how many channels there are or on their sign (mean, variance, softmax, max).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fxopt.ops.cost import OpCost, Sizes, elementwise_cost, memory_cost, op_cost, out_numel
from fxopt.ops.elementwise import binary_form
from fxopt.ops.facts import Facts
from fxopt.ops.forms import aten_ops, bind, int_list, methods, register
from fxopt.ops.registry import REGISTRY
from fxopt.ops.view import OpView, output_refs, ref_of

EXACT_REDUCTIONS = {"sum", "nansum"}
REDUCTIONS = ["sum", "nansum", "mean", "nanmean", "amax", "amin", "var", "std", "norm", "logsumexp", "prod",
              "argmax", "argmin", "all", "any", "var_mean", "std_mean", "max", "min", "median", "linalg_vector_norm"]


def _reduce_form(node, gm, kind: str) -> OpView:  # type: ignore[no-untyped-def]
    b = bind(node, ["input", "dim", "keepdim"])
    name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
    if name in ("max", "min") and ref_of(b.get("dim", b.get("other"))) is not None:
        return binary_form(node, gm, "add")  # torch.max(a, b) / aten.max.other: elementwise, like maximum
    dim = b.get("dim")
    order: object = None
    if name in ("norm", "linalg_vector_norm"):
        if "p" not in node.kwargs and "ord" not in node.kwargs and len(node.args) > 1:
            b = bind(node, ["input", "p", "dim", "keepdim"])
            dim = b.get("dim")
        order = b.get("p", b.get("ord", 2))
    if isinstance(dim, str) or (dim is not None and not isinstance(dim, (int, list, tuple))):
        dim = "unsupported"
    return OpView(node, kind, (ref_of(b.get("input")),), {},
                  {"dim": dim, "keepdim": bool(b.get("keepdim", False)), "op": name, "p": order}, output_refs(node))


def zero_blind_norm(p: object) -> bool:
    """Whether a p-norm ignores zero entries: ``sum |x|^p`` (p > 0), max |x| (inf) and the count of non-zeros
    (p = 0) do; negative orders (and -inf, the min) do not."""
    if p in (None, "fro"):
        return True
    return isinstance(p, (int, float)) and not isinstance(p, bool) and p >= 0


register("reduce", [getattr(torch, n) for n in REDUCTIONS if hasattr(torch, n)] + methods(*REDUCTIONS)
         + aten_ops(*REDUCTIONS), _reduce_form)


@REGISTRY.rule("reduce")
def reduce_rule(view: OpView, facts: Facts) -> None:
    """Reduction over dims: reduced dims are sinks (exact for sums), kept dims pass through."""
    x = view.inputs[0]
    assert x is not None
    op = view.attrs["op"]
    if view.attrs["dim"] == "unsupported":
        facts.barrier(view, f"{op} with a non-integer dim", "pass integer dims")
        return
    dims = {d % x.ndim for d in int_list(view.attrs["dim"])} if view.attrs["dim"] is not None else set(range(x.ndim))
    if op in ("max", "min", "median") and view.attrs["dim"] is None:
        dims = set(range(x.ndim))
    keep = view.attrs["keepdim"]
    for d in sorted(dims):
        exact = op in EXACT_REDUCTIONS or (op in ("norm", "linalg_vector_norm") and zero_blind_norm(view.attrs["p"]))
        facts.sink(x.axis(d), exact, f"{view.node.name} takes the {op} over this dim"
                   + ("" if exact else ": removing channels changes the result"))
    for out in view.outputs:
        j = 0
        for d in range(x.ndim):
            if d in dims:
                j += 1 if keep else 0
                continue
            if j < out.ndim and out.shape[j] == x.shape[d]:
                facts.same(out.axis(j), x.axis(d))
                if op not in ("argmax", "argmin", "logsumexp", "all", "any"):
                    facts.zero(out.axis(j), "all", [x.axis(d)])
            j += 1


def _softmax_form(node, gm, kind: str) -> OpView:  # type: ignore[no-untyped-def]
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        return OpView(node, kind, (ref_of(node.args[0]),), {}, {"dim": m.dim}, output_refs(node), m)
    b = bind(node, ["input", "dim"])
    return OpView(node, kind, (ref_of(b.get("input")),), {}, {"dim": b.get("dim")}, output_refs(node))


register("softmax", [nn.Softmax, nn.LogSoftmax, F.softmax, F.log_softmax, torch.softmax, torch.log_softmax,
                     torch.cumsum, torch.cumprod, torch.logcumsumexp]
         + methods("softmax", "log_softmax", "cumsum", "cumprod")
         + aten_ops("softmax", "_softmax", "log_softmax", "_log_softmax", "cumsum", "cumprod", "_safe_softmax"),
         _softmax_form)


@REGISTRY.rule("softmax")
def softmax_rule(view: OpView, facts: Facts) -> None:
    """softmax/cumsum along a dim: that dim mixes its channels (inexact sink); other dims are coupled."""
    x, out = view.inputs[0], view.out
    assert x is not None
    if view.attrs.get("dim") is None:
        facts.barrier(view, "softmax without dim", "pass dim explicitly")
        return
    dim = int(view.attrs["dim"]) % x.ndim
    for d in range(x.ndim):
        facts.same(out.axis(d), x.axis(d))
    facts.sink(x.axis(dim), False, f"{view.node.name} normalizes along this dim")


def _topk_form(node, gm, kind: str) -> OpView:  # type: ignore[no-untyped-def]
    name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
    names = ["input", "k", "dim"] if name == "topk" else ["input", "dim"]
    b = bind(node, names)
    return OpView(node, kind, (ref_of(b.get("input")),), {}, {"dim": b.get("dim", -1)}, output_refs(node))


register("sort", [torch.topk, torch.sort, torch.argsort] + methods("topk", "sort", "argsort")
         + aten_ops("topk", "sort", "argsort"), _topk_form)


@REGISTRY.rule("sort")
def sort_rule(view: OpView, facts: Facts) -> None:
    """topk/sort: the sorted dim is frozen; other dims are coupled."""
    x = view.inputs[0]
    assert x is not None
    dim = int(view.attrs["dim"] if view.attrs["dim"] is not None else -1) % x.ndim
    facts.freeze(x.axis(dim), f"{view.node.name} reorders this dim")
    for out in view.outputs:
        for d in range(x.ndim):
            if d == dim:
                facts.freeze(out.axis(d), f"{view.node.name} reorders this dim")
            else:
                facts.same(out.axis(d), x.axis(d))


def _diff_form(node, gm, kind: str) -> OpView:  # type: ignore[no-untyped-def]
    b = bind(node, ["input", "n", "dim"], {"dim": -1})
    return OpView(node, kind, (ref_of(b.get("input")),), {}, {"dim": b.get("dim", -1)}, output_refs(node))


register("sort", [torch.diff] + methods("diff") + aten_ops("diff"), _diff_form)


def _normalize_form(node, gm, kind: str) -> OpView:  # type: ignore[no-untyped-def]
    b = bind(node, ["input", "p", "dim"], {"dim": 1, "p": 2.0})
    return OpView(node, kind, (ref_of(b.get("input")),), {}, {"dim": b.get("dim", 1), "p": b.get("p", 2.0)},
                  output_refs(node))


register("normalize", [F.normalize], _normalize_form)


@REGISTRY.rule("normalize")
def normalize_rule(view: OpView, facts: Facts) -> None:
    """F.normalize: x / max(||x||_p, eps) along a dim. Zero channels stay zero; along the normalized dim the norm
    ignores them for p >= 0 (an exact sink), otherwise removing them changes it."""
    x, out = view.inputs[0], view.out
    assert x is not None
    dim = int(view.attrs["dim"]) % x.ndim
    for d in range(x.ndim):
        facts.same(out.axis(d), x.axis(d))
        facts.zero(out.axis(d), "all", [x.axis(d)])
    exact = zero_blind_norm(view.attrs["p"])
    facts.sink(x.axis(dim), exact, f"{view.node.name} divides by the norm over this dim"
               + ("" if exact else ": removing channels changes the norm"))


@REGISTRY.cost("reduce")
def reduce_cost(view: OpView, sizes: Sizes) -> OpCost:
    """Reduction: one FLOP per input element."""
    x = view.inputs[0]
    return op_cost(view, sizes, "elementwise", sizes.numel(x) if x is not None else out_numel(view, sizes))


@REGISTRY.cost("softmax")
def softmax_cost(view: OpView, sizes: Sizes) -> OpCost:
    """softmax and cumulative ops: 5 FLOPs per output element (max, subtract, exp, sum, divide)."""
    return op_cost(view, sizes, "norm", 5 * out_numel(view, sizes))


REGISTRY.cost("normalize")(elementwise_cost)
REGISTRY.cost("sort")(memory_cost)
