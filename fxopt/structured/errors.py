"""The error every impossible structure, shape or fitting option raises."""

from __future__ import annotations

from fxopt.errors import FxoptError


class StructureError(FxoptError, ValueError):
    """A structure cannot be built or fitted with these options (shape, blocks, rank, weight or data).

    The message names the layer and the shape, and says what would work (valid block counts, the largest rank).
    """


def divisors(n: int) -> list[int]:
    """The positive divisors of ``n`` in increasing order (used to say which block counts would work)."""
    return [d for d in range(1, n + 1) if n % d == 0]
