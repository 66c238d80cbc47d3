"""Zero-invariant groups: the prunable units of a graph, grouped by shared structure, with exactness.

A *unit* is the smallest set of channels that must be removed together: the elements of atomic dimension
classes tied by element links (a concat's output channel and the branch channel it copies; the two halves of a
rotary pair). Units touching the same classes the same number of times form a *group*, and one pruning choice
(a list of unit indices) applies to every member through the group's index maps.

A group is *exact* (zero-invariant, OTO's ZIG) when zeroing its producer slices makes the channel zero at every
place the graph reduces it away, and each such place is a sum (linear/conv inputs, contractions, sums). Zero
status is propagated forward through the zero rules the op rules stated; the first place where it fails is the
reason given for ``exact=False``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch.fx as fx

from fxopt.analysis.parts import ElementLink
from fxopt.ops.facts import Facts, Sink, ZeroRule
from fxopt.ops.view import PARAM_PREFIX, Axis


@dataclass(frozen=True)
class Member:
    """One parameter axis in a group: the slices ``indices(units)`` of ``qualname`` along ``dim``."""

    qualname: str
    dim: int
    role: str  # "producer" (zeroing it zeroes the channel) or "consumer"


@dataclass(eq=False)
class Group:
    """A zero-invariant group (or an approximate one, ``exact=False``).

    Attributes:
        id: stable readable id: the first producer parameter and dim, plus the factor for split axes.
        size: number of units that may be removed.
        width: channels per unit along the first producer axis (1 for channels, head_dim for heads).
        granularity: ``"channel"``, ``"head"``, ``"head_dim"`` or ``"block"``.
        classes: the atomic dimension classes the units live in.
        index: per class, a ``(size, k)`` array: the class elements of each unit.
        members: parameter slices removed with each unit.
        exact: whether zeroing the producers makes removal output-preserving.
        reason: why not exact.
    """

    id: str
    size: int
    width: int
    granularity: str
    classes: tuple[int, ...]
    index: dict[int, np.ndarray]
    members: tuple[Member, ...]
    exact: bool
    reason: str | None = None
    nodes: tuple[str, ...] = field(default=())

    def __repr__(self) -> str:
        flag = "exact" if self.exact else f"approximate: {self.reason}"
        return f"Group({self.id!r}, size={self.size}, {self.granularity}, {len(self.members)} members, {flag})"

    def __hash__(self) -> int:
        return id(self)


@dataclass(frozen=True)
class FrozenGroup:
    """Units that may not be pruned: the dims, the node that froze them and why."""

    id: str
    size: int
    reason: str
    node: str | None
    members: tuple[Member, ...]


class AxisIndex:
    """Atoms of every axis, and the reverse map from atomic class to axes, computed once."""

    def __init__(self, facts: Facts) -> None:
        table = facts.table
        self.atoms: dict[tuple[str, int], tuple[int, ...]] = {}
        self.by_class: dict[int, list[tuple[str, int]]] = defaultdict(list)
        for key, var in facts.vars.items():
            atoms = tuple(table.atoms(var))
            self.atoms[key] = atoms
            for a in set(atoms):
                self.by_class[a].append(key)

    def of(self, axis: Axis | tuple[str, int]) -> tuple[int, ...]:
        """Atomic classes of an axis (empty for unknown or size-1 axes)."""
        key = (axis.key, axis.dim) if isinstance(axis, Axis) else axis
        return self.atoms.get(key, ())


def _components(total: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected-component labels (the smallest element id of each component) of an edge list, vectorized."""
    labels = np.arange(total)
    if a.size == 0:
        return labels
    while True:
        low = np.minimum(labels[a], labels[b])
        new = labels.copy()
        np.minimum.at(new, a, low)
        np.minimum.at(new, b, low)
        new = new[new]  # pointer jumping: components settle in a logarithmic number of rounds
        if np.array_equal(new, labels):
            return labels
        labels = new


def build_units(facts: Facts, links: list[ElementLink],
                axes: AxisIndex) -> list[tuple[tuple[int, ...], dict[int, np.ndarray]]]:
    """Units grouped by signature: ``(classes, index per class)`` for each group, deterministic order."""
    table = facts.table
    linked = sorted({c for link in links for c in (link.big, link.small)})
    base: dict[int, int] = {}
    total = 0
    for c in linked:
        base[c] = total
        total += table.size[c]
    out: list[tuple[tuple[int, ...], dict[int, np.ndarray]]] = []
    if total:
        ea = np.concatenate([base[k.big] + k.start + np.arange(k.length) for k in links])
        eb = np.concatenate([base[k.small] + np.arange(k.length) for k in links])
        labels = _components(total, ea, eb)
        owner = np.concatenate([np.full(table.size[c], c) for c in linked])
        offset = np.concatenate([np.arange(table.size[c]) for c in linked])
        order = np.lexsort((offset, owner, labels))  # by component, then class, then element
        lab, own, off = labels[order], owner[order], offset[order]
        starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
        ends = np.r_[starts[1:], len(lab)]
        buckets: dict[tuple[tuple[int, int], ...], list[tuple[int, np.ndarray, np.ndarray]]] = defaultdict(list)
        for s, e in zip(starts.tolist(), ends.tolist()):
            o = own[s:e]
            cls, counts = np.unique(o, return_counts=True)
            signature = tuple(zip(cls.tolist(), counts.tolist()))
            buckets[signature].append((int(lab[s]), o, off[s:e]))
        for signature, units in buckets.items():
            units.sort(key=lambda u: u[0])
            index = {c: np.stack([offs[own_ == c] for _, own_, offs in units]) for c, _ in signature}
            out.append((tuple(c for c, _ in signature), index))
    linked_set = set(linked)
    for c in sorted(axes.by_class):
        if c not in linked_set:
            out.append(((c,), {c: np.arange(table.size[c], dtype=np.int64)[:, None]}))
    return out


def _parameter_only_nodes(order: dict[fx.Node, int]) -> set[fx.Node]:
    """Nodes computed from parameters alone (``get_attr`` and what only they feed: ``w.t()``, ``w * scale``)."""
    out: set[fx.Node] = set()
    for node in order:  # built from the graph: insertion order is graph order
        inputs = node.all_input_nodes
        if node.op == "get_attr" or (node.op != "placeholder" and inputs and all(n in out for n in inputs)):
            out.add(node)
    return out


def _producer_axes(rules: Sequence[ZeroRule], order: dict[fx.Node, int]) -> set[tuple[str, int]]:
    """Parameter axes that write activation channels.

    A parameter axis is a producer when zeroing it zeroes a channel of an activation: it is a source of a zero rule
    whose node reads an activation, directly or through a chain of parameter-only nodes (``x @ w.t()`` makes
    ``w``'s dim 0 a producer through the transpose; ``w``'s dim 1 only meets the contraction and stays a consumer).
    """
    param_only = _parameter_only_nodes(order)
    roots: dict[tuple[str, int], set[tuple[str, int]]] = {}
    producers: set[tuple[str, int]] = set()
    for rule in sorted(rules, key=lambda r: order.get(r.node, 0)):
        found: set[tuple[str, int]] = set()
        for s in rule.sources:
            if s is not None:
                k = (s.key, s.dim)
                found |= {k} if s.key.startswith(PARAM_PREFIX) else roots.get(k, set())
        if rule.node in param_only:
            roots.setdefault((rule.out.key, rule.out.dim), set()).update(found)
        else:
            producers |= found
    return producers


class ZeroPropagation:
    """Evaluates, group by group, whether zeroed producers make every sink see zeros."""

    def __init__(self, facts: Facts, axes: AxisIndex, order: dict[fx.Node, int]) -> None:
        self.axes = axes
        self.rules_by_class: dict[int, list[ZeroRule]] = defaultdict(list)
        self.sinks_by_class: dict[int, list[Sink]] = defaultdict(list)
        self.producers: set[tuple[str, int]] = set()
        self.order = order
        for rule in facts.zero_rules:
            for c in set(axes.of(rule.out)):
                self.rules_by_class[c].append(rule)
        self.producers = _producer_axes(facts.zero_rules, order)
        for sink in facts.sinks:
            for c in set(axes.of(sink.axis)):
                self.sinks_by_class[c].append(sink)

    def check(self, classes: Iterable[int]) -> tuple[bool, str | None, tuple[str, ...]]:
        """``(exact, reason, sink node names)`` for the group living in ``classes``."""
        cls = set(classes)
        rules = {id(r): r for c in cls for r in self.rules_by_class.get(c, ())}
        sinks = {id(s): s for c in cls for s in self.sinks_by_class.get(c, ())}
        zero: dict[tuple[str, int], bool] = {}
        why: dict[tuple[str, int], str] = {}

        def touches(a: Axis) -> bool:
            return not cls.isdisjoint(self.axes.of(a))

        def status(a: Axis) -> bool:
            k = (a.key, a.dim)
            if k in zero:
                return zero[k]
            return k in self.producers

        for rule in sorted(rules.values(), key=lambda r: self.order.get(r.node, 0)):
            touching = [s for s in rule.sources if s is not None and touches(s)]
            if rule.mode == "always":
                ok = True
            elif rule.mode == "all":
                ok = bool(touching) and None not in rule.sources and all(status(s) for s in touching)
            else:
                ok = any(status(s) for s in touching)
            k = (rule.out.key, rule.out.dim)
            zero[k] = zero.get(k, True) and ok  # several rules for one axis (cat inputs): all must hold
            if not ok:
                why[k] = f"channel is not zero after {rule.node.name}"
        names = tuple(sorted({s.node.name for s in sinks.values()}))
        for sink in sorted(sinks.values(), key=lambda s: self.order.get(s.node, 0)):
            if not sink.exact:
                return False, sink.reason, names
            if not (status(sink.axis) or any(status(a) for a in sink.alternatives if touches(a))):
                k = (sink.axis.key, sink.axis.dim)
                reason = why.get(k, f"nothing zeroes the channel before {sink.node.name}")
                return False, f"{reason} (read by {sink.node.name})", names
        return True, None, names
