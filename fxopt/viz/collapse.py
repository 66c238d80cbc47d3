"""Collapse repeated blocks: numbered siblings (``layers.3``, ``layer1.2``) of the same class computing the same
thing become one box each.

A 32-layer transformer draws as its first layer in full plus 31 boxes; the boxes keep the colours of the groups
inside them and name the groups whose parameters they hold, so no group disappears from the picture.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

from fxopt.viz.graph import VizEdge, VizGraph, VizNode

log = logging.getLogger(__name__)

MAX_GROUP_NOTES = 8
"""Group notes listed on a collapsed box; the rest are counted."""


@dataclass(frozen=True)
class _Block:
    path: str
    parent: tuple[str, ...]
    members: tuple[str, ...]


def _blocks(graph: VizGraph) -> dict[str, _Block]:
    """Every module path with the nodes inside it, in graph order."""
    members: dict[str, list[str]] = defaultdict(list)
    parents: dict[str, tuple[str, ...]] = {}
    for node in graph.nodes.values():
        for depth, path in enumerate(node.module):
            members[path].append(node.name)
            parents.setdefault(path, node.module[:depth])
    return {p: _Block(p, parents[p], tuple(ms)) for p, ms in members.items()}


def _signature(graph: VizGraph, block: _Block) -> tuple[object, ...]:
    """What a block computes, independent of its name: ops, shapes and its internal wiring."""
    pos = {n: i for i, n in enumerate(block.members)}
    ops = tuple((graph.nodes[n].op, graph.nodes[n].shape, graph.nodes[n].kind,
                 tuple(m[len(block.path):] for m in graph.nodes[n].module
                       if m == block.path or m.startswith(block.path + ".")))
                for n in block.members)
    wires = tuple(sorted((pos[e.src], pos[e.dst]) for e in graph.edges if e.src in pos and e.dst in pos))
    cls = graph.clusters.get(block.path, "").rpartition(" (")[2]
    return cls, ops, wires


def repeated_blocks(graph: VizGraph) -> dict[str, str]:
    """``{block path: path of the earlier identical sibling}`` for every block that repeats an earlier one.

    Outer blocks are considered first; the blocks inside a repeated block are not listed separately.
    """
    blocks = _blocks(graph)
    by_parent: dict[tuple[str, ...], list[_Block]] = defaultdict(list)
    for b in blocks.values():
        by_parent[b.parent].append(b)
    repeats: dict[str, str] = {}
    for parent in sorted(by_parent, key=len):
        if any(p in repeats for p in parent):
            continue
        first_of: dict[tuple[object, ...], str] = {}
        for b in by_parent[parent]:
            stem, _, index = b.path.rpartition(".")
            if len(b.members) < 2 or not index.isdigit():
                continue  # only entries of a Sequential/ModuleList repeat (layers.3), not named siblings
            sig = (stem, _signature(graph, b))
            if sig in first_of:
                repeats[b.path] = first_of[sig]
            else:
                first_of[sig] = b.path
    return repeats


def collapse(graph: VizGraph, blocks: dict[str, str] | None = None) -> VizGraph:
    """A copy of ``graph`` with each repeated block drawn as a single box.

    Args:
        graph: the full graph.
        blocks: ``{path: same-as path}`` to collapse; defaults to ``repeated_blocks(graph)``.

    Returns:
        A new VizGraph; the input is not modified.
    """
    blocks = repeated_blocks(graph) if blocks is None else blocks
    if not blocks:
        return graph
    owner: dict[str, str] = {}
    for node in graph.nodes.values():
        hit = next((p for p in node.module if p in blocks), None)
        if hit is not None:
            owner[node.name] = "block:" + hit
    nodes: dict[str, VizNode] = {}
    for node in graph.nodes.values():
        key = owner.get(node.name)
        if key is None:
            nodes[node.name] = node
            continue
        box = nodes.get(key)
        if box is None:
            path = key.removeprefix("block:")
            depth = node.module.index(path)
            cls = graph.clusters.get(path, "").removeprefix(path).strip(" ()") or "block"
            box = nodes[key] = VizNode(key, f"{cls} like {blocks[path]}", kind="block",
                                       module=node.module[:depth], marks={"collapsed"})
            box.tooltip = f"{path}: collapsed; it computes what {blocks[path]} computes"
        box.groups = tuple(dict.fromkeys([*box.groups, *node.groups]))
        box.marks |= node.marks - {"collapsed"}
        box.shape = node.shape  # the block's last node: what it hands on
        box.notes += [n for n in node.notes if not n.startswith("group ")]
        box.notes += [n for n in node.notes if n.startswith("group ")]
    for box in nodes.values():
        if box.kind == "block":
            groups = [n for n in box.notes if n.startswith("group ")]
            other = [n for n in box.notes if not n.startswith("group ")]
            inner = sum(1 for o in owner.values() if o == box.name)
            box.op += f", {inner} nodes"
            if len(groups) > MAX_GROUP_NOTES:
                groups = groups[:MAX_GROUP_NOTES] + [f"… and {len(groups) - MAX_GROUP_NOTES} more groups"]
            box.notes = other[:3] + groups
    edges: list[VizEdge] = []
    seen: set[tuple[str, str]] = set()
    for e in graph.edges:
        src, dst = owner.get(e.src, e.src), owner.get(e.dst, e.dst)
        if src == dst or (src, dst) in seen:
            continue
        seen.add((src, dst))
        edges.append(VizEdge(src, dst, e.group, e.removed))
    clusters = {p: label for p, label in graph.clusters.items()
                if not any(p == b or p.startswith(b + ".") for b in blocks)}
    log.debug("collapsed %d repeated blocks", len(blocks))
    out = VizGraph(graph.title, nodes, edges, clusters, list(graph.legend), list(graph.notes), dict(graph.palette))
    out.notes.append(f"{len(blocks)} repeated blocks collapsed (draw with collapse=False to expand them)")
    return out
