"""channels_last: run 2-D conv nets in NHWC memory format.

Conv weights are stored channels_last and the inputs of convs are converted once (``x.contiguous(
memory_format=torch.channels_last)``); channels_last then flows through convs and elementwise ops. Values are
unchanged (only strides differ); 4-D outputs are returned in the default format. An op that needs a contiguous
input (``view``) gets a ``contiguous()`` in front of it. The pass fires only when 2-D convs carry at least
``min_conv_share`` of the FLOPs: on transformers it would only add copies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.fx as fx

from fxopt.analysis.cost import graph_cost
from fxopt.errors import PassError
from fxopt.ops.view import OpView
from fxopt.passes.base import Pass, PassContext, PassResult, register_pass
from fxopt.passes.editor import GraphEditor
from fxopt.passes.match import param_tensor, view_of
from fxopt.passes.verify import repropagate, shape_inputs

CL = torch.channels_last
MAX_FIXES = 64


def _is_cl(val: object) -> bool:
    return isinstance(val, torch.Tensor) and val.ndim == 4 and val.is_contiguous(memory_format=CL)


def conv_share(gm: fx.GraphModule, inputs: tuple[object, ...]) -> float:
    """Fraction of the graph's FLOPs spent in 2-D convolutions (at the example shapes)."""
    table = graph_cost(gm, inputs, symbolic=False)
    total = table.flops()
    if total <= 0:
        return 0.0
    conv = sum(float(r.flops.xreplace({s: table.bindings.get(s.name, 1) for s in r.flops.free_symbols}))
               for r in table.rows if r.category in ("conv", "depthwise", "grouped"))
    return conv / total


def _convs_2d(gm: fx.GraphModule) -> list[OpView]:
    found: list[OpView] = []
    for n in gm.graph.nodes:
        view = view_of(n, gm)
        if view is not None and view.kind == "conv" and view.inputs and view.inputs[0] is not None:
            w = view.params.get("weight")
            if view.inputs[0].ndim == 4 and w is not None and w.ndim == 4:
                found.append(view)
    return found


def _to_format(editor: GraphEditor, user: fx.Node, src: fx.Node, fmt: torch.memory_format) -> fx.Node:
    conv = editor.call("call_method", "contiguous", [src], {"memory_format": fmt}, before=user)
    editor.set_input(user, src, conv)
    return conv


@register_pass
@dataclass(frozen=True)
class ChannelsLastPass(Pass):
    """Convert conv nets to channels_last memory format (exact: only strides change)."""

    name: ClassVar[str] = "channels_last"
    min_conv_share: float = 0.5

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        """Convert weights and conv inputs; keep 4-D outputs in the default format."""
        editor = GraphEditor(gm, ctx, str(self))
        convs = _convs_2d(gm)
        if not convs:
            editor.skip("channels_last", "graph", "no 2-D convolution")
            return editor.finish()
        share = conv_share(gm, ctx.example_inputs)
        if share < self.min_conv_share:
            editor.skip("channels_last", "graph", f"2-D convs carry {share:.0%} of the FLOPs "
                        f"(< {self.min_conv_share:.0%}): not a conv net")
            return editor.finish({"conv_share": share})
        for view in convs:
            ref = view.params["weight"]
            w = param_tensor(editor, ref)
            if w is not None and ref is not None and not w.is_contiguous(memory_format=CL):
                editor.set_tensor(str(ref.qualname), w.contiguous(memory_format=CL), "channels_last")
        inserted = []
        for view in convs:
            x = view.inputs[0]
            if x is not None and x.node is not None and not _is_cl(x.node.meta.get("val")):
                inserted.append(_to_format(editor, view.node, x.node, CL))
        self._settle(gm, ctx, editor)
        for node in inserted:  # conversions of tensors that turned out channels_last already
            src = node.args[0]
            if isinstance(src, fx.Node) and _is_cl(src.meta.get("val")):
                editor.replace_uses(node, src, "already channels_last")
                editor.erase(node)
        return editor.finish({"conv_share": share, "convs": len(convs)})

    def _settle(self, gm: fx.GraphModule, ctx: PassContext, editor: GraphEditor) -> None:
        """Propagate strides; put contiguous() before ops that reject channels_last and before 4-D outputs."""
        inputs = shape_inputs(gm, ctx.example_inputs)
        for _ in range(MAX_FIXES):
            gm.recompile()
            try:
                repropagate(gm, inputs)
                break
            except PassError as exc:
                node = next((n for n in gm.graph.nodes if n.name == exc.node), None)
                if node is None or not re.search(r"stride|contiguous|view", str(exc)):
                    raise
                srcs = [i for i in node.all_input_nodes if _is_cl(i.meta.get("val"))]
                if not srcs:
                    raise
                for src in srcs:
                    _to_format(editor, node, src, torch.contiguous_format)
        output = next(n for n in gm.graph.nodes if n.op == "output")
        for src in list(output.all_input_nodes):
            if _is_cl(src.meta.get("val")) and not src.meta["val"].is_contiguous():
                _to_format(editor, output, src, torch.contiguous_format)
