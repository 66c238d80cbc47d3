"""Precision changes: bf16/fp16 weights and activations, or int8 dynamic quantization of linears. Lossy, opt-in.

``bf16``/``fp16``: floating parameters and buffers are converted, floating inputs are cast on entry and floating
outputs cast back to their original dtype, so callers see the same interface. ``int8_dynamic``: ``nn.Linear``
modules become dynamically quantized linears (int8 weights, activations quantized per batch); functional
linears are left alone and reported. The pass measures the output error on the example inputs and, with
``max_error`` set, fails when the relative error exceeds it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.fx as fx

from fxopt.errors import PassError
from fxopt.passes.base import Pass, PassContext, PassResult, register_pass
from fxopt.passes.editor import GraphEditor
from fxopt.passes.match import view_of
from fxopt.passes.verify import outputs_of

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _relative_error(reference: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
    worst = 0.0
    for r, o in zip(reference, outputs, strict=True):
        if r.is_floating_point() and r.numel():
            scale = max(r.double().abs().max().item(), 1e-30)
            worst = max(worst, (r.double() - o.double()).abs().max().item() / scale)
    return worst


def to_half(gm: fx.GraphModule, editor: GraphEditor, dtype: torch.dtype) -> None:
    """Convert floating tensors to ``dtype``; cast floating inputs in and floating outputs back."""
    for name, t in list(gm.named_parameters()) + list(gm.named_buffers()):
        if t.is_floating_point() and t.dtype != dtype:
            editor.set_tensor(name, t.to(dtype), str(dtype))
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node in placeholders:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and val.is_floating_point():
            cast = editor.call("call_method", "to", [node, dtype], after=placeholders[-1])
            for user in list(node.users):
                if user is not cast:
                    editor.set_input(user, node, cast)
    output = next(n for n in gm.graph.nodes if n.op == "output")
    for src in list(output.all_input_nodes):
        val = src.meta.get("val")
        if isinstance(val, torch.Tensor) and val.is_floating_point():
            back = editor.call("call_method", "to", [src, val.dtype], before=output)
            editor.set_input(output, src, back)


def to_int8_dynamic(gm: fx.GraphModule, editor: GraphEditor) -> None:
    """Swap every ``nn.Linear`` leaf for a dynamically quantized int8 linear."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import default_dynamic_qconfig, propagate_qconfig_

    for node in gm.graph.nodes:
        view = view_of(node, gm)
        if view is None or view.kind != "linear":
            continue
        if node.op != "call_module" or type(view.module) is not torch.nn.Linear:
            editor.skip("int8_dynamic", node, "only nn.Linear modules are quantized")
            continue
        module = view.module
        propagate_qconfig_(module, {torch.nn.Linear: default_dynamic_qconfig})
        editor.set_submodule(str(node.target), DynamicLinear.from_float(module))


@register_pass
@dataclass(frozen=True)
class PrecisionPass(Pass):
    """Lower the precision of weights and activations (lossy; reports the error it introduced).

    Attributes:
        dtype: ``"bf16"``, ``"fp16"`` or ``"int8_dynamic"``.
        max_error: largest accepted relative output error on the example inputs (None: only report it).
    """

    name: ClassVar[str] = "precision"
    lossless: ClassVar[bool] = False
    dtype: str = "bf16"
    max_error: float | None = None

    def __post_init__(self) -> None:
        if self.dtype not in (*DTYPES, "int8_dynamic"):
            raise ValueError(f"dtype must be one of {', '.join([*DTYPES, 'int8_dynamic'])}, not {self.dtype!r}")

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        """Convert, then measure the output error against the graph before the conversion."""
        real = bool(ctx.example_inputs) and all(
            not isinstance(x, torch.Tensor) or x.device.type != "meta" for x in ctx.example_inputs)
        reference = outputs_of(gm, ctx.example_inputs) if real else None
        editor = GraphEditor(gm, ctx, str(self))
        if self.dtype == "int8_dynamic":
            to_int8_dynamic(gm, editor)
        else:
            to_half(gm, editor, DTYPES[self.dtype])
        gm.recompile()
        metrics: dict[str, float] = {}
        if reference is not None:
            error = _relative_error(reference, outputs_of(gm, ctx.example_inputs))
            metrics["relative_error"] = error
            if self.max_error is not None and error > self.max_error:
                raise PassError(f"{self.dtype} gives relative output error {error:.3g} > max_error "
                                f"{self.max_error:.3g}")
        return editor.finish(metrics)
