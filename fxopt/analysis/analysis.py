"""``fxopt.analyze``: trace a model, apply the op rules, and build its zero-invariant groups."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import networkx as nx
import numpy as np
import torch
import torch.fx as fx

from fxopt.analysis.groups import AxisIndex, FrozenGroup, Group, Member, ZeroPropagation, build_units
from fxopt.analysis.parts import ElementLink, resolve_parts
from fxopt.errors import AnalysisError
from fxopt.ops.facts import Barrier, Facts
from fxopt.ops.registry import REGISTRY, OpRegistry
from fxopt.ops.view import PARAM_PREFIX, Axis, output_refs
from fxopt.trace import Frontend, trace
from fxopt.tracers import apply_autograd_function

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Analysis:
    """The result of ``fxopt.analyze``: groups, frozen dims and the facts behind them.

    Attributes:
        gm: the traced graph module the groups refer to.
        example_inputs: the inputs used to trace (kept to re-check shapes after pruning).
        groups: prunable groups, exact or approximate.
        frozen: units that may not be pruned, with the node responsible and the reason.
        barriers: nodes without a channel rule (each froze every dim it touches).
        facts: the raw facts (dimension table, zero rules, sinks) for advanced use.
    """

    gm: fx.GraphModule
    example_inputs: tuple[Any, ...]
    groups: list[Group]
    frozen: list[FrozenGroup]
    barriers: list[Barrier]
    facts: Facts
    links: list[ElementLink]
    axes: AxisIndex
    registry: OpRegistry = field(default=REGISTRY)

    def group(self, group_id: str) -> Group:
        """The group with ``group_id``.

        Raises:
            AnalysisError: for an id that is not a prunable group; the message says whether it is frozen (and
                why) and lists a few valid ids.
        """
        for g in self.groups:
            if g.id == group_id:
                return g
        frozen = next((f for f in self.frozen if f.id == group_id), None)
        if frozen is not None:
            raise AnalysisError(f"group {group_id} is frozen at {frozen.node}: {frozen.reason}; it cannot be "
                                "pruned (analysis.frozen lists the frozen groups and why)")
        raise AnalysisError(f"no group {group_id!r}; groups include {[g.id for g in self.groups[:5]]} "
                            f"(list them all with analysis.groups, or print analysis.summary())")

    def dims_of(self, axis: Axis | tuple[str, int]) -> tuple[int, ...]:
        """The atomic dims (channel classes) a tensor axis is made of, row-major; empty for unknown or size-1 axes.

        ``axis`` is an Axis or ``(key, dim)``, the key a node name or ``"param:" + qualname``.
        """
        return self.axes.of(axis)

    def size_of(self, dim: int) -> int:
        """The number of elements of atomic dim ``dim``."""
        return int(self.facts.table.size[dim])

    def axis(self, key: str, dim: int) -> Axis | None:
        """Axis ``dim`` of tensor ``key`` with the size the rules saw, or ``None`` when no rule mentioned it."""
        size = self.facts.sizes.get((key, dim))
        return None if size is None else Axis(key, dim, size)

    def groups_of(self, axis: Axis | tuple[str, int]) -> tuple[Group, ...]:
        """The groups whose units live on a tensor axis, in ``groups`` order (a layer-first handle).

        Example:
            >>> analysis.groups_of(("param:fc1.weight", 0))  # the groups fc1's output channels belong to
        """
        dims = set(self.dims_of(axis))
        return tuple(g for g in self.groups if not dims.isdisjoint(g.classes))

    def unit_indices(self, group: Group, key: str, dim: int) -> np.ndarray | None:
        """Indices along axis ``dim`` of tensor ``key`` owned by each unit of ``group``: a ``(size, k)`` array.

        Works for activations (``key`` is the node name) and parameters (``"param:" + qualname``). Returns ``None``
        when the axis does not carry the group's channels. Same layout as ``unit_slices`` (row-major over the
        axis' atomic dims), computed with broadcasting instead of a loop over units.
        """
        dims = self.dims_of((key, dim))
        if not dims or not any(d in group.index for d in dims):
            return None
        idx = np.zeros((group.size, 1), dtype=np.int64)
        for d in dims:
            size = self.size_of(d)
            sel = group.index[d] if d in group.index else np.broadcast_to(np.arange(size), (group.size, size))
            idx = (idx[:, :, None] * size + sel[:, None, :]).reshape(group.size, -1)
        return idx

    def unit_slices(self, group: Group) -> dict[Member, np.ndarray]:
        """For each member of ``group``, a ``(group.size, k)`` array: the indices along ``member.dim`` of each unit.

        Example:
            >>> w = model.get_parameter(m.qualname)
            >>> norms = w.index_select(m.dim, idx.ravel()).reshape(...)  # idx = analysis.unit_slices(g)[m]
        """
        out: dict[Member, np.ndarray] = {}
        table = self.facts.table
        for m in group.members:
            atoms = self.axes.of((PARAM_PREFIX + m.qualname, m.dim))
            sizes = [table.size[a] for a in atoms]
            grid = np.arange(int(np.prod(sizes)) if sizes else 1).reshape(sizes or [1])
            rows = []
            for u in range(group.size):
                sel = tuple(group.index[a][u] if a in group.index else slice(None) for a in atoms)
                rows.append(grid[np.ix_(*[np.atleast_1d(np.arange(s)[k]) for s, k in zip(sizes, sel)])].ravel())
            out[m] = np.stack(rows) if rows else np.zeros((0, 0), dtype=np.int64)
        return out

    @cached_property
    def channel_graph(self) -> nx.Graph:
        """Bipartite networkx graph: atomic channel classes linked to the tensor axes they make up."""
        g = nx.Graph()
        for (key, dim), atoms in self.axes.atoms.items():
            g.add_node(("axis", key, dim), kind="axis")
            for a in atoms:
                g.add_node(("class", a), kind="class", size=self.facts.table.size[a],
                           frozen=self.facts.table.frozen_reason(a))
                g.add_edge(("axis", key, dim), ("class", a))
        for link in self.links:
            g.add_edge(("class", link.big), ("class", link.small), start=link.start, length=link.length)
        return g

    def summary(self) -> str:
        """A few lines: group counts, exactness, prunable parameters, barriers."""
        exact = sum(g.exact for g in self.groups)
        units = sum(g.size for g in self.groups)
        lines = [
            f"{len(self.groups)} groups ({exact} exact, {len(self.groups) - exact} approximate), {units} units",
            f"{len(self.frozen)} frozen groups, {len(self.barriers)} nodes without a rule",
        ]
        by_gran: dict[str, int] = defaultdict(int)
        for g in self.groups:
            by_gran[g.granularity] += 1
        if by_gran:
            lines.append("granularity: " + ", ".join(f"{k} {v}" for k, v in sorted(by_gran.items())))
        for b in self.barriers[:10]:
            lines.append(f"  barrier {b.node.name} ({b.op}): {b.reason}. {b.hint}")
        return "\n".join(lines)


def collect_facts(gm: fx.GraphModule, registry: OpRegistry = REGISTRY) -> Facts:
    """Run every node's channel rule; unknown ops and failing rules become barriers."""
    facts = Facts()
    for node in gm.graph.nodes:
        facts.node = node
        if node.op == "placeholder":
            for t in output_refs(node):
                for a in t.axes():
                    facts.freeze(a, f"dim of graph input {node.name}")
        elif node.op == "output":
            for src in node.all_input_nodes:
                for t in output_refs(src):
                    for a in t.axes():
                        facts.freeze(a, f"dim of graph output {src.name}")
        elif node.op in ("call_module", "call_function", "call_method"):
            view = registry.view(node, gm)
            rule = registry.rules.get(view.kind, None)
            if rule is None and not view.tensors():
                continue  # arithmetic on sizes, asserts: nothing to couple
            if rule is None:
                facts.barrier(view, f"no channel rule for {_describe(node)}",
                              "register one with fxopt.ops.REGISTRY.register_ops/rule")
                continue
            try:
                rule(view, facts)
            except Exception as exc:  # a rule that cannot read this node's arguments must not stop the analysis
                log.debug("rule %s failed on %s", view.kind, node.name, exc_info=True)
                facts.barrier(view, f"rule '{view.kind}' could not handle {node.name}: {exc}",
                              "report this node's arguments; the rule needs extending")
    facts.node = None
    _tie_shared_tensors(gm, facts)
    return facts


def _tie_shared_tensors(gm: fx.GraphModule, facts: Facts) -> None:
    """One tensor reachable under several names (tied embeddings) has the same channels under each name."""
    names: dict[int, list[str]] = defaultdict(list)
    for name, t in [*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)]:
        names[id(t)].append(name)
    for group in names.values():
        keys = [PARAM_PREFIX + n for n in group]
        for d in range(8):
            present = [k for k in keys if (k, d) in facts.vars]
            if not present or len(keys) < 2:
                continue
            first = Axis(present[0], d, facts.sizes[(present[0], d)])
            for k in keys:  # a name no rule read (export's unused get_attr of the other name) is tied as well
                if k != first.key:
                    facts.same(first, Axis(k, d, first.size))


TAG_PRECEDENCE = ("head_dim", "repeat", "head")
"""When rules tag one class differently, the first of these wins: a head_dim broadcast by ``expand_as`` (F.normalize
in Swin V2) is head_dim, not a repeat; GQA's repeat factor is also part of the query heads, and stays a repeat."""


def _tag_rank(tag: str) -> int:
    return TAG_PRECEDENCE.index(tag) if tag in TAG_PRECEDENCE else len(TAG_PRECEDENCE)  # user tags: first given


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.target}"
    if node.target is apply_autograd_function:
        return f"custom autograd.Function {node.args[0]}"
    target = node.target
    return f"{node.op} {getattr(target, '__name__', target)}"


def analyze_graph(gm: fx.GraphModule, example_inputs: Sequence[Any] = (), registry: OpRegistry = REGISTRY) -> Analysis:
    """Analyse an already traced GraphModule (``node.meta["val"]`` must hold fake tensors)."""
    facts = collect_facts(gm, registry)
    links = resolve_parts(facts)
    axes = AxisIndex(facts)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    zeros = ZeroPropagation(facts, axes, order)
    table = facts.table
    param_axes_by_class: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for c, keys in axes.by_class.items():
        param_axes_by_class[c] = [k for k in keys if k[0].startswith(PARAM_PREFIX)]
    tag_by_class: dict[int, str] = {}
    for axis, tag in facts.tags:
        for a in axes.of(axis):
            if a not in tag_by_class or _tag_rank(tag) < _tag_rank(tag_by_class[a]):
                tag_by_class[a] = tag
    groups: list[Group] = []
    frozen: list[FrozenGroup] = []
    used_ids: set[str] = set()
    for classes, index in build_units(facts, links, axes):
        keys = sorted({k for c in classes for k in param_axes_by_class.get(c, ())},
                      key=lambda k: (facts.vars[k], k))
        if not any(k in zeros.producers for k in keys):
            continue  # no parameter writes these channels (unused buffer slices, consumer-only dims)
        if len(next(iter(index.values()))) < 2:
            continue  # a single unit can never be removed (a layer keeps at least one)
        members = tuple(
            Member(k[0][len(PARAM_PREFIX):], k[1], "producer" if k in zeros.producers else "consumer") for k in keys
        )
        first = next((m for m in members if m.role == "producer"), members[0])
        first_atoms = axes.of((PARAM_PREFIX + first.qualname, first.dim))
        gid = f"{first.qualname}/{first.dim}"
        pos = next((i for i, a in enumerate(first_atoms) if a in classes), 0)
        if len(first_atoms) > 1:
            gid += f".{pos}"
        if first_atoms and first_atoms[pos] in index and index[first_atoms[pos]].size < table.size[first_atoms[pos]]:
            gid += f"@{int(index[first_atoms[pos]].min())}"  # a part of the dim (concat/split): name its offset
        while gid in used_ids:
            gid += "'"
        used_ids.add(gid)
        size = len(next(iter(index.values())))
        frozen_why = next(((c, why) for c in classes if (why := table.frozen_reason(c)) is not None), None)
        if frozen_why is not None:
            frozen_class, reason = frozen_why
            frozen.append(FrozenGroup(gid, size, reason, table.frozen_site(frozen_class), members))
            continue
        exact, why, sink_names = zeros.check(classes)
        width = _width(table, first_atoms, classes, index)
        gran = next((tag_by_class[c] for c in classes if c in tag_by_class), "channel" if width == 1 else "block")
        groups.append(Group(gid, size, width, gran, classes, index, members, exact, why, sink_names))
    barriers = facts.barriers
    return Analysis(gm, tuple(example_inputs), groups, frozen, barriers, facts, links, axes, registry)


def _width(table: Any, atoms: tuple[int, ...], classes: tuple[int, ...], index: dict[int, np.ndarray]) -> int:
    per_unit = 1
    for a in atoms:
        if a in index:
            per_unit *= index[a].shape[1]
        else:
            per_unit *= table.size[a]
    return per_unit


def analyze(model: torch.nn.Module | fx.GraphModule, example_inputs: Any, frontend: Frontend = "auto",
            registry: OpRegistry = REGISTRY) -> Analysis:
    """Trace ``model`` and find its zero-invariant groups.

    Args:
        model: an ``nn.Module`` (traced with ``fxopt.trace``) or a GraphModule from ``fxopt.trace``.
        example_inputs: a tensor or tuple of positional inputs.
        frontend: passed to ``fxopt.trace``.
        registry: the op registry to use (defaults to fxopt's).

    Returns:
        An Analysis; ``analysis.summary()`` gives an overview, ``analysis.groups`` the prunable groups.

    Example:
        >>> a = fxopt.analyze(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
        >>> print(a.summary())
    """
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if isinstance(model, fx.GraphModule) and "fxopt" in model.meta:
        return _analyze_traced(model, inputs, registry)
    result = _analyze_traced(trace(model, inputs, frontend), inputs, registry)
    if frontend == "auto" and result.barriers and result.gm.meta["fxopt"]["trace"].frontend == "fx":
        # opaque fx leaf functions (torch.fx.wrap) and leaf modules without rules hide channels;
        # torch.export decomposes them, so keep whichever capture leaves fewer barriers
        try:
            exported = _analyze_traced(trace(model, inputs, "export"), inputs, registry)
        except Exception:  # export is only a second opinion here; the fx analysis stands
            log.debug("export fallback failed", exc_info=True)
        else:
            if len(exported.barriers) < len(result.barriers):
                info = exported.gm.meta["fxopt"]["trace"]
                reason = f"fx graph had {len(result.barriers)} nodes without rules, export {len(exported.barriers)}"
                exported.gm.meta["fxopt"]["trace"] = type(info)(info.frontend, reason)
                return exported
    return result


def _analyze_traced(gm: fx.GraphModule, inputs: tuple[Any, ...], registry: OpRegistry) -> Analysis:
    flat, _ = torch.utils._pytree.tree_flatten(inputs)
    n_ph = sum(1 for n in gm.graph.nodes if n.op == "placeholder")
    return analyze_graph(gm, flat if len(flat) == n_ph else inputs, registry)
