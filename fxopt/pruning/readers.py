"""Readers: the weighted layers (linear, conv, addmm) that sum over a tensor's channels.

A group's channels end where a layer sums them against its weight columns. Those layers are where activation
statistics are taken (the variance criterion) and where reconstruction edits weights and biases: the input of a
reader is the tensor whose pruned channels it stops seeing.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx

from fxopt.analysis.analysis import Analysis
from fxopt.analysis.groups import Group


@dataclass(frozen=True)
class Reader:
    """A layer that sums over the channels of its input.

    Attributes:
        node: the node's name.
        kind: ``"linear"``, ``"conv"`` or ``"addmm"``.
        input_key: the analysis key of the input activation.
        channel_dim: the input's channel dim.
        weight: qualname of the weight.
        weight_in_dim: the weight dim matched against input channels (1 for linear/conv, 0 for addmm).
        weight_out_dim: the weight dim of output channels.
        bias: qualname of the bias, ``None`` when the layer has none.
        groups: conv groups (1 for linear layers).
        module: the ``call_module`` target, ``None`` for functional calls.
    """

    node: str
    kind: str
    input_key: str
    channel_dim: int
    weight: str
    weight_in_dim: int
    weight_out_dim: int
    bias: str | None
    groups: int
    module: str | None


def find_readers(analysis: Analysis) -> list[Reader]:
    """Every linear/conv/addmm node of ``analysis.gm`` whose input and weight are known tensors."""
    readers = []
    for node in analysis.gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        view = analysis.registry.view(node, analysis.gm)
        if view.kind not in ("linear", "conv", "addmm"):
            continue
        x = view.inputs[0] if view.inputs else None
        w = view.params.get("weight")
        b = view.params.get("bias")
        if x is None or w is None or w.qualname is None or x.is_param:
            continue
        groups = int(view.attrs.get("groups", 1) or 1)
        if view.kind == "linear":
            cdim, win, wout = x.ndim - 1, 1, 0
        elif view.kind == "addmm":
            cdim, win, wout = x.ndim - 1, 0, 1
        else:
            if view.attrs.get("transposed", False):
                continue  # a transposed conv's weight is (in, out/groups, k...): handled as a plain consumer only
            cdim, win, wout = (1 if x.ndim == w.ndim else 0), 1, 0
        module = str(node.target) if node.op == "call_module" else None
        readers.append(Reader(node.name, view.kind, x.key, cdim, w.qualname, win, wout,
                              b.qualname if b is not None else None, groups, module))
    return readers


def readers_of(analysis: Analysis, group: Group, readers: list[Reader]) -> list[Reader]:
    """The readers whose input channels carry ``group``'s units."""
    classes = set(group.classes)
    return [r for r in readers if not classes.isdisjoint(analysis.dims_of((r.input_key, r.channel_dim)))]


def node_of(gm: fx.GraphModule, name: str) -> fx.Node:
    """The node called ``name``."""
    for n in gm.graph.nodes:
        if n.name == name:
            return n
    raise KeyError(name)
