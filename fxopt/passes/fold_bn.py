"""Batch-norm folding: conv/conv-transpose/linear -> BN into the producer, and BN -> conv/linear into the consumer.

With ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s`` (an eval-mode BN is ``y = x * s + t``):

* producer side: ``W' = W * s`` along the output channels (dim 0 of a conv/linear weight, dim 1 of a
  ConvTranspose weight, per group), ``b' = b * s + t``. Exact.
* consumer side (BN before the layer): ``W' = W * s`` along the input channels, ``b' = b + sum(W * t)``. Exact
  only when the conv does not pad with zeros (zeros are padded after BN, where the BN'd input would be ``t``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.fx as fx
import torch.nn as nn

from fxopt.ops.forms import int_list
from fxopt.ops.view import OpView
from fxopt.passes.base import Pass, PassContext, PassResult, register_pass
from fxopt.passes.batchnorm import Affine, bn_affine
from fxopt.passes.editor import GraphEditor
from fxopt.passes.match import (
    Match,
    Pattern,
    call_kwargs,
    erase_with_output,
    exclusive,
    main_output,
    param_tensor,
    run_patterns,
    single_value_user,
)


def set_bias(editor: GraphEditor, view: OpView, value: torch.Tensor) -> None:
    """Store ``value`` as the bias of a conv/linear, creating the bias when it had none."""
    ref = view.params.get("bias")
    weight = view.params["weight"]
    assert weight is not None and weight.qualname is not None
    if ref is not None and ref.qualname is not None:
        editor.set_tensor(ref.qualname, value)
    elif view.module is not None:
        editor.set_tensor(f"{view.node.target}.bias", value)
    else:
        owner = weight.qualname.rpartition(".")[0]
        name = editor.add_tensor("bias", value, owner=owner)
        attr = editor.get_attr(name, before=view.node)
        editor.set_arg(view.node, "bias", attr, view.attrs.get("_argnames", ("input", "weight", "bias")))


# ---------------------------------------------------------------- checks
def _bn(view: OpView, editor: GraphEditor) -> str | None:
    found = bn_affine(view, editor)
    return found if isinstance(found, str) else None


def _affine(view: OpView, editor: GraphEditor) -> Affine:
    found = bn_affine(view, editor)
    assert isinstance(found, Affine), found
    return found


def _stored_weight(view: OpView, editor: GraphEditor) -> str | None:
    w = param_tensor(editor, view.params.get("weight"))
    if w is None:
        return f"{view.node.name}'s weight is computed by the graph, not a stored parameter"
    if not w.is_floating_point():
        return f"{view.node.name}'s weight is not floating point"
    return None


def _channel_dim_is_1(view: OpView) -> str | None:
    w = view.params.get("weight")
    out = view.outputs[0] if view.outputs else None
    if w is None or out is None:
        return "no weight or output shape"
    if view.kind == "conv" and out.ndim != w.ndim:
        return "unbatched conv: batch norm's channel dim is not the conv's output channel dim"
    if view.kind == "linear" and out.ndim != 2:
        return f"the linear's features are dim {out.ndim - 1} but batch norm normalizes dim 1"
    return None


def _producer_checks(m: Match, e: GraphEditor) -> str | None:
    return (_bn(m.second, e) or single_value_user(m.first.node) or _stored_weight(m.first, e)
            or exclusive(e, m.first, ("weight", "bias")) or _channel_dim_is_1(m.first)
            or _extra_outputs_used(m.second.node))


def _extra_outputs_used(node: fx.Node) -> str | None:
    found = main_output(node)
    return found if isinstance(found, str) else None


def _padding_is_exact(view: OpView) -> str | None:
    if isinstance(view.module, nn.modules.conv._ConvNd):
        padding, mode = view.module.padding, view.module.padding_mode
    else:
        kw = call_kwargs(view.node) or {}
        padding, mode = kw.get("padding", 0), "zeros"
    if mode != "zeros":
        return None  # reflect/replicate/circular padding copies BN'd values: still exact
    w = view.params["weight"]
    if isinstance(padding, str):
        if padding == "valid" or (w is not None and all(k == 1 for k in w.shape[2:])):
            return None
        return f"conv pads {padding!r} with zeros after the batch norm"
    if any(int(p) != 0 for p in int_list(padding)):
        return "conv pads with zeros after the batch norm (the padded values would be BN(0), not 0)"
    return None


def _consumer_checks(m: Match, e: GraphEditor) -> str | None:
    reason = _bn(m.first, e)
    if reason:
        return reason
    out = main_output(m.first.node)
    if isinstance(out, str):
        return out
    if len(out.users) != 1:
        return f"batch norm output {out.name} has {len(out.users)} users"
    x = m.first.inputs[0]
    if x is None or x.ndim < 2:
        return "batch norm input has no channel dim"
    if m.second.kind == "linear" and x.ndim != 2:
        return "batch norm normalizes dim 1 but the linear reads the last dim"
    if m.second.kind == "conv":
        if m.second.attrs.get("transposed"):
            return "transposed conv after batch norm is not folded"
        reason = _padding_is_exact(m.second) or _channel_dim_is_1(m.second)
        if reason:
            return reason
    return _stored_weight(m.second, e) or exclusive(e, m.second, ("weight", "bias"))


# ---------------------------------------------------------------- rewrites
def _channel_shape(ndim: int, dim: int, size: int) -> list[int]:
    shape = [1] * ndim
    shape[dim] = size
    return shape


def _layer_tensors(layer: OpView, e: GraphEditor) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """The conv's or linear's stored weight and bias, and the weight's qualified name (the checks made sure)."""
    ref = layer.params["weight"]
    w, b = param_tensor(e, ref), param_tensor(e, layer.params.get("bias"))
    assert w is not None and ref is not None and ref.qualname is not None
    return w, b, ref.qualname


def _fold_into_producer(m: Match, e: GraphEditor) -> None:
    prod, bn = m.first, m.second
    aff = _affine(bn, e)
    w, b, w_name = _layer_tensors(prod, e)
    w64 = w.detach().double()
    if prod.kind == "conv" and prod.attrs.get("transposed"):
        groups = int(prod.attrs.get("groups", 1) or 1)
        g = w64.reshape(groups, w64.shape[0] // groups, *w64.shape[1:])
        scale = aff.scale.reshape(groups, 1, w64.shape[1], *([1] * (w64.ndim - 2)))
        new_w = (g * scale).reshape(w64.shape)
    else:
        new_w = w64 * aff.scale.reshape(_channel_shape(w64.ndim, 0, w64.shape[0]))
    old_b = b.detach().double() if b is not None else torch.zeros_like(aff.scale)
    e.set_tensor(w_name, new_w.to(w.dtype), f"folded {bn.node.name}")
    set_bias(e, prod, (old_b * aff.scale + aff.shift).to(w.dtype))
    out = main_output(bn.node)
    assert not isinstance(out, str)
    e.replace_uses(out, prod.node, f"{bn.node.name} folded into {prod.node.name}")
    erase_with_output(e, bn.node, out)


def _fold_into_consumer(m: Match, e: GraphEditor) -> None:
    bn, cons = m.first, m.second
    aff = _affine(bn, e)
    w, b, w_name = _layer_tensors(cons, e)
    w64 = w.detach().double()
    out_c, in_pg = w64.shape[0], w64.shape[1]
    groups = int(cons.attrs.get("groups", 1) or 1) if cons.kind == "conv" else 1
    idx = (torch.arange(out_c) // (out_c // groups))[:, None] * in_pg + torch.arange(in_pg)[None, :]
    extra = [1] * (w64.ndim - 2)
    scale, shift = aff.scale[idx].reshape(out_c, in_pg, *extra), aff.shift[idx].reshape(out_c, in_pg, *extra)
    old_b = b.detach().double() if b is not None else torch.zeros(out_c, dtype=torch.float64)
    new_b = old_b + (w64 * shift).sum(dim=tuple(range(1, w64.ndim)))
    e.set_tensor(w_name, (w64 * scale).to(w.dtype), f"folded {bn.node.name}")
    set_bias(e, cons, new_b.to(w.dtype))
    out = main_output(bn.node)
    x = bn.inputs[0]
    assert not isinstance(out, str) and x is not None and x.node is not None
    e.set_input(cons.node, out, x.node)
    erase_with_output(e, bn.node, out)


CONV_BN = Pattern("fold_bn", frozenset({"conv", "linear"}), frozenset({"batch_norm"}), (_producer_checks,),
                  _fold_into_producer)
"""conv / conv-transpose / linear followed by an eval-mode batch norm."""

BN_CONV = Pattern("fold_bn_input", frozenset({"batch_norm"}), frozenset({"conv", "linear"}), (_consumer_checks,),
                  _fold_into_consumer)
"""eval-mode batch norm followed by a conv (without zero padding) or a linear on (N, C) inputs."""


@dataclass(frozen=True)
class BatchNormFolding(Pass):
    """The batch-norm folding passes: each applies its one pattern until nothing more folds."""

    pattern: ClassVar[Pattern]

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        """Fold every pair the pass's pattern matches."""
        return run_patterns(gm, ctx, str(self), [self.pattern])


@register_pass
@dataclass(frozen=True)
class FoldBatchNormPass(BatchNormFolding):
    """Fold eval-mode batch norms into the conv, conv-transpose or linear that produces their input (exact)."""

    name: ClassVar[str] = "fold_bn"
    pattern: ClassVar[Pattern] = CONV_BN


@register_pass
@dataclass(frozen=True)
class FoldBatchNormInputPass(BatchNormFolding):
    """Fold eval-mode batch norms into the conv or linear that reads them, where that is exact."""

    name: ClassVar[str] = "fold_bn_input"
    pattern: ClassVar[Pattern] = BN_CONV
