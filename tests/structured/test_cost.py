"""Parameters and FLOPs match hand-computed formulas and sit below dense at the expected ratios."""

from __future__ import annotations

import pytest
import torch

from fxopt.structured import (
    BlastLinear,
    BlockDiagonalLinear,
    BTTLinear,
    LowRankLinear,
    MonarchLinear,
    Structure,
    dense_flops,
)


def test_num_parameters_counts_every_stored_parameter(structure: Structure, shape: tuple[int, int]) -> None:
    for bias in (True, False):
        layer = structure.build(*shape, bias=bias)
        assert layer.num_parameters == sum(p.numel() for p in layer.parameters())


@pytest.mark.parametrize(("layer", "params", "macs"), [
    (LowRankLinear(96, 64, rank=8), 8 * (64 + 96), 8 * (64 + 96)),
    (BlockDiagonalLinear(96, 64, blocks=4), 4 * 16 * 24, 4 * 16 * 24),
    (MonarchLinear(96, 64, blocks=4, rank=2), 4 * 4 * 2 * (16 + 24), 4 * 4 * 2 * (16 + 24)),
    (BTTLinear(96, 64, rank=3, m1=8, n0=4), 8 * 4 * 3 * (8 + 24), 8 * 4 * 3 * (8 + 24)),
    (BlastLinear(96, 64, blocks=4, rank=8), 4 * 16 * 8 + 4 * 24 * 8 + 16 * 8, 96 * 8 + 16 * 8 + 64 * 8),
])
def test_params_and_flops_match_hand_formulas(layer: torch.nn.Module, params: int, macs: int) -> None:
    assert layer.num_parameters == params + 64
    assert layer.flops(tokens=1) == 2 * macs + 64
    assert layer.flops(tokens=10) == 10 * (2 * macs + 64)
    assert layer.dense_flops(tokens=10) == dense_flops(64, 96, 10) == 10 * (2 * 64 * 96 + 64)


@pytest.mark.parametrize(("layer", "ratio"), [
    (LowRankLinear(1024, 1024, rank=64, bias=False, device="meta"), 2 * 64 / 1024),
    (BlockDiagonalLinear(1024, 1024, blocks=8, bias=False, device="meta"), 1 / 8),
    (MonarchLinear(1024, 1024, blocks=32, rank=1, bias=False, device="meta"), 2 / 32),  # fly: 2 n sqrt(n)
    (MonarchLinear(1024, 1024, blocks=4, rank=64, bias=False, device="meta"), 2 / 4),  # fly: r = n / b^2
    (BTTLinear(1024, 1024, rank=2, bias=False, device="meta"), 2 * 2 / 32),  # 2 r / sqrt(n), even split
    (BlastLinear(1024, 1024, blocks=16, rank=128, bias=False, device="meta"), 128 * (2048 + 256) / 1024 ** 2),
])
def test_costs_are_below_dense_at_the_expected_ratio(layer: torch.nn.Module, ratio: float) -> None:
    assert layer.num_parameters / (1024 * 1024) == pytest.approx(ratio)
    assert layer.flops(tokens=7) / layer.dense_flops(tokens=7) == pytest.approx(ratio)
    assert ratio < 1
