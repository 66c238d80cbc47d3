"""Which nodes compute their input unchanged: the table cleanup uses to remove them.

Two kinds of rules. Op rules are registered on the real op objects (``nn.Identity``, ``F.dropout``,
``Tensor.contiguous``, ``aten.clone`` ...) by ``identity_rule``, because within one OpView kind
(``unary_zero``) ReLU and Identity differ. Shape rules are written against OpView kinds: a reshape, permute,
expand or slice whose output has the input's shape, dtype and strides is a no-op, unless a reshape or expand
takes run-time sizes other than the input's own (``expand(mask, [batch, ...])`` is a no-op only at the example's
batch size: kept, so the graph still runs at other sizes).

A rule returns ``None`` when the node is an identity, a reason string when an op that usually is one is not
(dropout in training mode, a copy that protects an in-place write), and ``""`` when the node simply computes
something else (a cast that changes the dtype); only reasons are reported.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from fxopt.ops.forms import aten_ops, methods
from fxopt.ops.reshape import size_args
from fxopt.passes.match import call_kwargs, op_of, view_of

IdentityRule = Callable[[fx.Node, fx.GraphModule], "str | None"]
IDENTITIES: dict[Any, IdentityRule] = {}
NOOP_KINDS = frozenset({"reshape", "permute", "expand", "slice"})


def identity_rule(*ops: Any) -> Callable[[IdentityRule], IdentityRule]:
    """Decorator registering a rule that says when nodes running ``ops`` return their input unchanged."""

    def deco(fn: IdentityRule) -> IdentityRule:
        for op in ops:
            if op is not None:
                IDENTITIES[op] = fn
        return fn

    return deco


def _val(node: Any) -> torch.Tensor | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val if isinstance(val, torch.Tensor) else None


def same_value(node: fx.Node, src: fx.Node) -> str | None:
    """Reason why ``node``'s value differs in shape, dtype, device or strides from ``src``'s, else None."""
    a, b = _val(node), _val(src)
    if a is None or b is None:
        return "no tensor value recorded"
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return ""
    if a.numel() > 1 and a.stride() != b.stride():
        return ""
    return None


INPLACE_OPERATORS = frozenset({
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv, operator.imod,
    operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift, operator.irshift,
    operator.imatmul, operator.setitem,
})


def is_mutating(node: fx.Node) -> bool:
    """Whether ``node`` writes into one of its inputs (in-place method, mutable ATen op, augmented assignment)."""
    if node.op == "call_method":
        name = str(node.target)
        return name.endswith("_") and not name.endswith("__")
    if node.op == "call_function":
        target = node.target
        if isinstance(target, torch._ops.OpOverload):
            return bool(target._schema.is_mutable)
        return target in INPLACE_OPERATORS
    return False


def _no_mutation(node: fx.Node, src: fx.Node) -> str | None:
    for n in (node, src):
        for user in n.users:
            if is_mutating(user):
                return f"{user.name} writes into it in place; the copy protects the other tensor"
    return None


@identity_rule(nn.Identity)
def _always(node: fx.Node, gm: fx.GraphModule) -> str | None:
    return None


@identity_rule(nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
def _dropout_module(node: fx.Node, gm: fx.GraphModule) -> str | None:
    m = gm.get_submodule(str(node.target))
    return None if not m.training or m.p == 0 else "dropout module is in training mode"


@identity_rule(F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
               torch.dropout, torch.alpha_dropout, torch.feature_dropout, torch.feature_alpha_dropout,
               *aten_ops("dropout", "alpha_dropout", "feature_dropout", "feature_alpha_dropout"))
def _dropout_fn(node: fx.Node, gm: fx.GraphModule) -> str | None:
    kw = call_kwargs(node)
    if kw is None:
        return "cannot read the dropout's arguments"
    training = kw.get("training", kw.get("train", True))
    if isinstance(training, fx.Node):
        return "training flag is computed at run time"
    return None if not training or kw.get("p", 0.5) == 0 else "dropout runs in training mode"


@identity_rule(*methods("contiguous"))
def _contiguous(node: fx.Node, gm: fx.GraphModule) -> str | None:
    src = node.args[0]
    fmt = node.kwargs.get("memory_format", node.args[1] if len(node.args) > 1 else torch.contiguous_format)
    val = _val(src)
    if val is None:
        return "no tensor value recorded"
    if not isinstance(fmt, torch.memory_format):
        return f"memory format {fmt!r} is not a constant"
    return None if val.is_contiguous(memory_format=fmt) else ""


@identity_rule(torch.clone, *methods("clone"), *aten_ops("clone", "lift_fresh_copy", "alias"),
               *methods("to", "type_as", "float", "double", "half", "bfloat16", "type"), *aten_ops("_to_copy", "to"))
def _copy_or_cast(node: fx.Node, gm: fx.GraphModule) -> str | None:
    src = node.args[0]
    if not isinstance(src, fx.Node):
        return "input is not a graph value"
    differs = same_value(node, src)
    return differs if differs is not None else _no_mutation(node, src)


def identity_input(node: fx.Node, gm: fx.GraphModule) -> tuple[fx.Node | None, str | None]:
    """``(input node, None)`` when ``node`` returns its input unchanged, else ``(None, reason)``."""
    op = op_of(node, gm)
    rule = IDENTITIES.get(op)
    if rule is not None:
        reason = rule(node, gm)
        src = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
        if reason is None and isinstance(src, fx.Node):
            return src, None
        return None, reason if reason != "" else None
    view = view_of(node, gm)
    if view is None or view.kind not in NOOP_KINDS or not view.inputs or view.inputs[0] is None:
        return None, None
    src = view.inputs[0].node
    if src is None:
        return None, None
    if view.kind == "permute" and list(view.attrs.get("perm", [])) != list(range(view.inputs[0].ndim)):
        return None, None
    if view.kind in ("reshape", "expand") and not _sized_by(node, src):
        return None, None
    reason = same_value(node, src)
    return (src, None) if reason is None else (None, None)


def _sized_by(node: fx.Node, src: fx.Node) -> bool:
    """Whether every run-time entry of a reshape's or expand's size list reads ``src``'s own size at that dim,
    so that the output has the input's shape at any input size."""
    sizes, _ = size_args(node)
    return all(not isinstance(s, fx.Node) or _size_read(s) == (src, d) for d, s in enumerate(sizes))


def _size_read(node: fx.Node) -> tuple[Any, Any]:
    """``(tensor, dim)`` when ``node`` reads one size of a tensor (``x.size(d)``, ``x.shape[d]``, export's
    ``sym_size``), else ``(None, None)``."""
    if node.op == "call_function" and node.target is torch.ops.aten.sym_size.int:
        return node.args[0], node.args[1]
    if node.op == "call_method" and node.target == "size" and len(node.args) == 2:
        return node.args[0], node.args[1]
    if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[0], fx.Node):
        whole = node.args[0]
        if (whole.op == "call_method" and whole.target == "size" and len(whole.args) == 1) or (
                whole.op == "call_function" and whole.target is getattr and whole.args[1:] == ("shape",)):
            return whole.args[0], node.args[1]
    return None, None
