"""BLAST fitting: exact recovery of BLAST matrices, refinement that never loses, and its stopping rules."""

from __future__ import annotations

import pytest
import torch

from fxopt.structured import Blast, BlastLinear, LowRank, Monarch, fit
from fxopt.structured.blast_fit import refine_blast
from fxopt.structured.grid import cut


def _decaying(m: int, n: int) -> torch.Tensor:
    return torch.randn(m, n, dtype=torch.float64) @ torch.diag(torch.logspace(0, -1, n, dtype=torch.float64))


@pytest.mark.parametrize(("m", "n", "blocks", "rank"), [(32, 48, 4, 6), (64, 64, 8, 4), (64, 32, 2, 16)])
def test_blast_fit_recovers_a_random_blast_matrix(m: int, n: int, blocks: int, rank: int) -> None:
    weight = BlastLinear(n, m, blocks, rank, dtype=torch.float64).to_dense().detach()
    report = fit(weight, Blast(blocks, rank)).report
    assert report.error <= 1e-8 and report.weight_error <= 1e-8


@pytest.mark.parametrize(("blocks", "rank"), [(4, 3), (4, 12), (2, 10), (1, 5)])
def test_blast_refinement_never_increases_the_error_of_its_start(blocks: int, rank: int) -> None:
    weight = _decaying(32, 48)
    report = fit(weight, Blast(blocks, rank, max_iter=15, tol=0.0)).report
    assert report.error <= report.start_error
    if blocks > 1:
        assert report.iterations == 15 and report.error < 0.99 * report.start_error
    else:  # b = 1 is low-rank: the SVD start is already optimal
        assert report.error == pytest.approx(fit(weight, LowRank(rank)).report.error, rel=1e-9)


def test_blast_start_is_at_least_as_good_as_monarch_of_rank_r_over_b() -> None:
    weight = _decaying(32, 48)
    monarch = fit(weight, Monarch(blocks=4, rank=2)).report.error
    assert fit(weight, Blast(4, 8, max_iter=0)).report.start_error <= monarch + 1e-12


def test_blast_refinement_stops_at_tolerance_or_limit() -> None:
    blocks = cut(_decaying(32, 48), 4, 4)
    limited = refine_blast(blocks, rank=6, max_iter=3, tol=0.0)
    assert (limited.iterations, limited.converged) == (3, False)
    loose = refine_blast(blocks, rank=6, max_iter=200, tol=1e-2)
    assert loose.converged and 1 <= loose.iterations < 200
    assert refine_blast(blocks, rank=6, max_iter=0, tol=0.0).iterations == 0


def test_blast_fit_report_shows_iterations_and_costs() -> None:
    report = fit(_decaying(32, 48), Blast(4, 6, max_iter=5, tol=0.0), torch.zeros(32, dtype=torch.float64)).report
    assert report.structure == "Blast(blocks=4, rank=6, max_iter=5, tol=0.0)"
    assert report.params_after == 6 * (32 + 48 + 16) + 32
    assert report.flops_after == 2 * 6 * (32 + 48 + 16) + 32
    assert "5 iterations from" in str(report) and not report.converged


def test_blast_fit_of_zero_weight_is_zero() -> None:
    result = fit(torch.zeros(8, 8), Blast(2, 2))
    assert result.report.error == 0.0 and result.layer.to_dense().abs().max() == 0
