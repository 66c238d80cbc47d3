"""Reading an inference-mode batch norm as a per-channel affine map ``y = x * scale + shift``.

Module form (``nn.BatchNorm2d``), functional form (``F.batch_norm``) and the ATen forms (``aten.batch_norm``,
``_native_batch_norm_legit_no_training``) all read the same way. A batch norm that normalizes with batch
statistics (training mode, or no running statistics) is not an affine map and is reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fxopt.ops.view import OpView
from fxopt.passes.editor import GraphEditor
from fxopt.passes.match import call_kwargs, param_tensor


@dataclass(frozen=True)
class Affine:
    """A per-channel affine map, in float64: ``y = x * scale + shift`` along the channel dim."""

    scale: torch.Tensor
    shift: torch.Tensor


def bn_affine(view: OpView, editor: GraphEditor) -> Affine | str:
    """The affine map an eval-mode batch norm applies, or the reason it is not one.

    Args:
        view: an OpView of kind ``"batch_norm"``.
        editor: gives access to the stored tensors.
    """
    if view.module is not None:
        m = view.module
        if not isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            return f"{type(m).__name__} is not a batch norm module"
        if m.training:
            return "batch norm is in training mode (it normalizes with batch statistics)"
        eps = float(m.eps)
    else:
        kw = call_kwargs(view.node)
        if kw is None:
            return "cannot read the batch norm's arguments"
        if bool(kw.get("training", kw.get("train", False))):
            return "batch norm is in training mode (it normalizes with batch statistics)"
        eps = float(kw.get("eps", 1e-5))
    mean = param_tensor(editor, view.params.get("running_mean"))
    var = param_tensor(editor, view.params.get("running_var"))
    if mean is None or var is None:
        return "batch norm has no stored running statistics"
    weight_ref, bias_ref = view.params.get("weight"), view.params.get("bias")
    weight, bias = param_tensor(editor, weight_ref), param_tensor(editor, bias_ref)
    if (weight_ref is not None and weight is None) or (bias_ref is not None and bias is None):
        return "batch norm's affine parameters are computed by the graph"
    inv = torch.rsqrt(var.double() + eps)
    scale = inv * (weight.double() if weight is not None else 1.0)
    shift = (bias.double() if bias is not None else 0.0) - mean.double() * scale
    return Affine(scale, shift)

