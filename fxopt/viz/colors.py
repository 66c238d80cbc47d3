"""Stable colours: a group's colour comes from a hash of its id, so re-rendering a graph gives the same .dot text.

A colour is a slot in a grid of well separated hues and two lightness levels; the fill is light enough for black
labels, the edge colour is a darker shade of the same hue. The hash of the id picks a group's first-choice slot.
Two groups of one picture must not share a colour (the legend would show two identical swatches), and two
*neighbouring* groups (sharing a node, or on the two ends of an edge) whose slots merely look alike would be hard to
tell apart. So ``assign_colours`` walks the later group (in id order) along its own hash-defined probe sequence to
the first slot no other group holds and unlike its neighbours'; only a picture with more groups than slots reuses
one. The result depends only on the set of ids and their adjacency, never on the order groups were found in.
"""

from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

HUES = 24
"""Number of distinct hues (15 degrees apart)."""

_LEVELS = ((0.84, 0.85), (0.64, 0.70))  # (lightness, saturation) of the two fill shades
_GREYS = ("#f2f2f2", "#9e9e9e")


@dataclass(frozen=True)
class Colour:
    """The colours of one group: ``fill`` for nodes, ``line`` for edges and borders (``#rrggbb``)."""

    fill: str
    line: str


def _hex(h: float, lightness: float, saturation: float) -> str:
    r, g, b = colorsys.hls_to_rgb(h, lightness, saturation)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def _slot_colour(slot: int) -> Colour:
    hue = (slot % HUES) / HUES
    lightness, saturation = _LEVELS[(slot // HUES) % len(_LEVELS)]
    return Colour(_hex(hue, lightness, saturation), _hex(hue, 0.35, 0.75))


def _digest(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def _probe(key: str) -> list[int]:
    """The slots ``key`` tries in order: its hash slot first, then a fixed stride walk through all slots."""
    n = HUES * len(_LEVELS)
    digest = _digest(key)
    start, stride = digest % n, (7, 11, 13, 17, 19, 23)[(digest >> 32) % 6]
    return [(start + i * stride) % n for i in range(n)]


def _alike(a: int, b: int) -> bool:
    """Whether two slots are hard to tell apart: hues within 15 degrees, or 30 degrees at the same lightness."""
    ha, hb = a % HUES, b % HUES
    dist = min((ha - hb) % HUES, (hb - ha) % HUES)
    return dist <= 1 or (dist <= 2 and a // HUES == b // HUES)


def assign_colours(ids: Iterable[str], neighbours: Mapping[str, Iterable[str]] | None = None) -> dict[str, Colour]:
    """Colours for a set of group ids: each id's hash colour unless another group holds it or a neighbour looks alike.

    Args:
        ids: the group ids.
        neighbours: for each id, the ids drawn next to it (adjacent nodes or the same node).

    Returns:
        ``{id: Colour}``; the same ids and adjacency always give the same colours.
    """
    adjacency = {k: set(v) for k, v in (neighbours or {}).items()}
    slots: dict[str, int] = {}
    for key in sorted(set(ids)):
        near = [slots[n] for n in adjacency.get(key, ()) if n in slots]
        used = set(slots.values())
        probe = _probe(key)
        apart = [s for s in probe if not any(_alike(s, t) for t in near)]
        slots[key] = next((s for s in apart if s not in used), next(iter(apart), probe[0]))
    return {k: _slot_colour(s) for k, s in slots.items()}


def stable_colour(key: str) -> Colour:
    """The colour of ``key`` (a group id): the same key always gets the same colour, on every machine.

    Args:
        key: any string, typically ``Group.id``.

    Returns:
        A Colour with a light fill and a dark line of the same hue: the first choice of ``assign_colours``.
    """
    return _slot_colour(_probe(key)[0])


NEUTRAL = Colour(*_GREYS)
"""Colour of nodes and edges that carry no group's channels."""

FROZEN = Colour("#e0e0e0", "#c62828")
"""Border colour of frozen dims and barriers (red)."""

REMOVED = Colour("#ffffff", "#bdbdbd")
ADDED = Colour("#e8f5e9", "#2e7d32")
CHANGED = Colour("#fff8e1", "#ef6c00")
