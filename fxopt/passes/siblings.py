"""Horizontal fusion: sibling linears that read the same tensor become one linear whose output is split.

Q, K and V projections (or gate and up projections) are the typical case: one larger matmul replaces several
smaller ones, which pays off on GPUs (fewer, fuller kernels). Exact: each output column is computed from the
same row of the same weights. The fused weight is a new parameter; the siblings' parameters are removed.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.fx as fx
import torch.nn.functional as F

from fxopt.ops.view import OpView
from fxopt.passes.base import Pass, PassContext, PassResult, register_pass
from fxopt.passes.editor import GraphEditor
from fxopt.passes.match import exclusive, param_tensor, stored_matrix, view_of


def _eligible(view: OpView, editor: GraphEditor) -> str | None:
    return stored_matrix(editor, view) or exclusive(editor, view, ("weight", "bias"))


def sibling_groups(gm: fx.GraphModule, editor: GraphEditor, min_siblings: int) -> list[list[OpView]]:
    """Groups of linears that read the same node, with equal weight dtype, device and input size."""
    groups = []
    for node in gm.graph.nodes:
        by_key: dict[tuple[object, ...], list[OpView]] = {}
        for user in node.users:
            view = view_of(user, gm)
            if view is None or view.kind != "linear" or not view.inputs or view.inputs[0] is None:
                continue
            if view.inputs[0].node is not node:
                continue
            reason = _eligible(view, editor)
            if reason is not None:
                editor.skip("fuse_siblings", user, reason)
                continue
            w = param_tensor(editor, view.params["weight"])
            assert w is not None
            by_key.setdefault((w.dtype, w.device, w.shape[1]), []).append(view)
        groups += [g for g in by_key.values() if len(g) >= min_siblings]
    return groups


def fuse_group(gm: fx.GraphModule, editor: GraphEditor, group: list[OpView]) -> None:
    """Replace the linears of ``group`` by one linear and a split of its output."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    group = sorted(group, key=lambda v: order[v.node])
    weights = [param_tensor(editor, v.params["weight"]) for v in group]
    biases = [param_tensor(editor, v.params.get("bias")) for v in group]
    sizes = [int(w.shape[0]) for w in weights if w is not None]
    weight = torch.cat([w.detach() for w in weights if w is not None])
    bias = None
    if any(b is not None for b in biases):
        bias = torch.cat([b.detach() if b is not None else weight.new_zeros(s)
                          for b, s in zip(biases, sizes, strict=True)])
    first = group[0].node
    x = group[0].inputs[0]
    assert x is not None and x.node is not None
    w_name = editor.add_tensor(f"fused_{first.name}_weight", weight)
    args: list[object] = [x.node, editor.get_attr(w_name, before=first)]
    if bias is not None:
        args.append(editor.get_attr(editor.add_tensor(f"fused_{first.name}_bias", bias), before=first))
    fused = editor.call("call_function", F.linear, args, before=first)
    parts = editor.call("call_function", torch.split, [fused, sizes], {"dim": -1}, before=first)
    for i, view in enumerate(group):
        piece = editor.call("call_function", operator.getitem, [parts, i], before=first)
        editor.replace_uses(view.node, piece, f"fused into {fused.name}")
    for view in group:
        editor.erase(view.node)


@register_pass
@dataclass(frozen=True)
class HorizontalFusePass(Pass):
    """Fuse sibling linears reading the same tensor into one linear plus a split (for GPU targets)."""

    name: ClassVar[str] = "fuse_siblings"
    min_siblings: int = 2

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        """Fuse every group of at least ``min_siblings`` linears."""
        editor = GraphEditor(gm, ctx, str(self))
        groups = sibling_groups(gm, editor, self.min_siblings)
        for group in groups:
            fuse_group(gm, editor, group)
        return editor.finish({"groups": len(groups), "fused_linears": sum(len(g) for g in groups)})
