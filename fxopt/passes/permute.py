"""Permutation pass: a grid layer's output shuffle moves through elementwise ops into the next layer's input.

A shuffled grid layer (Monarch or BTT with ``shuffle=True``, Dao et al.'s final permutation P) writes its output
in (row, block-row) order. When that output reaches another grid layer only through elementwise ops (activations,
elementwise arithmetic with a scalar, dropout in eval mode), the permutation commutes with them, and the consumer
can read the producer's blocked (block-row, row) order directly: the producer drops its shuffle (its bias is
reordered to match) and the consumer gets ``in_blocked`` (block-column j read from the strided columns
``j, j + cols, ...``). That is exact when the consumer has one block-column per row of the producer's blocks
(``consumer.cols == producer.out_features // producer.rows``); two consecutive Monarch layers then pass no
permutation between them.

Left alone, with the reason: a tensor on the way with another user (a residual reads the permuted order), an op on
the way that is not elementwise, a layer called more than once, blocks that do not line up, a bias with a tied
alias. Not in the default pipelines: ``docs/kernels.md`` ("Permutations") has the measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.fx as fx
import torch.nn as nn

from fxopt.ops.view import OpView
from fxopt.passes.base import Pass, PassContext, PassResult, register_pass
from fxopt.passes.editor import GraphEditor
from fxopt.passes.match import exclusive, view_of
from fxopt.structured.grid import GridLinear

ELEMENTWISE_KINDS = frozenset({"unary_zero", "unary_const", "add", "mul", "div", "pow"})
"""OpView kinds that act elementwise when their only tensor operand is the permuted tensor (others are scalars)."""


def _grid(node: fx.Node, gm: fx.GraphModule) -> GridLinear | None:
    if node.op != "call_module":
        return None
    module = gm.get_submodule(str(node.target))
    return module if isinstance(module, GridLinear) else None


def _not_elementwise(node: fx.Node, source: fx.Node, gm: fx.GraphModule) -> str | None:
    """Why ``node`` does not commute with a permutation of ``source``'s last dim, or ``None`` when it does."""
    view = view_of(node, gm)
    kind = view.kind if view is not None else node.op
    if view is None or kind not in ELEMENTWISE_KINDS:
        return f"{node.name} ({kind}) is not an elementwise op"
    if node.all_input_nodes != [source]:
        return f"{node.name} ({kind}) reads other tensors besides {source.name}"
    before, after = source.meta.get("val"), node.meta.get("val")
    if not (isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor) and before.shape == after.shape):
        return f"{node.name} ({kind}) changes the shape of {source.name}"
    return _random(node, view, gm)


def _random(node: fx.Node, view: OpView, gm: fx.GraphModule) -> str | None:
    """Dropout in training mode draws a mask per position: permuting its input changes which values it drops."""
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.training:
            return f"{node.name} is dropout in training mode"
        return None
    name = getattr(node.target, "__name__", str(node.target))
    if "dropout" in name and node.kwargs.get("training", len(node.args) < 3 or bool(node.args[2])):
        return f"{node.name} is dropout in training mode"
    return None


def _calls(gm: fx.GraphModule, target: str) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == target)


def _consumer(node: fx.Node, gm: fx.GraphModule) -> tuple[fx.Node | None, str]:
    """The grid layer ``node``'s output reaches through single-user elementwise ops, or ``None`` and why not."""
    current = node
    while True:
        users = list(current.users)
        if len(users) != 1:
            names = ", ".join(u.name for u in users) or "nothing"
            return None, (f"{current.name} has {len(users)} users ({names}); each would need the permuted order "
                          f"undone, so the shuffle stays")
        user = users[0]
        if _grid(user, gm) is not None and user.args and user.args[0] is current:
            return user, ""
        reason = _not_elementwise(user, current, gm)
        if reason is not None:
            return None, reason + f", so {node.name}'s shuffle stays"
        current = user


def _blocked_reason(producer: GridLinear, consumer: GridLinear, p_node: fx.Node, c_node: fx.Node,
                    gm: fx.GraphModule) -> str | None:
    per_block = producer.out_features // producer.rows
    if consumer.in_blocked:
        return f"{c_node.name} already reads a blocked input"
    if consumer.cols != per_block or consumer.in_features != producer.out_features:
        return (f"{c_node.name} has {consumer.cols} block-columns, {p_node.name} writes blocks of {per_block} rows: "
                f"the blocked order is not a strided read for {c_node.name} (it needs cols == {per_block})")
    for node in (p_node, c_node):
        if _calls(gm, str(node.target)) != 1:
            return f"module {node.target} is called more than once; its other calls read the logical order"
    return None


def move_shuffle(editor: GraphEditor, gm: fx.GraphModule, p_node: fx.Node, c_node: fx.Node) -> None:
    """Drop ``p_node``'s output shuffle (its bias reordered to blocked order) and make ``c_node`` read blocked input.

    Args:
        editor: the pass's editor (every change is logged).
        gm: the graph module.
        p_node: the call of a shuffled grid layer.
        c_node: the call of the grid layer its output reaches through elementwise ops.
    """
    path = str(p_node.target)
    producer = gm.get_submodule(path)
    assert isinstance(producer, GridLinear)
    if producer.bias is not None:
        rows, m = producer.rows, producer.out_features
        reordered = producer.bias.detach().reshape(m // rows, rows).T.reshape(m)  # (row, block-row) -> blocked
        editor.set_tensor(f"{path}.bias", reordered, "bias in blocked (block-row, row) order")
    editor.set_module_attr(path, "shuffle", False)
    editor.set_module_attr(str(c_node.target), "in_blocked", True)


@register_pass
@dataclass(frozen=True)
class PermutePass(Pass):
    """Move each shuffled grid layer's output permutation into the next grid layer's input read (exact)."""

    name: ClassVar[str] = "permute"

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        """Move every shuffle whose output reaches an aligned grid layer through elementwise ops only."""
        editor = GraphEditor(gm, ctx, str(self))
        moved = 0
        for node in list(gm.graph.nodes):
            producer = _grid(node, gm)
            if producer is None or not producer.shuffle:
                continue
            c_node, reason = _consumer(node, gm)
            if c_node is None:
                editor.skip(self.name, node, reason)
                continue
            consumer = _grid(c_node, gm)
            assert consumer is not None
            view = view_of(node, gm)
            assert view is not None
            veto = _blocked_reason(producer, consumer, node, c_node, gm) or exclusive(editor, view, ("bias",))
            if veto is not None:
                editor.skip(self.name, node, veto)
                continue
            move_shuffle(editor, gm, node, c_node)
            moved += 1
        return editor.finish({"moved": moved})
