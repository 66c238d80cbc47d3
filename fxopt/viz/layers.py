"""Per-layer parameters and FLOPs of a graph module, before and after a pipeline (data for the report's charts).

A *layer* is the module that owns a node's parameters (``layer1.0.conv1``, ``model.layers.0.self_attn.q_proj``),
for ``call_module`` nodes and for exported graphs whose parameters are ``get_attr`` nodes alike. FLOPs are
taken per node from fxopt's cost model (shapes only, nothing is computed for real).
When a model has more layers than a chart can show, layers are merged into their parent modules.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

log = logging.getLogger(__name__)

OTHER = "(no parameters)"
"""Layer name of nodes that read no parameter (activations, adds, reshapes)."""
ROOT = "(root)"
"""Layer name of parameters and constants held by the top-level module itself."""
SMALLER = "(smaller layers)"
"""Row that sums the layers left out when even top-level modules are too many for a chart."""


@dataclass(frozen=True)
class LayerRow:
    """One layer: parameters and FLOPs before and after (``None`` after when there is no after model)."""

    name: str
    params_before: int
    params_after: int | None
    flops_before: float
    flops_after: float | None


def node_flops(gm: fx.GraphModule, inputs: Sequence[Any]) -> dict[str, float]:
    """FLOPs of every call node of ``gm`` at ``inputs``, from fxopt's cost model (``fxopt.analysis.cost``).

    Returns an empty mapping, with the reason logged, when the cost model cannot handle the graph.
    """
    from fxopt.analysis.cost import B, S, graph_cost

    try:
        table = graph_cost(gm, inputs, symbolic=False)
    except Exception:  # FLOPs are a nice-to-have for the chart; a model they fail on still gets its report
        log.warning("could not compute FLOPs of %s", type(gm).__name__, exc_info=True)
        return {}
    subs = {sym: int(table.bindings[sym.name]) for sym in (B, S) if sym.name in table.bindings}
    return {r.node: float(r.flops.xreplace(subs)) for r in table.rows}


def layer_of(node: fx.Node, gm: fx.GraphModule) -> str:
    """The layer a node belongs to: its module (call_module) or the owner of the parameters it reads."""
    if node.op == "call_module":
        has_params = any(True for _ in gm.get_submodule(str(node.target)).parameters())
        return str(node.target) if has_params else OTHER
    owners = [str(a.target).rpartition(".")[0] or ROOT for a in node.all_input_nodes if a.op == "get_attr"]
    if owners:
        return min(owners, key=len)
    return OTHER


def layer_params(gm: torch.nn.Module) -> dict[str, int]:
    """Parameter elements per owning module path (tied parameters counted once)."""
    out: dict[str, int] = defaultdict(int)
    for name, p in gm.named_parameters():
        out[name.rpartition(".")[0] or ROOT] += p.numel()
    return dict(out)


def layer_flops(gm: fx.GraphModule, inputs: Sequence[Any]) -> dict[str, float]:
    """FLOPs per layer (``layer_of``) at ``inputs``."""
    per_node = node_flops(gm, inputs)
    out: dict[str, float] = defaultdict(float)
    for node in gm.graph.nodes:
        if node.name in per_node:
            out[layer_of(node, gm)] += per_node[node.name]
    return dict(out)


def _merge(names: Sequence[str], limit: int) -> dict[str, str]:
    """Map each layer name to a prefix so that at most ``limit`` distinct names remain."""
    depth = max((n.count(".") + 1 for n in names), default=1)
    mapping = {n: n for n in names}
    while len(set(mapping.values())) > limit and depth > 1:
        depth -= 1
        mapping = {n: n if n == OTHER else ".".join(n.split(".")[:depth]) for n in names}
    return mapping


def layer_table(before: fx.GraphModule, inputs: Sequence[Any], after: fx.GraphModule | None = None,
                limit: int = 40) -> list[LayerRow]:
    """Per-layer parameters and FLOPs of ``before`` (and ``after``), in graph order, at most ``limit`` rows.

    Args:
        before: the original graph module.
        inputs: example inputs (their shapes decide FLOPs).
        after: the optimized graph module, if any; layers it lost count as 0 after.
        limit: rows at most: past it, layers merge into their parent modules (``layer4.1.conv2`` ->
            ``layer4.1``), and when top-level modules are still too many, the smallest are summed in one row.
    """
    params = [layer_params(before), layer_params(after) if after is not None else {}]
    flops = [layer_flops(before, inputs), layer_flops(after, inputs) if isinstance(after, fx.GraphModule) else {}]
    order: list[str] = []
    for node in before.graph.nodes:
        name = layer_of(node, before)
        if name not in order and (name in params[0] or name in flops[0]):
            order.append(name)
    order += [n for n in params[0] if n not in order]
    if after is not None:
        order += [n for n in [*params[1], *flops[1]] if n not in order]
    order = [n for n in order if n != OTHER] + [OTHER]  # activations, adds, reshapes: one row, last
    mapping = _merge(order, limit)
    rows: dict[str, list[float]] = {}
    for name in order:
        key = mapping[name]
        acc = rows.setdefault(key, [0, 0, 0.0, 0.0])
        acc[0] += params[0].get(name, 0)
        acc[1] += params[1].get(name, 0)
        acc[2] += flops[0].get(name, 0.0)
        acc[3] += flops[1].get(name, 0.0)
    rows = {k: v for k, v in rows.items() if any(v)}
    if len(rows) > limit:  # flat models: keep the biggest layers in graph order, sum the rest
        ranked = sorted(rows, key=lambda k: (rows[k][2], rows[k][0]), reverse=True)
        rest = [0, 0, 0.0, 0.0]
        for k in ranked[limit - 1:]:
            rest = [a + b for a, b in zip(rest, rows.pop(k), strict=True)]
        rows[SMALLER] = rest
    has_after = after is not None
    return [LayerRow(k, int(v[0]), int(v[1]) if has_after else None, v[2], v[3] if has_after else None)
            for k, v in rows.items()]
