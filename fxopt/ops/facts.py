"""Facts: what channel rules state about a node, recorded for the analysis.

A rule receives the node's OpView and a ``Facts`` and says, with index maps kept implicit in the dimension
variables: which axes are the same channels (``same``), which axis is a row-major product of others
(``product``: reshape, flatten, head split, grouped conv), which axis is a contiguous part of another
(``part``: concat, split, slice), which axes may not be pruned and why (``freeze``), when an output channel is
zero (``zero``), and where a channel is reduced away (``sink``: exact for sums and contractions, not exact for
statistics such as a LayerNorm's mean).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch.fx as fx

from fxopt.ops.dims import DimTable
from fxopt.ops.view import Axis, OpView

ZeroMode = Literal["all", "any", "always"]


@dataclass(frozen=True)
class ZeroRule:
    """``out`` is zero for a channel when all (or any) of ``sources`` are; ``None`` is a never-zero operand.
    ``"always"``: every channel of ``out`` is zero, whatever is pruned (``torch.zeros``)."""

    node: fx.Node
    out: Axis
    mode: ZeroMode
    sources: tuple[Axis | None, ...]


@dataclass(frozen=True)
class Sink:
    """A node reduces ``axis`` away: exact when a zero channel does not change the result."""

    node: fx.Node
    axis: Axis
    exact: bool
    reason: str
    alternatives: tuple[Axis, ...] = ()


@dataclass(frozen=True)
class Part:
    """``big[start : start + small.size]`` holds the same channels as ``small``."""

    node: fx.Node
    big: Axis
    start: int
    small: Axis


@dataclass(frozen=True)
class Barrier:
    """A node whose effect on channels is unknown: every dim it touches is frozen."""

    node: fx.Node
    op: str
    reason: str
    hint: str


class Facts:
    """Collects the facts rules state, over one DimTable."""

    def __init__(self) -> None:
        self.table = DimTable()
        self.vars: dict[tuple[str, int], int] = {}
        self.sizes: dict[tuple[str, int], int] = {}
        self.zero_rules: list[ZeroRule] = []
        self.sinks: list[Sink] = []
        self.parts: list[Part] = []
        self.barriers: list[Barrier] = []
        self.tags: list[tuple[Axis, str]] = []
        self.node: fx.Node | None = None

    def var(self, axis: Axis) -> int:
        """The variable of an axis, created on first use."""
        k = (axis.key, axis.dim)
        v = self.vars.get(k)
        if v is None:
            v = self.vars[k] = self.table.new(axis.size)
            self.sizes[k] = axis.size
        return v

    def same(self, a: Axis, b: Axis) -> None:
        """``a`` and ``b`` hold the same channels in the same order."""
        if a.size != b.size:
            self.freeze(a, f"size mismatch {a.size} vs {b.size}")
            self.freeze(b, f"size mismatch {a.size} vs {b.size}")
            return
        if not self.table.unify([self.var(a)], [self.var(b)]):
            reason = "channels are factored differently on the two sides (e.g. two different shuffles)"
            self.freeze(a, reason)
            self.freeze(b, reason)

    def transfer(self, out: Axis, inp: Axis) -> None:
        """``out`` holds ``inp``'s channels, zero where they are zero (views, copies, zero-preserving maps)."""
        self.same(out, inp)
        self.zero(out, "all", [inp])

    def product(self, flat: Sequence[Axis], parts: Sequence[Axis]) -> bool:
        """The row-major product of ``flat`` axes equals that of ``parts``; freezes both when they cannot align."""
        ok = self.table.unify([self.var(a) for a in flat], [self.var(a) for a in parts])
        if not ok:
            for a in [*flat, *parts]:
                self.freeze(a, "reshape mixes channels of different dims")
        return ok

    def part(self, big: Axis, start: int, small: Axis) -> None:
        """``big[start:start+small.size]`` holds ``small``'s channels (concat, split, slice)."""
        self.var(big), self.var(small)
        assert self.node is not None
        self.parts.append(Part(self.node, big, start, small))

    def take(self, src: Axis, start: int, stop: int, step: int, dst: Axis) -> None:
        """``dst`` holds ``src[start:stop:step]`` (slice, split, narrow): all of ``src``'s channels, or a contiguous
        part of them; a strided range interleaves channels, so it freezes both."""
        if step != 1:
            assert self.node is not None
            reason = f"{self.node.name} takes a strided slice"
            self.freeze(src, reason)
            self.freeze(dst, reason)
        elif stop - start == src.size:
            self.transfer(dst, src)
        else:
            self.part(src, start, dst)
            self.zero(dst, "all", [src])

    def freeze(self, axis: Axis, reason: str) -> None:
        """``axis`` may not be pruned."""
        self.table.freeze(self.var(axis), reason, self.node.name if self.node is not None else None)

    def zero(self, out: Axis, mode: ZeroMode, sources: Sequence[Axis | None]) -> None:
        """Channel of ``out`` is zero when ``mode`` of ``sources`` are zero."""
        assert self.node is not None
        self.zero_rules.append(ZeroRule(self.node, out, mode, tuple(sources)))

    def sink(self, axis: Axis, exact: bool, reason: str, alternatives: Sequence[Axis] = ()) -> None:
        """The node reduces ``axis``; ``exact`` when zero channels leave the result unchanged."""
        assert self.node is not None
        self.var(axis)
        self.sinks.append(Sink(self.node, axis, exact, reason, tuple(alternatives)))

    def tag(self, axis: Axis, granularity: str) -> None:
        """Label the channels of ``axis`` (``"head"``, ``"head_dim"``) for reports and pruning choices."""
        self.var(axis)
        self.tags.append((axis, granularity))

    def barrier(self, view: OpView, reason: str, hint: str) -> None:
        """Freeze every axis of every tensor the node touches."""
        self.barriers.append(Barrier(view.node, view.kind, reason, hint))
        for t in view.tensors():
            for a in t.axes():
                self.freeze(a, reason)
