"""Ops that act on spatial dims channel by channel: pooling, interpolation, padding, pixel (un)shuffle, roll.

The batch and channel dims pass through (a zero channel stays zero); the spatial dims they change are frozen.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from fxopt.ops.cost import elementwise_cost
from fxopt.ops.facts import Facts
from fxopt.ops.forms import aten_ops, bind, int_list, methods, module_form, register
from fxopt.ops.registry import REGISTRY
from fxopt.ops.view import Axis, OpView, output_refs, ref_of

POOL_MODULES = [nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d,
                nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
                nn.LPPool2d]
POOL_FUNCS = [F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
              F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
              F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate, F.upsample, torch.max_pool2d,
              torch.avg_pool1d, torch.adaptive_avg_pool1d, F.max_pool2d_with_indices, F.lp_pool2d]
POOL_ATEN = aten_ops("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
                     "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
                     "adaptive_max_pool2d", "adaptive_max_pool3d", "max_pool2d_with_indices",
                     "max_pool3d_with_indices", "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d",
                     "upsample_bilinear2d", "upsample_bicubic2d", "upsample_linear1d", "_adaptive_avg_pool2d",
                     "_upsample_nearest_exact2d", "_upsample_bilinear2d_aa")


def _first_input(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    if node.op == "call_module":
        return module_form(params=())(node, gm, kind)
    first = node.args[0] if node.args else node.kwargs.get("input")
    return OpView(node, kind, (ref_of(first),), {}, {}, output_refs(node))


register("spatial", POOL_MODULES + POOL_FUNCS + POOL_ATEN, _first_input)


@REGISTRY.rule("spatial")
def spatial_rule(view: OpView, facts: Facts) -> None:
    """Pooling/interpolation: leading dims pass through unchanged; dims whose size changes are frozen."""
    x = view.inputs[0]
    assert x is not None
    for out in view.outputs:
        for d in range(out.ndim):
            if d < x.ndim and d < 2 and x.shape[d] == out.shape[d] and x.ndim == out.ndim:
                facts.transfer(out.axis(d), x.axis(d))
            else:
                facts.freeze(out.axis(d), "spatial dim")
    for d in range(2, x.ndim):
        facts.freeze(x.axis(d), "spatial dim")


CONSTANT_PAD_MODULES = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
                        nn.ConstantPad3d)
COPY_PAD_MODULES = (nn.ReflectionPad2d, nn.ReplicationPad2d)  # the border copies inner values: no fill value


def _pad_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        if not isinstance(m, CONSTANT_PAD_MODULES + COPY_PAD_MODULES):
            raise TypeError(f"{node.name}: {type(m).__name__} is not a padding module the pad rule knows")
        value = m.value if isinstance(m, CONSTANT_PAD_MODULES) else None
        return OpView(node, kind, (ref_of(node.args[0]),), {}, {"pad": list(m.padding), "value": value},
                      output_refs(node), m)
    b = bind(node, ["input", "pad", "mode", "value"] if node.target is F.pad else ["input", "pad", "value"])
    return OpView(node, kind, (ref_of(b.get("input")),), {}, {"pad": b.get("pad"), "value": b.get("value", 0)},
                  output_refs(node))


register("pad", [F.pad, *CONSTANT_PAD_MODULES, *COPY_PAD_MODULES]
         + aten_ops("constant_pad_nd", "pad", "reflection_pad2d", "replication_pad2d"), _pad_form)


@REGISTRY.rule("pad")
def pad_rule(view: OpView, facts: Facts) -> None:
    """Padding: padded dims are frozen; other dims pass through (zero stays zero)."""
    x, out = view.inputs[0], view.out
    assert x is not None
    value = view.attrs.get("value")
    zero_pad = value is None or (isinstance(value, (int, float)) and value == 0)
    for d in range(x.ndim):
        if x.shape[d] == out.shape[d]:
            facts.same(out.axis(d), x.axis(d))
            if zero_pad:  # a constant border of value v around a zero channel is not zero
                facts.zero(out.axis(d), "all", [x.axis(d)])
        else:
            facts.freeze(x.axis(d), "padded dim")
            facts.freeze(out.axis(d), "padded dim")


register("pixel_shuffle", [nn.PixelShuffle, F.pixel_shuffle] + aten_ops("pixel_shuffle"), _first_input)
register("pixel_unshuffle", [nn.PixelUnshuffle, F.pixel_unshuffle] + aten_ops("pixel_unshuffle"), _first_input)


@REGISTRY.rule("pixel_shuffle", "pixel_unshuffle")
def pixel_shuffle_rule(view: OpView, facts: Facts) -> None:
    """Pixel (un)shuffle: the wide channel dim is ``channels x r x r``; the r factors are frozen."""
    x, out = view.inputs[0], view.out
    assert x is not None
    wide, narrow = (x, out) if view.kind == "pixel_shuffle" else (out, x)
    r2 = wide.shape[-3] // narrow.shape[-3]
    r = Axis(f"{view.node.name}:r2", 0, r2)
    facts.freeze(r, "pixel shuffle factor")
    facts.product([wide.axis(-3)], [narrow.axis(-3), r])
    facts.zero(out.axis(-3), "all", [x.axis(-3)])
    for d in range(x.ndim - 3):
        facts.transfer(out.axis(d), x.axis(d))
    for t in (x, out):
        facts.freeze(t.axis(-1), "spatial dim")
        facts.freeze(t.axis(-2), "spatial dim")


def _roll_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    b = bind(node, ["input", "shifts", "dims"])
    return OpView(node, kind, (ref_of(b.get("input")),), {}, {"dims": int_list(b.get("dims"))}, output_refs(node))


register("roll", [torch.roll] + methods("roll") + aten_ops("roll"), _roll_form)


@REGISTRY.rule("roll")
def roll_rule(view: OpView, facts: Facts) -> None:
    """roll: rolled dims are frozen (elements move); the others pass through."""
    x, out = view.inputs[0], view.out
    assert x is not None
    dims = {d % x.ndim for d in view.attrs["dims"]} if view.attrs["dims"] else set(range(x.ndim))
    for d in range(x.ndim):
        if d in dims:
            facts.freeze(x.axis(d), "rolled dim")
            facts.freeze(out.axis(d), "rolled dim")
        else:
            facts.transfer(out.axis(d), x.axis(d))


REGISTRY.cost("spatial", "pad", "pixel_shuffle", "pixel_unshuffle", "roll")(elementwise_cost)
