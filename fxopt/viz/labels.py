"""Short, readable text for node labels: what an op computes, the shapes it produces, where it lives."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import nn

_DTYPES = {torch.float32: "", torch.float16: " f16", torch.bfloat16: " bf16", torch.float64: " f64",
           torch.int64: " i64", torch.int32: " i32", torch.bool: " bool", torch.uint8: " u8", torch.int8: " i8"}
_MAX_TUPLE = 3


def count_text(n: float) -> str:
    """A count for people: ``"11.7M"``, ``"52.3k"``, ``"480"`` (three significant digits past a thousand)."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.3g}{suffix}"
    return f"{n:,.0f}" if float(n).is_integer() else f"{n:.3g}"


def cell_text(value: Any) -> str:
    """A report table cell: ``131,584 -> 32,768`` for a (before, after) pair, 4 significant digits for floats."""
    if isinstance(value, tuple) and len(value) == 2:
        return f"{cell_text(value[0])} -> {cell_text(value[1])}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _pair(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return "×".join(str(x) for x in v) if len(set(v)) > 1 else str(v[0])
    return str(v)


def _conv(m: Any) -> str:
    text = f"{m.in_channels}→{m.out_channels} k{_pair(m.kernel_size)}"
    if any(s != 1 for s in m.stride):
        text += f" s{_pair(m.stride)}"
    if m.groups > 1:
        text += " dw" if m.groups == m.in_channels == m.out_channels else f" g{m.groups}"
    return text


def _linear(m: Any) -> str:
    return f"{m.in_features}→{m.out_features}"


def _features(m: Any) -> str:
    return str(m.num_features)


def _norm_shape(m: Any) -> str:
    return _pair(m.normalized_shape)


def _embedding(m: Any) -> str:
    return f"{m.num_embeddings}×{m.embedding_dim}"


def _pool(m: Any) -> str:
    size = getattr(m, "output_size", None)
    return f"→{_pair(size)}" if size is not None else f"k{_pair(m.kernel_size)}"


_MODULE_DETAILS: dict[type, Callable[[Any], str]] = {
    nn.modules.conv._ConvNd: _conv,
    nn.Linear: _linear,
    nn.modules.batchnorm._NormBase: _features,
    nn.LayerNorm: _norm_shape,
    nn.GroupNorm: lambda m: f"{m.num_groups} groups",
    nn.Embedding: _embedding,
    nn.MaxPool2d: _pool,
    nn.AvgPool2d: _pool,
    nn.AdaptiveAvgPool2d: _pool,
    nn.MultiheadAttention: lambda m: f"{m.embed_dim}, {m.num_heads} heads",
}


def _module_detail(m: nn.Module) -> str:
    for cls in type(m).__mro__:
        fmt = _MODULE_DETAILS.get(cls)
        if fmt is not None:
            try:
                return fmt(m)
            except AttributeError:  # a subclass without the usual attributes: show the class only
                return ""
    return ""


def op_name(target: Any) -> str:
    """Readable name of a call_function target: ``aten.linear.default`` -> ``linear``, ``operator.add`` -> ``add``."""
    if isinstance(target, torch._ops.OpOverload):
        return target.overloadpacket.__name__
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target.__name__
    return getattr(target, "__name__", str(target))


def describe_op(node: fx.Node, gm: fx.GraphModule) -> str:
    """What ``node`` computes, in a few words: ``"Conv2d 64→128 k3 s2"``, ``"add"``, ``".view()"``, ``"input"``."""
    if node.op == "placeholder":
        return "input"
    if node.op == "output":
        return "output"
    if node.op == "get_attr":
        return f"param {node.target}"
    if node.op == "call_module":
        try:
            module = gm.get_submodule(str(node.target))
        except AttributeError:
            return f"module {node.target}"
        detail = _module_detail(module)
        return f"{type(module).__name__} {detail}".strip()
    if node.op == "call_method":
        return f".{node.target}()"
    if node.target is operator.getitem and len(node.args) > 1:
        return f"getitem [{node.args[1]}]"
    text = op_name(node.target)
    leaf = _leaf_module(node)
    if leaf:
        text += f" ({leaf.rsplit('.', 1)[-1]})"
    weights = [describe_value(p.meta.get("val")).strip() for p in node.all_input_nodes if p.op == "get_attr"]
    if weights:
        text += " w:" + ",".join(w for w in weights[:2] if w)
    return text


def _leaf_module(node: fx.Node) -> str | None:
    """Path of the torch.nn layer a call_function node came from (export graphs keep it in nn_module_stack)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    value = list(stack.values())[-1]
    if not (isinstance(value, tuple) and len(value) >= 2):
        return None
    cls = value[1]
    cls_module = cls.__module__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[0]
    if cls_module.startswith("torch.nn.modules") and cls_module != "torch.nn.modules.container":
        return str(value[0])
    return None


def describe_value(val: Any) -> str:
    """Shape text of a node's value: ``"1×64×56×56"``, ``"1×16 i64"``, ``"(1×2, 1×3)"``; empty if unknown."""
    if isinstance(val, torch.Tensor):
        dims = "×".join(str(s) for s in val.shape)
        return (dims or "scalar") + _DTYPES.get(val.dtype, f" {str(val.dtype).removeprefix('torch.')}")
    if isinstance(val, (tuple, list)):
        parts = [describe_value(v) for v in val[:_MAX_TUPLE]]
        more = ", …" if len(val) > _MAX_TUPLE else ""
        return "(" + ", ".join(p or "-" for p in parts) + more + ")"
    if isinstance(val, (int, float, bool, torch.SymInt)):
        return type(val).__name__
    return ""


def module_path(node: fx.Node, gm: fx.GraphModule) -> list[tuple[str, str]]:
    """Enclosing modules of ``node``, outermost first, as ``(path, class name)``; leaf torch.nn layers excluded.

    The node's own layer (a Conv2d, a Linear) is not a cluster: only the user-level blocks that contain it are.
    """
    stack = node.meta.get("nn_module_stack") or {}
    out: list[tuple[str, str]] = []
    for value in stack.values():
        path, cls = (value[0], value[1]) if isinstance(value, tuple) and len(value) >= 2 else (str(value), "")
        cls_name = cls.__qualname__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[-1]
        cls_module = cls.__module__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[0]
        leaf = cls_module.startswith("torch.nn.modules") and cls_module != "torch.nn.modules.container"
        if not path or leaf:
            continue
        out.append((path, cls_name))
    if node.op == "call_module" and out and out[-1][0] == str(node.target):
        out.pop()
    return out
