"""Before/after view of a pipeline: one picture of the optimized graph with what changed marked on it.

Nodes are matched by name (fxopt's passes keep node names): a node only in the original is drawn *removed*
(grey, dashed) where it was, a node only in the result is *new*, a node whose output shape changed shows
``before → after``, and the edits the passes reported mark nodes *fused* or *substituted* with their note.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch.fx as fx

from fxopt.analysis.analysis import Analysis
from fxopt.viz.graph import VizEdge, VizGraph, build_graph
from fxopt.viz.labels import count_text


@dataclass(frozen=True)
class NodeChange:
    """What a pass did to one node: ``mark`` is one of ``"fused"``, ``"substituted"``, ``"removed"``,
    ``"added"``, ``"resized"``; ``note`` is shown on the node (``"folded into conv1"``)."""

    mark: str
    note: str = ""


FUSING = ("fuse", "fold", "merge")
"""Pass names (prefixes) whose erased nodes were folded into a neighbour rather than dropped."""
SUBSTITUTING = ("substitute",)


def changes_from_results(results: Iterable[Any], modules: Iterable[fx.GraphModule] = ()) -> dict[str, NodeChange]:
    """What the passes reported doing to each node, from their PassResults' edits.

    An ``erase`` by a fusing pass (``fuse``, ``fold_bn``, ``merge_linear``...) marks the node *fused*, with the
    detail of that pass's ``replace`` edit of the node as its note (``"bn1 folded into conv1"``); an ``erase`` by
    another pass marks it *removed*. A ``set_module`` or ``replace`` by a substitution pass marks the node
    *substituted* (module paths are matched to the ``call_module`` nodes of ``modules``).

    Args:
        results: PassResults (``pass_name``, ``edits`` of ``action``/``target``/``detail``).
        modules: graph modules whose ``call_module`` nodes name module paths.
    """
    by_path = {str(n.target): n.name for gm in modules for n in gm.graph.nodes if n.op == "call_module"}
    found: dict[str, NodeChange] = {}
    for result in results:
        name = str(getattr(result, "pass_name", "")).split("(")[0]
        edits = list(getattr(result, "edits", ()) or ())
        notes = {e.target: e.detail for e in edits if e.action == "replace" and e.detail}
        for e in edits:
            node = by_path.get(e.target, e.target)
            if e.action == "erase":
                mark = "fused" if name.startswith(FUSING) else "removed"
                found[node] = NodeChange(mark, notes.get(e.target) or f"{'fused' if mark == 'fused' else 'erased'} "
                                               f"by {name}")
            elif name.startswith(SUBSTITUTING) and e.action in ("set_module", "replace"):
                found[node] = NodeChange("substituted", f"{name}: {e.detail}" if e.detail else name)
    return found


def _params(gm: fx.GraphModule) -> int | None:
    try:
        return sum(p.numel() for p in gm.parameters())
    except RuntimeError:  # parameters on the meta device still count; anything odd just omits the figure
        return None


def build_diff(before: fx.GraphModule, after: fx.GraphModule, analysis: Analysis | None = None,
               changes: Mapping[str, NodeChange] | None = None, *, show_params: bool = False,
               title: str | None = None) -> VizGraph:
    """The after graph with removed, new, resized, fused and substituted nodes marked.

    Args:
        before: the graph module the pipeline started from.
        after: the graph module it produced.
        analysis: groups of ``before``; they colour both versions (node names are kept by fxopt's passes).
        changes: per node name, what a pass reported doing to it.
        show_params: draw ``get_attr`` nodes.
        title: the picture's title.

    Returns:
        A VizGraph ready for ``to_dot``.
    """
    old = build_graph(before, analysis, show_params=show_params)
    new = build_graph(after, analysis, show_params=show_params)
    changes = dict(changes or {})
    nodes = dict(new.nodes)
    for name, node in nodes.items():
        prev = old.nodes.get(name)
        if prev is None:
            node.marks.add("added")
        elif prev.shape != node.shape and prev.shape and node.shape:
            node.marks.add("resized")
            node.shape = f"{prev.shape} → {node.shape}"
    edges = list(new.edges)
    for name, node in old.nodes.items():
        if name not in nodes:
            node.marks.add("removed")
            nodes[name] = node
    known = {(e.src, e.dst) for e in edges}
    for e in old.edges:
        if (e.src, e.dst) not in known and ("removed" in nodes[e.src].marks or "removed" in nodes[e.dst].marks):
            edges.append(VizEdge(e.src, e.dst, e.group, removed=True))
    for name, change in changes.items():
        target = nodes.get(name)
        if target is None:
            continue
        target.marks.add(change.mark)
        if change.note:
            target.notes.insert(0, change.note)
    clusters = {**old.clusters, **new.clusters}
    p0, p1 = _params(before), _params(after)
    counts = {m: sum(m in n.marks and not (m == "removed" and n.marks & {"fused", "substituted"})
                     for n in nodes.values()) for m in ("removed", "added", "resized", "fused", "substituted")}
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no node changed"
    notes = list(old.notes) + [summary]
    if p0 is not None and p1 is not None and p0:
        notes.append(f"parameters {count_text(p0)} → {count_text(p1)} ({p1 / p0:.0%})")
    graph = VizGraph(title or f"before → after: {old.title}", nodes, edges, clusters, list(old.legend), notes)
    graph.recolour()
    return graph
