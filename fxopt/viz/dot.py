"""DOT text for a VizGraph: nested module clusters, group colours, marks as borders, a legend table.

The output is deterministic (graph order, colours from group ids), so two renders of the same graph are the
same bytes and two versions of a model diff line by line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

from fxopt.viz.colors import ADDED, CHANGED, FROZEN, NEUTRAL, REMOVED
from fxopt.viz.graph import VizGraph, VizNode

FONT = "DejaVu Sans"
MAX_STRIPES = 4
LEGEND_LIMIT = 400
"""Legend rows drawn at most; groups past it are counted in a last row."""

_SHAPES = {"input": "invhouse", "output": "house", "param": "note", "block": "box3d", "op": "box"}
_BORDERS: dict[str, tuple[str, str, float]] = {  # mark -> (colour, style, penwidth), first match wins; see _NAMES
    "barrier": (FROZEN.line, "bold", 3.0),
    "fused": ("#6a1b9a", "bold", 2.5),
    "substituted": ("#1565c0", "bold", 2.5),
    "removed": (REMOVED.line, "dashed", 1.5),
    "added": (ADDED.line, "bold", 2.5),
    "resized": (CHANGED.line, "bold", 2.5),
    "frozen": (FROZEN.line, "dashed", 2.0),
    "collapsed": ("#424242", "solid", 1.5),
}
_NAMES = {"barrier": "thick red", "removed": "grey dashed", "added": "green", "fused": "purple double",
          "substituted": "blue double", "resized": "orange", "frozen": "red dashed", "collapsed": "3-D box"}
_MARK_TEXT = {"removed": "removed", "added": "new", "fused": "fused", "substituted": "substituted"}


def _q(text: str) -> str:
    """A DOT double-quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _label(node: VizNode) -> str:
    rows = [f"<B>{escape(node.name.removeprefix('block:'))}</B>"]
    if node.op:
        rows.append(escape(node.op))
    if node.shape:
        rows.append(f'<FONT POINT-SIZE="10">{escape(node.shape)}</FONT>')
    shown = node.marks & set(_MARK_TEXT)
    if shown & {"fused", "substituted"}:
        shown.discard("removed")  # folded into a neighbour: "removed" would say less than "fused"
    for mark in sorted(shown):
        if not any(n.startswith(_MARK_TEXT[mark]) for n in node.notes):
            rows.append(f'<I>{_MARK_TEXT[mark]}</I>')
    for note in node.notes:
        colour = FROZEN.line if note.startswith(("frozen", "freezes", "no rule")) else "#212121"
        rows.append(f'<FONT POINT-SIZE="10" COLOR="{colour}">{escape(_shorten(note, 90))}</FONT>')
    return "<" + "<BR/>".join(rows) + ">"


def _shorten(text: str, limit: int = 70) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _node_attrs(node: VizNode, graph: VizGraph) -> dict[str, str]:
    attrs = {"label": _label(node), "shape": _SHAPES.get(node.kind, "box")}
    styles: list[str] = []
    fills = [graph.colour_of(g).fill for g in node.groups[:MAX_STRIPES]]
    if "removed" in node.marks:
        fills = [REMOVED.fill]
    if len(fills) > 1:
        styles.append("striped")
        attrs["fillcolor"] = ":".join(fills)
    else:
        styles += ["filled"] + (["rounded"] if attrs["shape"] == "box" else [])
        attrs["fillcolor"] = fills[0] if fills else "#ffffff"
    border = next((_BORDERS[m] for m in _BORDERS if m in node.marks), None)
    if border is not None:
        attrs["color"], style, width = border
        styles.append(style)
        attrs["penwidth"] = f"{width:g}"
    if "removed" in node.marks:
        attrs["fontcolor"] = "#9e9e9e"
    if "fused" in node.marks or "substituted" in node.marks:
        attrs["peripheries"] = "2"
    attrs["style"] = ",".join(dict.fromkeys(styles))
    tip = node.tooltip or " | ".join([node.op, node.shape, *node.notes])
    attrs["tooltip"] = _q(tip)
    return attrs


def _fmt_attrs(attrs: dict[str, str]) -> str:
    parts = []
    for k, v in attrs.items():
        if not (v.startswith("<") or v.startswith('"')):
            v = _q(v)
        parts.append(f"{k}={v}")
    return "[" + " ".join(parts) + "]"


@dataclass
class _Cluster:
    path: str
    nodes: list[str] = field(default_factory=list)
    children: dict[str, _Cluster] = field(default_factory=dict)


def _cluster_tree(graph: VizGraph) -> _Cluster:
    root = _Cluster("")
    for node in graph.nodes.values():
        here = root
        for p in node.module:
            here = here.children.setdefault(p, _Cluster(p))
        here.nodes.append(node.name)
    return root


def _emit_cluster(c: _Cluster, graph: VizGraph, out: list[str], depth: int) -> None:
    pad = "  " * depth
    for name in c.nodes:
        out.append(f"{pad}{_q(name)} {_fmt_attrs(_node_attrs(graph.nodes[name], graph))};")
    for child in c.children.values():
        label = graph.clusters.get(child.path, child.path)
        shade = "#fafafa" if depth % 2 else "#f0f4f8"
        out.append(f"{pad}subgraph {_q('cluster_' + child.path)} {{")
        out.append(f'{pad}  label={_q(label)}; labeljust="l"; style="rounded,filled"; fillcolor="{shade}"; '
                   f'color="#b0bec5"; fontsize=12;')
        _emit_cluster(child, graph, out, depth + 1)
        out.append(f"{pad}}}")


def _legend_rows(graph: VizGraph) -> list[str]:
    """Legend rows laid out in columns (about 12 groups per column, at most 4 columns)."""
    entries = graph.legend[:LEGEND_LIMIT]
    columns = max(1, min(4, -(-len(entries) // 12)))
    per_col = -(-len(entries) // columns)
    rows = []
    for r in range(per_col):
        cells = []
        for c in range(columns):
            i = c * per_col + r
            if i < len(entries):
                e = entries[i]
                cells.append(f'<TD BGCOLOR="{e.colour.fill}" WIDTH="22"> </TD>'
                             f'<TD ALIGN="LEFT">{escape(e.id)}</TD>'
                             f'<TD ALIGN="LEFT"><FONT POINT-SIZE="10">{escape(e.text)}</FONT></TD>')
            else:
                cells.append('<TD COLSPAN="3"> </TD>')
        rows.append("<TR>" + "".join(cells) + "</TR>")
    if len(graph.legend) > LEGEND_LIMIT:
        rows.append(f'<TR><TD COLSPAN="{3 * columns}">… and {len(graph.legend) - LEGEND_LIMIT} more groups</TD></TR>')
    head = f'<TR><TD COLSPAN="{3 * columns}"><B>groups</B></TD></TR>'
    return [head, *rows]


def _graph_label(graph: VizGraph) -> str:
    """Title, summary lines and the legend as one HTML-like table above the graph."""
    rows = [f'<TR><TD><FONT POINT-SIZE="20"><B>{escape(graph.title)}</B></FONT></TD></TR>']
    rows += [f"<TR><TD>{escape(n)}</TD></TR>" for n in graph.notes]
    if graph.legend:
        inner = '<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="3">' + "".join(
            _legend_rows(graph)) + "</TABLE>"
        rows.append(f"<TR><TD>{inner}</TD></TR>")
        rows.append('<TR><TD><FONT POINT-SIZE="10">one colour per group, stable across renderings;<BR/>'
                    '"group ID" is written on the node whose parameters produce its channels</FONT></TD></TR>')
    marks = sorted({m for n in graph.nodes.values() for m in n.marks})
    if marks:
        key = "borders: " + ", ".join(f"{_NAMES[m]} = {m}" for m in marks if m in _NAMES)
        rows.append(f'<TR><TD><FONT POINT-SIZE="11">{escape(key)}</FONT></TD></TR>')
    return '<<TABLE BORDER="0" CELLSPACING="2">' + "".join(rows) + "</TABLE>>"


def to_dot(graph: VizGraph, *, rankdir: str = "TB") -> str:
    """The DOT text of ``graph``.

    Args:
        graph: from ``build_graph`` (optionally collapsed or marked with a before/after diff).
        rankdir: ``"TB"`` (top to bottom) or ``"LR"``.

    Returns:
        DOT source; identical inputs give identical text.
    """
    out = [
        "digraph fxopt {",
        f"  graph [rankdir={rankdir} fontname={_q(FONT)} fontsize=14 labelloc=t label={_graph_label(graph)} "
        'nodesep=0.25 ranksep=0.35 newrank=true];',
        f'  node [fontname={_q(FONT)} fontsize=12 margin="0.12,0.05" color="#546e7a"];',
        f'  edge [color="{NEUTRAL.line}" arrowsize=0.6];',
    ]
    _emit_cluster(_cluster_tree(graph), graph, out, 1)
    for e in graph.edges:
        attrs: dict[str, str] = {}
        if e.removed:
            attrs.update(color=REMOVED.line, style="dashed")
        elif e.group is not None:
            attrs.update(color=graph.colour_of(e.group).line, penwidth="1.6")
        out.append(f"  {_q(e.src)} -> {_q(e.dst)}" + (f" {_fmt_attrs(attrs)}" if attrs else "") + ";")
    out.append("}")
    return "\n".join(out) + "\n"
