"""Shared cases for the structured-layer tests: one small shape per structure, and an intermediate-size probe."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fxopt.structured import BTT, Blast, BlockDiagonal, LowRank, Monarch, Structure

# 24 x 36 weights: rectangular, blocks of 6 x 9 for b = 4, 8 x 12 for b = 3.
CASES: dict[str, Structure] = {
    "lowrank": LowRank(rank=3),
    "blockdiag": BlockDiagonal(blocks=4),
    "monarch": Monarch(blocks=4, rank=2),
    "monarch_shuffle": Monarch(blocks=3, rank=2, shuffle=True),
    "btt": BTT(rank=2, m1=4, n0=6),
    "blast": Blast(blocks=4, rank=3),
}
SHAPE = (24, 36)


@pytest.fixture(params=list(CASES), ids=list(CASES))
def structure(request: pytest.FixtureRequest) -> Structure:
    """Each structure in turn, valid for a ``SHAPE`` weight."""
    return CASES[request.param]


@pytest.fixture
def shape() -> tuple[int, int]:
    """(out_features, in_features) of the weights the ``structure`` cases fit."""
    return SHAPE


class _Largest(TorchDispatchMode):
    """Records the largest tensor any ATen op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.fixture
def largest_intermediate() -> Callable[[Callable[[], Any]], int]:
    """Runs a function and returns the element count of the largest tensor an op created inside it."""
    def probe(fn: Callable[[], Any]) -> int:
        with _Largest() as mode:
            fn()
        return mode.largest
    return probe
