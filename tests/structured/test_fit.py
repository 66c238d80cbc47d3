"""Closed-form fits: matrices in a structure's class are recovered, errors are exact and shrink with the rank."""

from __future__ import annotations

import itertools

import pytest
import torch

from fxopt.structured import (
    BTT,
    Blast,
    BlockDiagonal,
    LowRank,
    LowRankLinear,
    Monarch,
    MonarchLinear,
    Structure,
    choose_rank,
    error_by_rank,
    fit,
)

RANKED = {"lowrank": LowRank(rank=1), "monarch": Monarch(blocks=4, rank=1), "btt": BTT(rank=1, m1=4, n0=6),
          "monarch_shuffle": Monarch(blocks=3, rank=1, shuffle=True), "blast": Blast(blocks=4, rank=1)}
MOST = {"lowrank": 10, "monarch": 6, "btt": 6, "monarch_shuffle": 8, "blast": 12}  # ranks tried on 24 x 36


def _weight(m: int = 24, n: int = 36) -> torch.Tensor:
    """A weight with a decaying spectrum, like a trained layer's."""
    return torch.randn(m, n, dtype=torch.float64) @ torch.diag(torch.logspace(0, -1.5, n, dtype=torch.float64))


def test_fit_recovers_a_matrix_of_its_own_class(structure: Structure, shape: tuple[int, int]) -> None:
    target = structure.build(*shape, dtype=torch.float64)
    weight = target.to_dense().detach()
    bias = torch.randn(shape[0], dtype=torch.float64)
    result = fit(weight, structure, bias)
    assert result.report.weight_error <= 1e-5
    assert result.report.error <= 1e-5
    torch.testing.assert_close(result.layer.to_dense(), weight, rtol=0, atol=1e-10)
    torch.testing.assert_close(result.layer.bias, bias, rtol=0, atol=0)


def test_fit_recovers_fly_monarch_with_the_output_shuffle() -> None:
    """Dao et al.'s M = P L P^T R (square, b blocks of n/b) is the shuffled Monarch of rank n / b^2."""
    b, n = 4, 32
    left = torch.block_diag(*torch.randn(b, n // b, n // b, dtype=torch.float64))
    right = torch.block_diag(*torch.randn(b, n // b, n // b, dtype=torch.float64))
    perm = torch.eye(n, dtype=torch.float64)[torch.arange(n).reshape(b, n // b).T.reshape(-1)]
    weight = perm @ left @ perm.T @ right
    assert fit(weight, Monarch(blocks=b, rank=n // b ** 2, shuffle=True)).report.error <= 1e-12
    assert fit(weight, Monarch(blocks=b, rank=n // b ** 2)).report.error > 0.1  # the shuffle matters


def test_fit_error_from_singular_values_equals_the_dense_difference(structure: Structure,
                                                                    shape: tuple[int, int]) -> None:
    weight = _weight(*shape)
    result = fit(weight, structure)
    direct = float((weight - result.layer.to_dense().detach()).norm() / weight.norm())
    assert 0.05 < direct < 1
    assert result.report.error == pytest.approx(direct, rel=1e-9)
    assert result.report.weight_error == pytest.approx(direct, rel=1e-9)


@pytest.mark.parametrize("name", list(RANKED))
def test_fit_error_never_grows_with_rank(name: str) -> None:
    base = RANKED[name]
    weight = _weight()
    errors = [fit(weight, type(base)(**{**vars(base), "rank": r})).report.error for r in range(1, MOST[name] + 1)]
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 0.5 * errors[0]


@pytest.mark.parametrize("name", ["lowrank", "monarch", "btt", "monarch_shuffle"])
def test_error_by_rank_matches_fits_at_every_rank(name: str) -> None:
    base = RANKED[name]
    weight = _weight()
    curve = error_by_rank(weight, base)
    assert curve[0] == pytest.approx(1.0) and curve[-1] == pytest.approx(0.0, abs=1e-12)
    for rank in range(1, len(curve)):
        fitted = fit(weight, type(base)(**{**vars(base), "rank": rank})).report.error
        assert fitted == pytest.approx(float(curve[rank]), rel=1e-9, abs=1e-12)


def test_choose_rank_is_the_smallest_rank_within_budget() -> None:
    weight = _weight(48, 48)
    for budget in (0.5, 0.2, 0.05):
        chosen = choose_rank(weight, Monarch(blocks=4, rank=1), budget)
        assert fit(weight, chosen).report.error <= budget
        if chosen.rank > 1:
            assert fit(weight, Monarch(blocks=4, rank=chosen.rank - 1)).report.error > budget
    assert choose_rank(weight, LowRank(rank=7), budget=0.0) == LowRank(rank=48)


def test_fit_report_counts_and_repr() -> None:
    result = fit(torch.randn(64, 96), BTT(rank=2), torch.randn(64))
    report = result.report
    assert report.structure == "BTT(rank=2, m1=8, n0=8)"
    assert (report.params_before, report.params_after) == (64 * 96 + 64, 2 * (8 * 96 + 8 * 64) + 64)
    assert (report.flops_before, report.flops_after) == (2 * 64 * 96 + 64, 2 * 2 * (8 * 96 + 8 * 64) + 64)
    assert report.param_ratio == pytest.approx(report.params_after / report.params_before)
    assert str(report).startswith("BTT(rank=2, m1=8, n0=8) on 64x96 (none): error ")
    assert report.iterations == 0 and report.start_error == report.error and report.output_error is None


def test_from_dense_keeps_dtype_and_device_and_fits_like_fit() -> None:
    weight = torch.randn(24, 36)
    layer = MonarchLinear.from_dense(weight, blocks=4, rank=2)
    assert layer.left.dtype == torch.float32 and layer.bias is None
    torch.testing.assert_close(layer.to_dense(), fit(weight, Monarch(4, 2)).layer.to_dense())
    half = LowRankLinear.from_dense(weight.to(torch.bfloat16), rank=4)
    assert half.u.dtype == torch.bfloat16


def test_block_diagonal_fit_keeps_the_diagonal_blocks() -> None:
    weight = _weight()
    layer = fit(weight, BlockDiagonal(blocks=4)).layer
    for i in range(4):
        torch.testing.assert_close(layer.weight[i], weight[6 * i:6 * i + 6, 9 * i:9 * i + 9], rtol=0, atol=0)
