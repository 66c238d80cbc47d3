"""Size reads and tensor factories: ``x.size()``/``numel``/``getattr``, ``torch.zeros``/``arange``/``new_*``,
``zeros_like`` and friends.

Reading a size couples nothing (the ops that use it are rewritten); constant-valued factories resize freely, while
position- or data-valued ones are frozen.
"""

from __future__ import annotations

import builtins

import torch
import torch.fx as fx

from fxopt.ops.cost import memory_cost, view_cost
from fxopt.ops.facts import Facts
from fxopt.ops.forms import aten_ops, methods, register
from fxopt.ops.registry import REGISTRY
from fxopt.ops.reshape import op_name, rewrite_sizes, size_args
from fxopt.ops.resize import Resizer
from fxopt.ops.view import OpView, output_refs, ref_of


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
    if op_name(view.node) in POSITIONAL:
        for out in view.outputs:
            for a in out.axes():
                facts.freeze(a, f"{view.node.name} holds position-dependent values")
    elif op_name(view.node) in ("zeros", "new_zeros"):
        for out in view.outputs:
            for a in out.axes():
                facts.zero(a, "always", ())


@REGISTRY.rewriter("factory")
def factory_rewrite(view: OpView, resizer: Resizer) -> None:
    """Factories given an explicit size list get the new sizes of changed dims."""
    if not view.outputs or op_name(view.node) in POSITIONAL:
        return
    out = view.out
    sizes, _ = size_args(view.node) if view.node.op == "call_method" else (list(view.node.args[:1]), False)
    if view.node.op != "call_method" and len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
        new = [resizer.new_size(out.axis(d)) if isinstance(s, int) else s for d, s in enumerate(sizes[0])]
        if list(new) != list(sizes[0]):
            resizer.set_args(view.node, (new, *view.node.args[1:]))
    elif view.node.op != "call_method" and len(view.node.args) == out.ndim and op_name(view.node) != "full":
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
REGISTRY.cost("size_read")(view_cost)
REGISTRY.cost("like", "factory")(memory_cost)
