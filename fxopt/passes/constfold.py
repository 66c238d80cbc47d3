"""Constant folding of subgraphs that read only parameters, buffers and constants.

A node is constant when it is deterministic, writes into nothing, produces a tensor and reads only constant
nodes (``get_attr`` nodes, or other constant nodes). The frontier (constant nodes read by non-constant ones) is
computed once and stored as a buffer; the subgraph behind it becomes dead code. A frontier is folded only when
the subgraph behind it does real work (not just views of one tensor), when none of its aliases is written in
place, and when it is not larger than ``max_elements``.

Folding a parameter into a buffer removes it from training: with ``fold_parameters=False`` only subgraphs of
buffers and constants are folded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from fxopt.ops.forms import methods
from fxopt.passes.editor import GraphEditor
from fxopt.passes.identities import is_mutating
from fxopt.passes.match import view_of

log = logging.getLogger(__name__)

RANDOM_OPS = frozenset({
    torch.rand, torch.randn, torch.randint, torch.randperm, torch.bernoulli, torch.normal, torch.multinomial,
    torch.rand_like, torch.randn_like, torch.randint_like, torch.poisson, torch.dropout, torch.alpha_dropout,
    torch.feature_dropout, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.gumbel_softmax,
    F.rrelu, *methods("bernoulli", "uniform_", "normal_", "random_", "exponential_", "geometric_", "cauchy_",
                      "log_normal_", "multinomial"),
})
VIEW_KINDS = frozenset({"reshape", "permute", "expand", "slice", "select", "getitem", "size_read"})


def _is_random(node: fx.Node) -> bool:
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return torch.Tag.nondeterministic_seeded in target.tags
    if node.op == "call_method":
        return getattr(torch.Tensor, str(target), None) in RANDOM_OPS
    return target in RANDOM_OPS


def _requires_grad(gm: fx.GraphModule, node: fx.Node) -> bool:
    try:
        value = gm.get_parameter(str(node.target))
    except AttributeError:
        return False
    return bool(value.requires_grad)


def constant_nodes(gm: fx.GraphModule, fold_parameters: bool) -> set[fx.Node]:
    """Every node whose value does not depend on the inputs (get_attr nodes included)."""
    const: set[fx.Node] = set()
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            if fold_parameters or not _requires_grad(gm, n):
                const.add(n)
            continue
        if n.op not in ("call_function", "call_method"):
            continue
        if not isinstance(n.meta.get("val"), torch.Tensor) or n.is_impure() or is_mutating(n) or _is_random(n):
            continue
        if all(i in const for i in n.all_input_nodes):
            const.add(n)
    return const


def _ancestors(node: fx.Node, const: set[fx.Node]) -> list[fx.Node]:
    seen, stack = {node}, [node]
    while stack:
        for i in stack.pop().all_input_nodes:
            if i in const and i not in seen:
                seen.add(i)
                stack.append(i)
    return list(seen)


def _aliases_mutated(node: fx.Node, gm: fx.GraphModule, depth: int = 4) -> bool:
    frontier = [node]
    for _ in range(depth):
        nxt = []
        for n in frontier:
            for u in n.users:
                if is_mutating(u):
                    return True
                view = view_of(u, gm)
                if view is not None and view.kind in VIEW_KINDS | {"unary_zero"}:
                    nxt.append(u)
        frontier = nxt
    return False


def _evaluate(gm: fx.GraphModule, nodes: Iterable[fx.Node]) -> dict[fx.Node, Any]:
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    interp = fx.Interpreter(gm)
    env: dict[fx.Node, Any] = {}
    with torch.no_grad():
        for n in sorted(nodes, key=order.__getitem__):
            args = fx.node.map_arg(n.args, env.__getitem__)
            kwargs = fx.node.map_arg(n.kwargs, env.__getitem__)
            env[n] = getattr(interp, n.op)(n.target, args, kwargs)
    return env


def fold_constants(gm: fx.GraphModule, editor: GraphEditor, fold_parameters: bool = True,
                   max_elements: int = 1 << 24) -> int:
    """Replace constant subgraphs by stored buffers; return how many were folded (the rest are dead code)."""
    const = constant_nodes(gm, fold_parameters)
    chosen: list[tuple[fx.Node, list[fx.Node]]] = []
    for n in gm.graph.nodes:
        if n not in const or n.op == "get_attr" or all(u in const for u in n.users):
            continue
        behind = _ancestors(n, const)
        kinds = {getattr(view_of(a, gm), "kind", None) for a in behind if a.op != "get_attr"}
        if kinds <= VIEW_KINDS:
            continue  # views of a stored tensor cost nothing at run time
        val = n.meta["val"]
        if val.numel() > max_elements:
            editor.skip("constant_fold", n, f"{val.numel()} elements exceed max_elements={max_elements}")
            continue
        if _aliases_mutated(n, gm):
            editor.skip("constant_fold", n, "the value is written in place later")
            continue
        chosen.append((n, behind))
    if not chosen:
        return 0
    values = _evaluate(gm, {a for _, behind in chosen for a in behind})
    for n, behind in chosen:
        value = values[n]
        name = editor.add_tensor(f"folded_{n.name}", value.detach().clone(), parameter=False)
        attr = editor.get_attr(name, before=n)
        attr.meta["val"] = n.meta.get("val")
        editor.replace_uses(n, attr, f"constant folded from {len(behind)} nodes")
        params = sorted(str(a.target) for a in behind if a.op == "get_attr" and _requires_grad(gm, a))
        if params:
            editor.note(f"{name} folds trainable parameters {', '.join(params)}: they no longer train")
    return len(chosen)
