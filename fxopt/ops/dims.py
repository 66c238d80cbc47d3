"""Dimension variables with sizes, unified like type variables.

Every tensor axis owns a variable. A variable is either atomic or *refined* into an ordered product of child
variables (row-major, like ``reshape``). ``unify`` states that two sequences of variables describe the same
elements in the same order: it unions atomic variables of equal size and refines a larger one into
``(smaller, rest)`` when sizes differ, so ``[512]`` unified with ``[8, 64]`` refines the 512 into 8 x 64.
Sizes that do not divide mean the reshape mixes elements: unify reports failure and the caller freezes.

Size-1 variables are broadcast dims: they are skipped by ``atoms`` and never prunable.
Cost: amortized near-constant per operation (path compression), so the analysis stays linear in graph size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence


class DimTable:
    """Union-find over dimension variables with refinement into products."""

    def __init__(self) -> None:
        self.size: list[int] = []
        self.parent: list[int] = []
        self.children: list[tuple[int, ...] | None] = []
        self.frozen: dict[int, tuple[str, str | None]] = {}  # root -> (reason, name of the node that froze it)
        self.version = 0

    def new(self, size: int) -> int:
        """A fresh atomic variable of ``size`` elements."""
        self.size.append(int(size))
        self.parent.append(len(self.parent))
        self.children.append(None)
        return len(self.size) - 1

    def find(self, v: int) -> int:
        """Representative of ``v``'s class."""
        parent = self.parent
        root = v
        while parent[root] != root:
            root = parent[root]
        while parent[v] != root:
            parent[v], v = root, parent[v]
        return root

    def atoms(self, v: int) -> list[int]:
        """The atomic representatives ``v`` expands to, row-major, size-1 factors dropped."""
        out: list[int] = []
        stack = [v]
        while stack:
            r = self.find(stack.pop())
            kids = self.children[r]
            if kids is not None:
                stack.extend(reversed(kids))
            elif self.size[r] > 1:
                out.append(r)
        return out

    def refine(self, v: int, first: int) -> tuple[int, int]:
        """Split atomic root ``v`` into ``(first, size // first)``; children inherit a freeze."""
        r = self.find(v)
        assert self.children[r] is None and self.size[r] % first == 0
        a, b = self.new(first), self.new(self.size[r] // first)
        self.children[r] = (a, b)
        if r in self.frozen:
            self.frozen[a] = self.frozen[b] = self.frozen[r]
        self.version += 1
        return a, b

    def union(self, a: int, b: int) -> int:
        """Union two atomic roots of equal size; returns the new root."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        assert self.size[ra] == self.size[rb]
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra
        if rb in self.frozen and ra not in self.frozen:
            self.frozen[ra] = self.frozen[rb]
        self.version += 1
        return ra

    def unify(self, left: Sequence[int], right: Sequence[int]) -> bool:
        """Make two row-major sequences of variables equal element by element.

        Returns:
            False when the sequences cannot be aligned (different total sizes, or factors that do not divide);
            the table may then hold partial refinements, which are still valid facts.
        """
        total_l = total_r = 1
        for v in left:
            total_l *= self.size[v]
        for v in right:
            total_r *= self.size[v]
        if total_l != total_r:
            return False
        a: deque[int] = deque()
        b: deque[int] = deque()
        for v in left:
            a.extend(self.atoms(v))
        for v in right:
            b.extend(self.atoms(v))
        while a and b:
            x, y = self.find(a.popleft()), self.find(b.popleft())
            if self.children[x] is not None:
                a.extendleft(reversed(self.atoms(x)))
                b.appendleft(y)
                continue
            if self.children[y] is not None:
                b.extendleft(reversed(self.atoms(y)))
                a.appendleft(x)
                continue
            if x == y:
                continue
            sx, sy = self.size[x], self.size[y]
            if sx == sy:
                self.union(x, y)
            elif sx % sy == 0:
                head, rest = self.refine(x, sy)
                self.union(head, y)
                a.appendleft(rest)
            elif sy % sx == 0:
                head, rest = self.refine(y, sx)
                self.union(head, x)
                b.appendleft(rest)
            else:
                return False
        return not a and not b

    def freeze(self, v: int, reason: str, site: str | None = None) -> None:
        """Mark every atom of ``v`` as not prunable, keeping the first reason given and the node (``site``) that
        gave it; refinement and union carry both along."""
        for r in self.atoms(v):
            self.frozen.setdefault(r, (reason, site))
        self.version += 1

    def frozen_reason(self, atom: int) -> str | None:
        """Why an atom may not be pruned, or ``None``."""
        entry = self.frozen.get(self.find(atom))
        return entry[0] if entry is not None else None

    def frozen_site(self, atom: int) -> str | None:
        """The name of the node that froze an atom, or ``None`` (not frozen, or frozen outside any node)."""
        entry = self.frozen.get(self.find(atom))
        return entry[1] if entry is not None else None
