"""Normalizers shared by the op families: binding call arguments and building OpViews.

A family lists the surface forms of its op (module classes, functions, ATen packets, Tensor methods) and says,
once, which arguments are tensor inputs, which are parameters and which are attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx

from fxopt.ops.registry import REGISTRY, Normalizer
from fxopt.ops.view import OpView, TensorRef, output_refs, param_ref, ref_of

aten = torch.ops.aten


def bind(node: fx.Node, names: Sequence[str], defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Bind a call node's args and kwargs to ``names`` (positional order); missing ones take ``defaults``."""
    bound = dict(defaults or {})
    for name, value in zip(names, node.args):
        bound[name] = value
    for name, value in node.kwargs.items():
        bound[name] = value
    return bound


def set_call_arg(node: fx.Node, name: str, value: Any, names: Sequence[str]) -> None:
    """Set argument ``name`` of a call node whose arguments are ``names`` in order: in place if it was passed
    positionally, else as a keyword (the inverse of ``bind``)."""
    names = list(names)
    if name in names and names.index(name) < len(node.args):
        args = list(node.args)
        args[names.index(name)] = value
        node.args = tuple(args)
    else:
        node.kwargs = {**node.kwargs, name: value}


def function_form(
    names: Sequence[str],
    inputs: Sequence[str],
    params: Sequence[str] = (),
    defaults: dict[str, Any] | None = None,
) -> Normalizer:
    """Normalizer for functions, methods and ATen ops whose arguments are ``names`` in order.

    ``inputs`` and ``params`` name the tensor arguments; every other bound argument becomes an attribute.
    """

    def normalize(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
        b = bind(node, names, defaults)
        ins = tuple(ref_of(b.get(n)) for n in inputs)
        ps = {n: ref_of(b.get(n)) for n in params}
        attrs = {k: v for k, v in b.items() if k not in inputs and k not in params}
        attrs["_argnames"] = tuple(names)
        return OpView(node, kind, ins, ps, attrs, output_refs(node))

    return normalize


def module_form(
    params: Sequence[str] = ("weight", "bias"),
    attrs: Callable[[torch.nn.Module], dict[str, Any]] = lambda m: {},
    n_inputs: int = 1,
) -> Normalizer:
    """Normalizer for leaf modules: tensor inputs from the call, parameters and attributes from the module."""

    def normalize(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
        path = str(node.target)
        mod = gm.get_submodule(path)
        ins = tuple(ref_of(a) for a in list(node.args)[:n_inputs])
        ps: dict[str, TensorRef | None] = {}
        for p in params:
            t = getattr(mod, p, None)
            ps[p] = param_ref(path, p, t) if isinstance(t, torch.Tensor) else None
        return OpView(node, kind, ins, ps, attrs(mod), output_refs(node), mod)

    return normalize


def methods(*names: str) -> list[Any]:
    """Tensor methods by name, as the objects the registry keys call_method nodes on."""
    return [getattr(torch.Tensor, n) for n in names if hasattr(torch.Tensor, n)]


def aten_ops(*names: str) -> list[Any]:
    """ATen overload packets by name (missing ones are skipped, so older torch versions still load)."""
    return [getattr(aten, n) for n in names if hasattr(aten, n)]


def register(kind: str, ops: Iterable[Any], normalize: Normalizer) -> None:
    """Register ``ops`` as ``kind`` in fxopt's registry."""
    REGISTRY.register_ops(kind, ops, normalize)


def int_list(value: Any) -> list[int]:
    """A dim or list of dims as a list of ints."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]
