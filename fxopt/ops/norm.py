"""Normalization layers: batch, instance, group, layer and RMS norm, module, functional and ATen forms.

Batch and instance norm act per channel: exact. Layer and RMS norm compute statistics over the normalized dims,
so removing a channel changes the others: those dims are inexact sinks. Group norm is per group: removing whole
groups is exact, removing channels inside every group is not.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
import torch.nn.functional as F

from fxopt.ops.cost import OpCost, Sizes, op_cost, out_numel
from fxopt.ops.facts import Facts
from fxopt.ops.forms import aten_ops, function_form, int_list, module_form, register
from fxopt.ops.registry import REGISTRY
from fxopt.ops.resize import Resizer
from fxopt.ops.view import Axis, OpView, tensor_attr

BN_MODULES = [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm]
IN_MODULES = [nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d]
_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")

register("batch_norm", BN_MODULES, module_form(params=_BN_PARAMS))
register("batch_norm", aten_ops("batch_norm", "_native_batch_norm_legit_no_training",
                                                  "native_batch_norm", "_native_batch_norm_legit"),
         function_form(["input", "weight", "bias", "running_mean", "running_var"], ["input"], _BN_PARAMS))
register("batch_norm", [F.batch_norm], function_form(["input", "running_mean", "running_var", "weight", "bias"],
                                                     ["input"], _BN_PARAMS))
register("instance_norm", IN_MODULES, module_form(params=_BN_PARAMS))
register("instance_norm", [F.instance_norm] + aten_ops("instance_norm"),
         function_form(["input", "running_mean", "running_var", "weight", "bias"], ["input"], _BN_PARAMS))


@REGISTRY.rule("batch_norm", "instance_norm")
def batch_norm_rule(view: OpView, facts: Facts) -> None:
    """Per-channel normalization on dim 1: parameters and running stats are the channel; zero via weight and bias."""
    x = view.inputs[0]
    assert x is not None
    outs = [o for o in view.outputs if o.shape == x.shape]
    c = x.axis(1) if x.ndim > 1 else x.axis(0)
    for p in _BN_PARAMS:
        t = view.params.get(p)
        if t is not None and t.ndim == 1:
            facts.same(t.axis(0), c)
    w, b = view.params.get("weight"), view.params.get("bias")
    for out in outs:
        for d in range(x.ndim):
            facts.same(out.axis(d), x.axis(d))  # other dims: a zero row becomes the bias, not zero
        if w is not None and b is not None:
            facts.zero(out.axis(c.dim), "all", [w.axis(0), b.axis(0)])
        elif view.kind == "instance_norm" and w is None and b is None:
            facts.zero(out.axis(c.dim), "all", [c])
    for extra in view.outputs:
        if extra not in outs and extra.ndim == 1 and extra.shape[0] == c.size:
            facts.same(extra.axis(0), c)


@REGISTRY.rewriter("batch_norm", "instance_norm")
def batch_norm_rewrite(view: OpView, resizer: Resizer) -> None:
    """Keep ``num_features`` in step with the sliced parameters."""
    if view.module is not None:
        x = view.inputs[0]
        assert x is not None
        resizer.set_module_attr(view, "num_features", resizer.new_size(x.axis(1) if x.ndim > 1 else x.axis(0)))


def _ln_attrs(m: nn.Module) -> dict[str, Any]:
    assert isinstance(m, (nn.LayerNorm, nn.RMSNorm)), "registered for LayerNorm and RMSNorm only"
    return {"normalized_shape": list(m.normalized_shape)}


register("layer_norm", [nn.LayerNorm], module_form(attrs=_ln_attrs))
register("layer_norm", [F.layer_norm] + aten_ops("layer_norm", "native_layer_norm"),
         function_form(["input", "normalized_shape", "weight", "bias", "eps"], ["input"], ["weight", "bias"]))
register("rms_norm", [nn.RMSNorm], module_form(params=("weight",), attrs=_ln_attrs))
register("rms_norm", [F.rms_norm] + aten_ops("rms_norm", "_fused_rms_norm"),
         function_form(["input", "normalized_shape", "weight", "eps"], ["input"], ["weight"]))


@REGISTRY.rule("layer_norm", "rms_norm")
def layer_norm_rule(view: OpView, facts: Facts) -> None:
    """LayerNorm/RMSNorm: statistics over the last dims (inexact sinks); affine params are producers there."""
    x = view.inputs[0]
    assert x is not None
    k = len(int_list(view.attrs.get("normalized_shape")))
    out = view.outputs[0]
    w, b = view.params.get("weight"), view.params.get("bias")
    for d in range(x.ndim):
        facts.same(out.axis(d), x.axis(d))
        normalized = d >= x.ndim - k
        if not normalized:  # a zero row normalizes to the bias: zero only without one
            if b is None:
                facts.zero(out.axis(d), "all", [x.axis(d)])
            continue
        j = d - (x.ndim - k)
        srcs: list[Axis] = []
        for p in (w, b):
            if p is not None:
                facts.same(p.axis(j), x.axis(d))
                srcs.append(p.axis(j))
        if view.kind == "rms_norm" and w is not None:
            facts.zero(out.axis(d), "any", [w.axis(j), x.axis(d)])
        elif srcs:
            facts.zero(out.axis(d), "all", srcs)
        facts.sink(x.axis(d), False, f"{view.node.name} normalizes over this dim: removing channels changes "
                                     "its mean/variance")


@REGISTRY.rewriter("layer_norm", "rms_norm")
def layer_norm_rewrite(view: OpView, resizer: Resizer) -> None:
    """Rewrite ``normalized_shape`` from the new sizes of the normalized dims."""
    x = view.inputs[0]
    assert x is not None
    k = len(int_list(view.attrs.get("normalized_shape")))
    new = [resizer.new_size(x.axis(d)) for d in range(x.ndim - k, x.ndim)]
    if view.module is not None:
        resizer.set_module_attr(view, "normalized_shape", tuple(new))
    elif new != int_list(view.attrs.get("normalized_shape")):
        resizer.set_arg(view, "normalized_shape", new)


def _gn_attrs(m: nn.Module) -> dict[str, Any]:
    return {"num_groups": m.num_groups}


register("group_norm", [nn.GroupNorm], module_form(attrs=_gn_attrs))
register("group_norm", [F.group_norm], function_form(["input", "num_groups", "weight", "bias", "eps"], ["input"],
                                                     ["weight", "bias"]))
register("group_norm", aten_ops("group_norm"), function_form(["input", "num_groups", "weight", "bias"], ["input"],
                                                              ["weight", "bias"]))


def gn_groups_axis(view: OpView, groups: int) -> Axis:
    """The synthetic axis of GroupNorm's groups factor."""
    return Axis(f"{view.node.name}:groups", 0, groups)


@REGISTRY.rule("group_norm")
def group_norm_rule(view: OpView, facts: Facts) -> None:
    """GroupNorm: channels = groups x per_group; whole groups are exact, channels within groups are not."""
    x, out = view.inputs[0], view.out
    assert x is not None
    groups = int(view.attrs["num_groups"])
    c = x.axis(1)
    per = Axis(f"{view.node.name}:per_group", 0, c.size // groups)
    facts.product([c], [gn_groups_axis(view, groups), per])
    w, b = view.params.get("weight"), view.params.get("bias")
    for d in range(x.ndim):
        facts.same(out.axis(d), x.axis(d))
        if d == 0 and b is None:  # a zero sample normalizes to zero; with a bias it becomes the bias
            facts.zero(out.axis(d), "all", [x.axis(d)])
    srcs = []
    for p in (w, b):
        if p is not None:
            facts.same(p.axis(0), c)
            srcs.append(p.axis(0))
    if srcs:
        facts.zero(out.axis(1), "all", srcs)
    if per.size > 1:
        facts.sink(per, False, f"{view.node.name} normalizes over the channels of each group")


@REGISTRY.rewriter("group_norm")
def group_norm_rewrite(view: OpView, resizer: Resizer) -> None:
    """Rewrite ``num_groups``/``num_channels`` from the new sizes."""
    groups = int(view.attrs["num_groups"])
    new_groups = resizer.new_size(gn_groups_axis(view, groups))
    if view.module is not None:
        weight = tensor_attr(view.module, "weight")
        resizer.set_module_attr(view, "num_groups", new_groups)
        resizer.set_module_attr(view, "num_channels", weight.shape[0] if weight is not None else None)
    elif new_groups != groups:
        resizer.set_arg(view, "num_groups", new_groups)


NORM_FLOPS = {"batch_norm": 2, "instance_norm": 5, "layer_norm": 5, "group_norm": 5, "rms_norm": 4}
"""FLOPs per output element: batch norm in eval mode is a scale and a shift; the others compute statistics."""


@REGISTRY.cost(*NORM_FLOPS)
def norm_cost(view: OpView, sizes: Sizes) -> OpCost:
    """Normalization: a few FLOPs per output element (``NORM_FLOPS``) plus the memory traffic."""
    return op_cost(view, sizes, "norm", NORM_FLOPS[view.kind] * out_numel(view, sizes))
