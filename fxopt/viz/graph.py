"""The picture's data: nodes with their labels, colours and marks, edges, module clusters and the legend.

``build_graph`` turns a GraphModule (and, when given, its Analysis) into a ``VizGraph``; nothing here knows about
the DOT language or files, so the same data can be rendered, diffed or tested directly.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch.fx as fx

from fxopt.analysis.analysis import Analysis
from fxopt.analysis.groups import Group
from fxopt.ops.view import PARAM_PREFIX, output_refs
from fxopt.viz.colors import NEUTRAL, Colour, assign_colours, stable_colour
from fxopt.viz.labels import count_text, describe_op, describe_value, module_path

log = logging.getLogger(__name__)

MARKS = ("frozen", "barrier", "removed", "added", "resized", "fused", "substituted", "collapsed")
"""Marks a node may carry; the renderer gives each a distinct border."""


@dataclass
class VizNode:
    """One box of the picture.

    Attributes:
        name: the FX node name (or ``"block:<module path>"`` for a collapsed block); unique in the graph.
        op: what the node computes, e.g. ``"Conv2d 64→128 3×3 s2"``.
        shape: the output shape(s), e.g. ``"1×128×28×28"`` (``"a → b"`` in a before/after view).
        notes: extra label lines: the group the node produces, frozen dims, diff marks.
        groups: ids of the groups whose channels the node's output carries, in a stable order.
        kind: ``"input"``, ``"output"``, ``"param"``, ``"op"`` or ``"block"``.
        marks: a subset of ``MARKS``.
        module: module path of the enclosing cluster, outermost first (``("layer1", "layer1.0")``).
        tooltip: longer text shown on hover in SVG viewers.
    """

    name: str
    op: str
    shape: str = ""
    notes: list[str] = field(default_factory=list)
    groups: tuple[str, ...] = ()
    kind: str = "op"
    marks: set[str] = field(default_factory=set)
    module: tuple[str, ...] = ()
    tooltip: str = ""


@dataclass(frozen=True)
class VizEdge:
    """A data edge; ``group`` is the first group the carried tensor belongs to (it decides the colour)."""

    src: str
    dst: str
    group: str | None = None
    removed: bool = False


@dataclass(frozen=True)
class LegendEntry:
    """One legend row: a group id, its colour and a short description."""

    id: str
    colour: Colour
    text: str


@dataclass
class VizGraph:
    """Everything the renderer needs, in graph order."""

    title: str
    nodes: dict[str, VizNode]
    edges: list[VizEdge]
    clusters: dict[str, str]
    legend: list[LegendEntry]
    notes: list[str] = field(default_factory=list)
    palette: dict[str, Colour] = field(default_factory=dict)

    def colour_of(self, group_id: str | None) -> Colour:
        """The colour of a group id (neutral grey for ``None``)."""
        if group_id is None:
            return NEUTRAL
        hit = self.palette.get(group_id)
        return hit if hit is not None else stable_colour(group_id)

    def recolour(self) -> None:
        """Assign the palette from the groups drawn now: neighbours (same node, or an edge) get unlike colours."""
        neighbours: dict[str, set[str]] = defaultdict(set)
        for node in self.nodes.values():
            for g in node.groups:
                neighbours[g].update(x for x in node.groups if x != g)
        for e in self.edges:
            a, b = self.nodes.get(e.src), self.nodes.get(e.dst)
            if a is None or b is None:
                continue
            for g in a.groups:
                neighbours[g].update(x for x in b.groups if x != g)
            for g in b.groups:
                neighbours[g].update(x for x in a.groups if x != g)
        ids = [e.id for e in self.legend] + [g for n in self.nodes.values() for g in n.groups]
        self.palette = assign_colours(ids, neighbours)
        self.legend = [LegendEntry(e.id, self.palette[e.id], e.text) for e in self.legend]


class _GroupIndex:
    """Which groups (and frozen groups) a tensor axis or a parameter belongs to."""

    def __init__(self, analysis: Analysis) -> None:
        self.analysis = analysis
        self.by_class: dict[int, list[str]] = defaultdict(list)
        for g in analysis.groups:
            for c in g.classes:
                self.by_class[c].append(g.id)
        self.frozen_by_class: dict[int, list[str]] = defaultdict(list)
        for f in analysis.frozen:
            for m in f.members:
                if m.role == "producer":
                    for c in analysis.dims_of((PARAM_PREFIX + m.qualname, m.dim)):
                        if f.id not in self.frozen_by_class[c]:
                            self.frozen_by_class[c].append(f.id)
        self.first_producer: dict[str, list[Group]] = defaultdict(list)
        for g in analysis.groups:
            producer = next((m for m in g.members if m.role == "producer"), g.members[0] if g.members else None)
            if producer is not None:
                self.first_producer[producer.qualname].append(g)
        self.frozen_first: dict[str, list[str]] = defaultdict(list)
        for f in analysis.frozen:
            producer = next((m for m in f.members if m.role == "producer"), f.members[0] if f.members else None)
            if producer is not None:
                self.frozen_first[producer.qualname].append(f.id)

    def of_node(self, node: fx.Node) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """``(group ids, frozen group ids)`` of the channels in ``node``'s outputs, ordered by dim."""
        groups: list[str] = []
        frozen: list[str] = []
        for ref in output_refs(node):
            for d in range(ref.ndim):
                for c in self.analysis.dims_of((ref.key, d)):
                    groups += [g for g in self.by_class.get(c, ()) if g not in groups]
                    frozen += [f for f in self.frozen_by_class.get(c, ()) if f not in frozen]
        return tuple(groups), tuple(frozen)


def _params_read(node: fx.Node, gm: fx.GraphModule) -> list[str]:
    """Qualified names of the parameters and buffers ``node`` reads (its module's, or get_attr inputs)."""
    names: list[str] = []
    if node.op == "call_module":
        try:
            module = gm.get_submodule(str(node.target))
        except AttributeError:
            return names
        names += [f"{node.target}.{n}" for n, _ in module.named_parameters()]
        names += [f"{node.target}.{n}" for n, _ in module.named_buffers()]
    for inp in node.all_input_nodes:
        if inp.op == "get_attr":
            names.append(str(inp.target))
    if node.op == "get_attr":
        names.append(str(node.target))
    return names


def group_text(g: Group) -> str:
    """``"64 × channel, exact"``, ``"2 × head (64 ch each), approx."``: a group's size, unit and exactness."""
    unit = g.granularity if g.width == 1 else f"{g.granularity} ({g.width} ch each)"
    exact = "exact" if g.exact else "approx."
    return f"{g.size} × {unit}, {exact}"


def build_graph(gm: fx.GraphModule, analysis: Analysis | None = None, *, show_params: bool = False,
                title: str | None = None) -> VizGraph:
    """Describe ``gm`` as a VizGraph: one node per FX node, coloured by the groups of ``analysis``.

    Args:
        gm: the graph module to draw; ``node.meta["val"]`` gives the shapes when present.
        analysis: groups, frozen groups and barriers to show (node names must match ``gm``'s).
        show_params: draw ``get_attr`` nodes; by default their parameters are named on their consumers.
        title: the picture's title (defaults to the module's class name and the front-end used).

    Returns:
        The VizGraph; render it with ``fxopt.viz.dot.to_dot``.
    """
    index = _GroupIndex(analysis) if analysis is not None else None
    groups_by_id = {g.id: g for g in analysis.groups} if analysis is not None else {}
    frozen_by_id = {f.id: f for f in analysis.frozen} if analysis is not None else {}
    barriers = {b.node.name: b for b in analysis.barriers} if analysis is not None else {}
    freezers: dict[str, list[str]] = defaultdict(list)
    if analysis is not None:
        for f in analysis.frozen:
            if f.node is not None:
                freezers[f.node].append(f.id)
    hidden = {n.name for n in gm.graph.nodes if n.op == "get_attr" and not show_params}
    nodes: dict[str, VizNode] = {}
    clusters: dict[str, str] = {}
    edges: list[VizEdge] = []
    for node in gm.graph.nodes:
        if node.name in hidden:
            continue
        kind = {"placeholder": "input", "output": "output", "get_attr": "param"}.get(node.op, "op")
        path = module_path(node, gm)
        for p, cls in path:
            clusters.setdefault(p, f"{p} ({cls})" if cls else p)
        vn = VizNode(node.name, describe_op(node, gm), describe_value(node.meta.get("val")), kind=kind,
                     module=tuple(p for p, _ in path))
        if index is not None:
            vn.groups, frozen_ids = index.of_node(node)
            for qual in _params_read(node, gm):
                for g in index.first_producer.get(qual, ()):
                    vn.notes.append(f"group {g.id}: {group_text(g)}")
                for fid in index.frozen_first.get(qual, ()):
                    vn.notes.append(f"frozen {fid}: {frozen_by_id[fid].reason}")
            if frozen_ids:
                vn.marks.add("frozen")
            for fid in freezers.get(node.name, ()):
                vn.marks.add("frozen")
                vn.notes.append(f"freezes {fid}")
            if node.name in barriers:
                b = barriers[node.name]
                vn.marks.add("barrier")
                vn.notes.append(f"no rule: {b.reason}")
                vn.tooltip = b.hint
        nodes[node.name] = vn
    for node in gm.graph.nodes:
        if node.name not in nodes:
            continue
        for src in _unique(node.all_input_nodes):
            if src.name in nodes:
                first = nodes[src.name].groups[0] if nodes[src.name].groups else None
                edges.append(VizEdge(src.name, node.name, first))
    legend = [LegendEntry(g.id, stable_colour(g.id), group_text(g)) for g in groups_by_id.values()]
    graph = VizGraph(title or _default_title(gm, analysis), nodes, edges, clusters, legend,
                     _summary_notes(analysis))
    graph.recolour()
    return graph


def _unique(nodes: Iterable[fx.Node]) -> list[fx.Node]:
    seen: dict[str, fx.Node] = {}
    for n in nodes:
        seen.setdefault(n.name, n)
    return list(seen.values())


def _default_title(gm: fx.GraphModule, analysis: Analysis | None) -> str:
    info = gm.meta.get("fxopt", {}).get("trace") if isinstance(gm.meta, dict) else None
    front = f", captured with {info.frontend}" if info is not None else ""
    count = sum(1 for n in gm.graph.nodes if n.op != "get_attr")
    params = sum(p.numel() for p in gm.parameters())  # meta tensors count too: nothing is allocated
    name = type(gm).__name__ if type(gm).__name__ != "GraphModule" else "graph"
    return f"{name}: {count} nodes, {count_text(params)} parameters{front}"


def _summary_notes(analysis: Analysis | None) -> list[str]:
    if analysis is None:
        return []
    exact = sum(g.exact for g in analysis.groups)
    lines = [f"{len(analysis.groups)} groups ({exact} exact), {len(analysis.frozen)} frozen, "
             f"{len(analysis.barriers)} nodes without a rule"]
    return lines

