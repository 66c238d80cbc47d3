"""``fxopt.visualize``: draw a model's graph, its channel groups, frozen dims and what a pipeline changed."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.fx as fx

from fxopt.analysis.analysis import Analysis, analyze
from fxopt.viz.collapse import collapse as collapse_blocks
from fxopt.viz.diff import NodeChange, build_diff, changes_from_results
from fxopt.viz.dot import to_dot
from fxopt.viz.graph import VizGraph, build_graph
from fxopt.viz.render import render_dot

log = logging.getLogger(__name__)

MAX_NODES = 250
"""With ``collapse="auto"``, graphs with more nodes than this get their repeated blocks collapsed."""


@dataclass(frozen=True)
class Picture:
    """What ``visualize`` produced.

    Attributes:
        dot: the DOT source (always available, deterministic).
        graph: the VizGraph behind it (nodes, colours, legend), for tests and custom renderers.
        path: the file written (``None`` when no path was given). Without Graphviz this is the .dot file.
        rendered: whether ``path`` holds a picture in the requested format.
        message: why it does not, with how to install Graphviz.
    """

    dot: str = field(repr=False)
    graph: VizGraph = field(repr=False)
    path: Path | None = None
    rendered: bool = False
    message: str | None = None


def optimized_parts(obj: Any) -> tuple[fx.GraphModule, Any, tuple[Any, ...]] | None:
    """``(graph module, Report, example inputs)`` of a module returned by ``fxopt.optimize``, else ``None``."""
    gm = getattr(obj, "_orig_mod", obj)  # torch.compile wraps the graph module
    meta = getattr(gm, "meta", None)
    info = meta.get("fxopt") if isinstance(meta, dict) else None
    if not isinstance(gm, fx.GraphModule) or not isinstance(info, dict) or "report" not in info:
        return None
    return gm, info["report"], tuple(info.get("example_inputs", ()))


def _source(obj: Any, example_inputs: Any, analysis: Analysis | None) -> tuple[fx.GraphModule, Analysis | None]:
    if isinstance(obj, Analysis):
        return obj.gm, obj
    optimized = optimized_parts(obj)
    if optimized is not None:
        gm, _, inputs = optimized
        if analysis is None and inputs:
            try:  # the groups left in the optimized graph; a graph the analysis cannot read is drawn plain
                analysis = analyze(gm, inputs)
            except Exception:
                log.debug("could not analyse the optimized graph", exc_info=True)
        return gm, analysis
    if isinstance(obj, fx.GraphModule) and example_inputs is None:
        return obj, analysis
    if isinstance(obj, torch.nn.Module):
        if example_inputs is None:
            raise TypeError(f"visualize({type(obj).__name__}) needs example_inputs to trace it, "
                            "or pass the result of fxopt.analyze(model, example_inputs)")
        found = analyze(obj, example_inputs)
        return found.gm, found
    raise TypeError(f"visualize() takes an Analysis, a GraphModule or an nn.Module with example_inputs, "
                    f"not {type(obj).__name__}")


def visualize(obj: Any, path: str | Path | None = None, *, example_inputs: Any = None,
              analysis: Analysis | None = None, before: fx.GraphModule | None = None,
              changes: Mapping[str, NodeChange] | None = None, report: Any = None,
              collapse: bool | Literal["auto"] = "auto", max_nodes: int = MAX_NODES, show_params: bool = False,
              title: str | None = None, fmt: str | None = None, rankdir: str = "TB") -> Picture:
    """Draw a model's FX graph with its channel groups coloured, as SVG, PNG, PDF or DOT.

    Nodes show their name, what they compute and their output shape, inside clusters that follow the module
    hierarchy. Each group gets a stable colour (from a hash of its id) on every node that carries its channels,
    the node holding its first producer parameter names it, frozen dims have red dashed borders with their
    reason, and nodes without a channel rule thick red ones. With ``before``, the picture is a before/after
    view: removed nodes grey and dashed, new ones green, resized ones orange with ``old → new`` shapes, fused
    and substituted ones double-bordered.

    Args:
        obj: an ``Analysis`` (from ``fxopt.analyze``), a module returned by ``fxopt.optimize`` (its remaining
            groups are drawn; with ``before`` its pipeline's changes), a ``GraphModule``, or an ``nn.Module``
            with ``example_inputs``.
        path: the output file; the suffix picks the format (``.svg``, ``.png``, ``.pdf``, ``.dot``). ``None``
            returns the DOT text only. Without Graphviz's ``dot`` program the DOT text is written next to
            ``path`` (suffix ``.dot``) and ``Picture.message`` says how to install Graphviz.
        example_inputs: inputs to trace ``obj`` when it is a plain module.
        analysis: the groups to colour a GraphModule by (node names must match).
        before: the original graph module (``fxopt.trace(model, inputs)`` or ``fxopt.analyze(...).gm``), for a
            before/after view of ``obj`` (the optimized one); pass that analysis as ``analysis`` to colour groups.
        changes: per node name, what a pass did (``NodeChange("fused", "folded into conv1")``).
        report: a Report (``fxopt.report(fast)``) whose pass edits give ``changes``.
        collapse: draw repeated blocks (same class, same computation) as one box each; ``"auto"`` does so
            above ``max_nodes`` nodes.
        max_nodes: the ``"auto"`` threshold.
        show_params: draw parameter (``get_attr``) nodes instead of naming them on their consumers.
        title: the picture's title.
        fmt: the format, overriding the suffix.
        rankdir: ``"TB"`` (top to bottom) or ``"LR"``.

    Returns:
        A Picture: the DOT text, the VizGraph, the file written and whether it was rendered.

    Raises:
        TypeError: for an object it cannot draw, or a plain module without example inputs.
        fxopt.TraceError: when a plain module cannot be captured.

    Example:
        >>> analysis = fxopt.analyze(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
        >>> fxopt.visualize(analysis, "resnet18.svg").rendered
        True
    """
    gm, found = _source(obj, example_inputs, analysis)
    optimized = optimized_parts(obj)
    if report is None and optimized is not None:
        report = optimized[1]
    if before is not None:
        reported = changes_from_results(getattr(report, "results", ()), [before, gm]) if report is not None else {}
        all_changes = {**reported, **dict(changes or {})}
        graph = build_diff(before, gm, found, all_changes, show_params=show_params, title=title)
    else:
        graph = build_graph(gm, found, show_params=show_params, title=title)
    if collapse is True or (collapse == "auto" and len(graph.nodes) > max_nodes):
        graph = collapse_blocks(graph)
    text = to_dot(graph, rankdir=rankdir)
    if path is None:
        return Picture(text, graph)
    result = render_dot(text, path, fmt)
    if result.rendered:
        log.info("wrote %s", result.path)
    return Picture(text, graph, result.path, result.rendered, result.message)
