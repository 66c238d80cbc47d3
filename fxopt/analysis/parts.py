"""Resolve ``part`` facts (concat, split, slice) into element relations between atomic dimension classes.

A part says ``big[start:start+n] == small``. With ``big`` expanded to its factors ``f0 x f1 x ... x fk``
(row-major), the range must be a box: a run of ``c`` elements of one factor ``fj`` times all of the inner
factors, at a fixed index of the outer ones. Then ``small == [S] + inner factors`` (a unification) and
``fj[a:a+c] == S`` element by element (a relation between atomic classes). Outer factors selected at a fixed
index and parts that are not boxes are frozen. Unifications can refine factors that earlier parts used, so
resolution repeats until the dimension table stops changing.
"""

from __future__ import annotations

from dataclasses import dataclass

from fxopt.ops.dims import DimTable
from fxopt.ops.facts import Facts, Part


@dataclass(frozen=True)
class ElementLink:
    """Atomic class ``big`` elements ``[start, start+length)`` are the elements ``[0, length)`` of ``small``."""

    big: int
    start: int
    small: int
    length: int


def resolve_parts(facts: Facts, max_rounds: int = 8) -> list[ElementLink]:
    """Apply every part fact until the table is stable; returns the element links between atomic classes."""
    table = facts.table
    links: dict[int, ElementLink] = {}
    for _ in range(max_rounds):
        before = table.version
        for i, part in enumerate(facts.parts):
            link = _resolve(facts, part)
            if link is None:
                links.pop(i, None)
            else:
                links[i] = link
        if table.version == before:
            break
    out = []
    for link in links.values():
        big, small = table.find(link.big), table.find(link.small)
        if table.children[big] is None and table.children[small] is None:
            out.append(ElementLink(big, link.start, small, link.length))
    return out


def _resolve(facts: Facts, part: Part) -> ElementLink | None:
    table: DimTable = facts.table
    big_atoms = table.atoms(facts.var(part.big))
    small_atoms = table.atoms(facts.var(part.small))
    n, start = part.small.size, part.start
    sizes = [table.size[a] for a in big_atoms]
    strides = [1] * len(sizes)
    for k in range(len(sizes) - 2, -1, -1):
        strides[k] = strides[k + 1] * sizes[k + 1]
    if n == 1 or not big_atoms:
        return None
    for j, (size, stride) in enumerate(zip(sizes, strides)):
        block = size * stride
        if start % stride or n % stride or start // block != (start + n - 1) // block:
            continue
        c = n // stride
        offset = (start // stride) % size
        facts.node = part.node
        for outer in big_atoms[:j]:
            _freeze(facts, outer, part, f"selected at a fixed index by {part.node.name}")
        inner = big_atoms[j + 1 :]
        if c == size:
            if not table.unify(small_atoms, [big_atoms[j], *inner]):
                _freeze_both(facts, part)
            return None
        if c == 1:
            _freeze(facts, big_atoms[j], part, f"single channel taken by {part.node.name}")
            if not table.unify(small_atoms, inner):
                _freeze_both(facts, part)
            return None
        head = _leading(table, small_atoms, c)
        if head is None:
            # the part is itself a product (e.g. heads x head_dim): split the big factor into
            # (parts, c) so that every equal part shares the inner factor
            if offset % c or size % c:
                _freeze_both(facts, part)
                return None
            outer, inner_c = table.refine(big_atoms[j], size // c)
            _freeze(facts, outer, part, f"selected at a fixed index by {part.node.name}")
            if not table.unify(small_atoms, [inner_c, *inner]):
                _freeze_both(facts, part)
            return None
        if not table.unify(table.atoms(facts.var(part.small))[1:], inner):
            _freeze_both(facts, part)
            return None
        return ElementLink(big_atoms[j], offset, head, c)
    _freeze_both(facts, part)
    return None


def _leading(table: DimTable, atoms: list[int], c: int) -> int | None:
    """The atom of ``atoms`` that spans exactly the first ``c`` positions, refining the first atom if needed."""
    if not atoms:
        return None
    first = table.find(atoms[0])
    size = table.size[first]
    if size == c:
        return first
    if size > c and size % c == 0:
        head, _ = table.refine(first, c)
        return head
    return None


def _freeze(facts: Facts, var: int, part: Part, reason: str) -> None:
    facts.table.freeze(var, reason, part.node.name)


def _freeze_both(facts: Facts, part: Part) -> None:
    reason = f"{part.node.name} takes a range that is not a block of whole channels"
    _freeze(facts, facts.var(part.big), part, reason)
    _freeze(facts, facts.var(part.small), part, reason)
