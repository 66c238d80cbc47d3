"""Convolutions (1d/2d/3d, transposed, grouped, depthwise) in module, functional and ATen form.

Channels: a grouped conv splits its input channels into ``groups x in_per_group`` and its output channels into
``groups x out_per_group`` with the same ``groups`` factor, so whole groups, per-group inputs and per-group
outputs are each prunable. Spatial dims are frozen. The input channel is summed over (an exact sink); the output
channel is zero when its weight rows and bias are.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from fxopt.ops.cost import OpCost, Sizes, default_cost, op_cost, out_numel
from fxopt.ops.facts import Facts
from fxopt.ops.forms import aten_ops, function_form, module_form, register
from fxopt.ops.registry import REGISTRY
from fxopt.ops.resize import Resizer
from fxopt.ops.view import Axis, OpView

CONV_MODULES = [nn.Conv1d, nn.Conv2d, nn.Conv3d]
TCONV_MODULES = [nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d]


def _module_attrs(m: nn.Module) -> dict[str, Any]:
    return {"groups": m.groups, "transposed": isinstance(m, nn.modules.conv._ConvTransposeNd)}


_conv_fn = function_form(["input", "weight", "bias", "stride", "padding", "dilation", "groups"], ["input"],
                         ["weight", "bias"], {"groups": 1})
_tconv_fn = function_form(["input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"],
                          ["input"], ["weight", "bias"], {"groups": 1})
_convolution = function_form(["input", "weight", "bias", "stride", "padding", "dilation", "transposed",
                              "output_padding", "groups"], ["input"], ["weight", "bias"], {"groups": 1})


def _with_transposed(normalize, transposed: bool):
    def wrapped(node: fx.Node, gm: fx.GraphModule, kind: str):
        view = normalize(node, gm, kind)
        attrs = dict(view.attrs)
        attrs.setdefault("transposed", transposed)
        return OpView(view.node, kind, view.inputs, view.params, attrs, view.outputs, view.module)

    return wrapped


register("conv", CONV_MODULES + TCONV_MODULES, module_form(attrs=_module_attrs))
register("conv", [F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d]
         + aten_ops("conv1d", "conv2d", "conv3d"), _with_transposed(_conv_fn, False))
register("conv", [F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d]
         + aten_ops("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"), _with_transposed(_tconv_fn, True))
register("conv", aten_ops("convolution", "_convolution"), _convolution)


def groups_axis(view: OpView, groups: int) -> Axis:
    """The synthetic axis of a grouped conv's ``groups`` factor."""
    return Axis(f"{view.node.name}:groups", 0, groups)


@REGISTRY.rule("conv")
def conv_rule(view: OpView, facts: Facts) -> None:
    """Conv: in-channels summed (exact sink), out-channels from weight rows and bias; groups factor shared."""
    x, out = view.inputs[0], view.out
    w, b = view.params["weight"], view.params.get("bias")
    assert x is not None and w is not None
    groups = int(view.attrs.get("groups", 1) or 1)
    transposed = bool(view.attrs.get("transposed", False))
    batched = x.ndim == w.ndim
    off = 1 if batched else 0
    if batched:
        facts.transfer(out.axis(0), x.axis(0))
    for d in range(off + 1, x.ndim):
        facts.freeze(x.axis(d), "spatial dim")
        facts.freeze(out.axis(d), "spatial dim")
    x_c, out_c = x.axis(off), out.axis(off)
    in_w, out_w = (w.axis(0), w.axis(1)) if transposed else (w.axis(1), w.axis(0))
    if groups == 1:
        facts.same(x_c, in_w)
        facts.same(out_c, out_w)
    else:
        g = groups_axis(view, groups)
        if transposed:
            facts.same(x_c, in_w)
            facts.product([in_w], [g, Axis(f"{view.node.name}:in_per_group", 0, in_w.size // groups)])
            facts.product([out_c], [g, out_w])
        else:
            facts.product([x_c], [g, in_w])
            facts.product([out_c], [g, Axis(f"{view.node.name}:out_per_group", 0, out_c.size // groups)])
            facts.same(out_c, out_w)
    if b is not None:
        facts.same(out_c, b.axis(0))
    facts.sink(x_c, True, f"{view.node.name} sums over its input channels")
    for d in range(2, w.ndim):
        facts.freeze(w.axis(d), "kernel dim")
    facts.zero(out_c, "all", [out_w] + ([b.axis(0)] if b is not None else []))


@REGISTRY.rewriter("conv")
def conv_rewrite(view: OpView, resizer: Resizer) -> None:
    """Update channel counts and groups of a conv module or functional call after slicing."""
    groups = int(view.attrs.get("groups", 1) or 1)
    new_groups = resizer.new_size(groups_axis(view, groups)) if groups > 1 else 1
    m = view.module
    if m is not None:
        w = view.module_tensor("weight")
        transposed = view.attrs["transposed"]
        resizer.set_module_attr(view, "groups", new_groups)
        resizer.set_module_attr(view, "in_channels", w.shape[0] if transposed else w.shape[1] * new_groups)
        resizer.set_module_attr(view, "out_channels", w.shape[1] * new_groups if transposed else w.shape[0])
    elif new_groups != groups:
        resizer.set_arg(view, "groups", new_groups)


@REGISTRY.cost("conv")
def conv_cost(view: OpView, sizes: Sizes) -> OpCost:
    """Conv: a MAC per output position (input position if transposed) and weight fan-in, plus the bias adds."""
    x, w = view.inputs[0], view.params.get("weight")
    if x is None or w is None:
        return default_cost(view, sizes)
    lead = x if view.attrs.get("transposed", False) else view.out
    macs = sizes.numel(lead) * sizes.numel(w, range(1, w.ndim))
    groups = int(view.attrs.get("groups", 1) or 1)
    channel_dim = 1 if x.ndim == w.ndim else 0
    category = "conv" if groups == 1 else "depthwise" if groups == x.shape[channel_dim] else "grouped"
    bias_adds = out_numel(view, sizes) if view.params.get("bias") is not None else 0
    return op_cost(view, sizes, category, 2 * macs + bias_adds, macs, (sizes.size(w, 0), sizes.size(w, 1)))
