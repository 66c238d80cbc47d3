"""Elementwise ops: activations, arithmetic with broadcasting, type conversions and copies.

Aligned dims of equal size are the same channels; a dim an operand broadcasts (size 1 or missing) is not
coupled. Zero flow: zero-preserving unary maps (f(0) = 0) pass a zero channel on; ``add``/``sub`` give zero
when every operand is zero; ``mul`` when any is; ``div`` when the numerator is.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from fxopt.ops.cost import OpCost, Sizes, elementwise_cost, memory_cost
from fxopt.ops.facts import Facts, ZeroMode
from fxopt.ops.forms import aten_ops, bind, function_form, methods, module_form, register
from fxopt.ops.registry import REGISTRY
from fxopt.ops.resize import Resizer
from fxopt.ops.view import Axis, OpView, TensorRef, output_refs, ref_of

try:  # torchvision is optional; its stochastic_depth is an fx-wrapped leaf function
    from torchvision.ops import stochastic_depth
except ImportError:  # pragma: no cover - depends on the environment
    stochastic_depth = None

# f(0) == 0: a zero channel stays zero.
ZERO_PRESERVING = {
    "relu": ([F.relu, torch.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.leaky_relu, F.elu, F.selu, F.mish,
              F.tanhshrink, F.softsign, torch.tanh, F.tanh, torch.neg, operator.neg, torch.abs,
              torch.sin, torch.sqrt, torch.square, torch.erf, torch.sign, torch.sinh, torch.asin, torch.atan],
             ["relu", "relu_", "gelu", "silu", "silu_", "hardswish", "hardswish_", "leaky_relu", "leaky_relu_",
              "elu", "elu_", "selu", "mish", "tanh", "tanh_", "neg", "abs", "sin", "sqrt",
              "square", "erf", "sign", "sinh", "asin", "atan", "relu6",
              "_to_copy", "to", "clone", "contiguous", "detach", "alias", "lift_fresh_copy", "dropout",
              "type_as", "float", "half", "bfloat16", "double", "type", "native_dropout"],
             [nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.SELU, nn.Mish,
              nn.Tanh, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
              nn.AlphaDropout, nn.Tanhshrink, nn.Softsign, nn.Softshrink, nn.Hardshrink]),
}
# f(0) != 0: the channel becomes a constant, which is not removable without compensation.
NOT_ZERO_PRESERVING = (
    [torch.sigmoid, F.sigmoid, F.hardsigmoid, torch.exp, torch.cos, F.softplus, torch.reciprocal, torch.rsqrt,
     torch.log, F.logsigmoid, torch.cosh, torch.exp2, torch.logical_not, torch.isnan, torch.isinf, torch.bitwise_not],
    ["sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_", "exp", "cos", "softplus", "reciprocal", "rsqrt", "log",
     "cosh", "exp2", "logical_not", "isnan", "isinf", "bitwise_not", "log_sigmoid_forward", "expm1", "log1p",
     "bool", "long", "int"],
    [nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid],
)


def _unary_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    if node.op == "call_module":
        return module_form(params=())(node, gm, kind)
    first = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
    return OpView(node, kind, (ref_of(first),), {}, {}, output_refs(node))


def _register_unary(kind: str, funcs: list, method_names: list, modules: list) -> None:
    register(kind, funcs, _unary_form)
    register(kind, methods(*method_names), _unary_form)
    register(kind, aten_ops(*method_names), _unary_form)
    register(kind, modules, _unary_form)


_register_unary("unary_zero", *ZERO_PRESERVING["relu"])
register("unary_zero", [stochastic_depth], _unary_form)  # x * random row mask: zero stays zero
_register_unary("unary_const", *NOT_ZERO_PRESERVING)


def _keeps_zero(low: object, high: object) -> bool:
    """Whether clamping to ``[low, high]`` (``None``: unbounded) maps 0 to 0; tensor bounds are not known."""
    def holds_zero(bound: object, side: int) -> bool:
        """``bound`` is unbounded, or a number on the ``side`` (-1: at or below, 1: at or above) of 0."""
        if bound is None:
            return True
        return isinstance(bound, (int, float)) and not isinstance(bound, bool) and side * bound >= 0

    return holds_zero(low, -1) and holds_zero(high, 1)


def _clamp_form(low: str | None, high: str | None,
                defaults: dict[str, object] | None = None):
    """Normalizer for clamp-like ops whose bounds are the arguments named ``low`` and ``high`` (after ``input``):
    zero-preserving only when the bounds contain 0 (``clamp(min=eps)`` is not)."""
    names = ["input", *(n for n in (low, high) if n is not None)]

    def normalize(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
        if node.op == "call_module":  # nn.Hardtanh
            module = gm.get_submodule(str(node.target))
            assert isinstance(module, nn.Hardtanh), "the only clamp-like module is nn.Hardtanh (and ReLU6)"
            bounds: tuple[object, object] = (module.min_val, module.max_val)
            x = node.args[0] if node.args else None
        else:
            b = bind(node, names, defaults)
            bounds, x = (b.get(low) if low else None, b.get(high) if high else None), b.get("input")
        return OpView(node, "unary_zero" if _keeps_zero(*bounds) else "unary_const", (ref_of(x),), {},
                      {"min": bounds[0], "max": bounds[1]}, output_refs(node))

    return normalize


register("unary_zero", [torch.clamp, torch.clip] + methods("clamp", "clamp_", "clip", "clip_")
         + aten_ops("clamp", "clamp_", "clip", "clip_"), _clamp_form("min", "max"))
register("unary_zero", [torch.clamp_min] + methods("clamp_min", "clamp_min_") + aten_ops("clamp_min", "clamp_min_"),
         _clamp_form("min", None))
register("unary_zero", [torch.clamp_max] + methods("clamp_max", "clamp_max_") + aten_ops("clamp_max", "clamp_max_"),
         _clamp_form(None, "max"))
register("unary_zero", [F.hardtanh, nn.Hardtanh] + aten_ops("hardtanh", "hardtanh_"),
         _clamp_form("min_val", "max_val", {"min_val": -1.0, "max_val": 1.0}))


@REGISTRY.rule("unary_zero", "unary_const")
def unary_rule(view: OpView, facts: Facts) -> None:
    """Elementwise unary: every dim is the same channel; zero stays zero only when f(0) == 0."""
    (x,) = view.inputs[:1]
    if x is None or not view.outputs:
        return
    out = view.out
    if x.shape != out.shape:
        facts.barrier(view, f"{view.node.name} changes the shape", "give it a shape rule")
        return
    for a, b in zip(x.axes(), out.axes()):
        facts.same(a, b)
        if view.kind == "unary_zero":
            facts.zero(b, "all", [a])


def broadcast_sources(out: TensorRef, operands: Sequence[TensorRef | None], facts: Facts) -> list[list[Axis | None]]:
    """Couple aligned equal-size dims of ``operands`` to ``out``; per out dim, each operand's axis or None."""
    per_dim: list[list[Axis | None]] = []
    for d in range(out.ndim):
        back = out.ndim - d
        row: list[Axis | None] = []
        for t in operands:
            if t is None or t.ndim < back or t.shape[t.ndim - back] != out.shape[d] or out.shape[d] == 1:
                row.append(None)
                continue
            a = t.axis(t.ndim - back)
            facts.same(a, out.axis(d))
            row.append(a)
        per_dim.append(row)
    return per_dim


BINARY: dict[str, tuple[ZeroMode, list, list]] = {
    "add": ("all", [operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub, torch.subtract,
                    torch.maximum, torch.minimum, torch.max, torch.min],
            ["add", "add_", "sub", "sub_", "subtract", "maximum", "minimum", "rsub"]),
    "mul": ("any", [operator.mul, operator.imul, torch.mul, torch.multiply],
            ["mul", "mul_", "multiply", "logical_and", "bitwise_and"]),
    "div": ("all", [operator.truediv, operator.itruediv, torch.div, torch.true_divide],
            ["div", "div_", "true_divide"]),
    "pow": ("all", [operator.pow, torch.pow], ["pow", "pow_"]),
    "compare": ("all", [operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge, operator.or_,
                        torch.eq, torch.ne, torch.lt, torch.le, torch.gt, torch.ge, torch.logical_or,
                        torch.logical_and, torch.bitwise_and, torch.bitwise_or],
                ["eq", "ne", "lt", "le", "gt", "ge", "logical_or", "bitwise_or", "__and__", "__or__", "__xor__",
                 "logical_xor", "bitwise_xor", "copy_", "copy"]),
}


def binary_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    """Normalizer for binary elementwise ops: two operands (a tensor or a scalar each) and ``alpha``."""
    b = bind(node, ["input", "other"])
    a, o = b.get("input"), b.get("other")
    attrs = {"scalar_other": None if ref_of(o) is not None else o, "scalar_input": None if ref_of(a) is not None else a,
             "alpha": b.get("alpha", 1)}
    return OpView(node, kind, (ref_of(a), ref_of(o)), {}, attrs, output_refs(node))


for _kind, (_mode, _funcs, _methods) in BINARY.items():
    register(_kind, _funcs, binary_form)
    register(_kind, methods(*_methods), binary_form)
    register(_kind, aten_ops(*_methods), binary_form)


@REGISTRY.rule("add", "mul", "div", "pow", "compare")
def binary_rule(view: OpView, facts: Facts) -> None:
    """Binary ops with broadcasting: add/sub zero if all operands are, mul if any, div/pow if the first.

    Comparisons and logical ops couple dims the same way but never produce zero channels.
    """
    if not view.outputs:
        return
    out = view.out
    a, b = view.inputs
    if view.node.target in (torch.max, torch.min) and (a is None or b is None):
        facts.barrier(view, "torch.max/min with a dim is a reduction", "use amax/amin")
        return
    rows = broadcast_sources(out, [a, b], facts)
    for d, (sa, sb) in enumerate(rows):
        if view.kind == "add":
            scalar = view.attrs.get("scalar_other", view.attrs.get("scalar_input"))
            zero_scalar = isinstance(scalar, (int, float)) and scalar == 0
            srcs = [s for s in (sa, sb) if s is not None]
            none_ops = (a is not None and sa is None) or (b is not None and sb is None)
            none_ops = none_ops or ((a is None or b is None) and not zero_scalar)
            facts.zero(out.axis(d), "all", srcs + ([None] if none_ops else []))
        elif view.kind == "mul":
            facts.zero(out.axis(d), "any", [s for s in (sa, sb) if s is not None])
        elif view.kind == "compare":
            continue
        elif view.kind == "pow":
            exponent = view.attrs.get("scalar_other")
            if sa is not None and isinstance(exponent, (int, float)) and exponent > 0:
                facts.zero(out.axis(d), "all", [sa])
        else:
            facts.zero(out.axis(d), "all", [sa] if sa is not None else [None])


def _where_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    b = bind(node, ["condition", "input", "other"])
    return OpView(node, kind, (ref_of(b.get("condition")), ref_of(b.get("input")), ref_of(b.get("other"))),
                  {}, {}, output_refs(node))


def _masked_fill_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    b = bind(node, ["input", "mask", "value"])
    return OpView(node, kind, (ref_of(b.get("input")), ref_of(b.get("mask"))), {}, {"value": b.get("value")},
                  output_refs(node))


register("where", [torch.where], _where_form)
register("where", aten_ops("where"), _where_form)
register("masked_fill", [torch.masked_fill], _masked_fill_form)
register("masked_fill", methods("masked_fill", "masked_fill_") + aten_ops("masked_fill"), _masked_fill_form)


@REGISTRY.rule("where", "masked_fill")
def select_rule(view: OpView, facts: Facts) -> None:
    """where(cond, a, b) / masked_fill(x, mask, v): operands coupled by broadcasting; zero kept from a and b."""
    if not view.outputs:
        return
    out = view.out
    rows = broadcast_sources(out, list(view.inputs), facts)
    for d, row in enumerate(rows):
        if view.kind == "where":
            vals = row[1:]
            operands = view.inputs[1:]
            missing = any(t is None or s is None for t, s in zip(operands, vals))
            facts.zero(out.axis(d), "all", [s for s in vals if s is not None] + ([None] if missing else []))
        else:
            value = view.attrs.get("value")
            if row[0] is not None and isinstance(value, (int, float)) and value == 0:
                facts.zero(out.axis(d), "all", [row[0]])


def _prelu_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    if node.op == "call_module":
        return module_form(params=("weight",))(node, gm, kind)
    return function_form(["input", "weight"], ["input"], ["weight"])(node, gm, kind)


register("prelu", [nn.PReLU, F.prelu, torch.prelu] + aten_ops("prelu", "_prelu_kernel"), _prelu_form)


@REGISTRY.rule("prelu")
def prelu_rule(view: OpView, facts: Facts) -> None:
    """PReLU: elementwise, with a per-channel slope along dim 1 when it has more than one parameter."""
    x, out, w = view.inputs[0], view.out, view.params.get("weight")
    assert x is not None
    for a, b in zip(x.axes(), out.axes()):
        facts.transfer(b, a)
    if w is not None and w.shape[0] > 1 and x.ndim > 1:
        facts.same(w.axis(0), x.axis(1))


@REGISTRY.rewriter("prelu")
def prelu_rewrite(view: OpView, resizer: Resizer) -> None:
    """Keep ``num_parameters`` in step with the sliced slope."""
    if view.module is not None and view.module_tensor("weight").shape[0] > 1:
        resizer.set_module_attr(view, "num_parameters", view.module_tensor("weight").shape[0])


# ---------------------------------------------------------------- costs
COPY_METHODS = frozenset({"contiguous", "clone", "to", "type_as", "float", "double", "half", "bfloat16", "type",
                          "detach", "copy_"})
COPY_ATEN = frozenset({"clone", "_to_copy", "to", "contiguous", "detach", "alias", "lift_fresh_copy", "copy_", "copy"})


def is_copy(node: fx.Node) -> bool:
    """Whether a node only copies or casts its input (memory traffic, no arithmetic)."""
    if node.op == "call_method":
        return str(node.target) in COPY_METHODS
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return target.overloadpacket.__name__ in COPY_ATEN
    return target is torch.clone


@REGISTRY.cost("unary_zero", "unary_const")
def unary_cost(view: OpView, sizes: Sizes) -> OpCost:
    """Elementwise unary: one FLOP per output element; copies and casts only move memory."""
    return memory_cost(view, sizes) if is_copy(view.node) else elementwise_cost(view, sizes)


REGISTRY.cost("add", "mul", "div", "pow", "compare", "where", "masked_fill", "prelu")(elementwise_cost)
