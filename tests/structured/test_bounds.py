"""BLAST's singular-value error bound: it never exceeds a fit's error, and it spares the chooser hopeless fits."""

from __future__ import annotations

import pytest
import torch

from fxopt.structured import Blast, InputStats, Monarch, error_by_rank, fit
from fxopt.structured import choose as choose_module
from fxopt.structured.bounds import blast_error_floor
from fxopt.structured.choose import Options, Refusal, Site, choose


def _blast_like(m: int, n: int, blocks: int, rank: int) -> torch.Tensor:
    """A BLAST matrix of the given rank and unit norm plus noise of norm 0.01."""
    dense = Blast(blocks=blocks, rank=rank).build(m, n, bias=False).to_dense().detach()
    noise = torch.randn(m, n)
    return dense / dense.norm() + 0.01 * noise / noise.norm()


@pytest.mark.parametrize("calibrated", [False, True], ids=["weights", "outputs"])
def test_blast_error_floor_never_exceeds_a_fit(calibrated: bool) -> None:
    weight = _blast_like(32, 48, 4, 6)
    stats = InputStats.of(torch.randn(200, 48) @ torch.randn(48, 48)) if calibrated else None
    floor = blast_error_floor(weight, 4, stats)
    assert floor.shape == (4 * 8 + 1,) and float(floor[0]) == pytest.approx(1.0) and float(floor[-1]) == 0.0
    assert bool((floor[1:] <= floor[:-1] + 1e-12).all())
    for rank in (1, 3, 6, 10):
        report = fit(weight, Blast(blocks=4, rank=rank), activations=stats).report
        measured = report.output_error if calibrated else report.weight_error
        assert measured is not None and float(floor[rank]) <= measured + 1e-6, (rank, float(floor[rank]), measured)


def test_blast_error_floor_is_tight_for_one_block() -> None:
    """With one block BLAST is low-rank, and the bound is the truncated SVD's error."""
    weight = torch.randn(20, 30)
    s = torch.linalg.svdvals(weight.double())
    floor = blast_error_floor(weight, 1)
    assert float(floor[5]) == pytest.approx(float(s[5:].norm() / s.norm()), rel=1e-6)


def test_choose_blast_out_of_reach_refused_without_fitting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A random 128x128 weight has a flat spectrum: no BLAST with a quarter of its parameters gets within 10%; no
    fit is tried."""
    layer = torch.nn.Linear(128, 128)
    fits: list[object] = []
    real_fit = choose_module.fit
    monkeypatch.setattr(choose_module, "fit", lambda *a, **k: fits.append(a[1]) or real_fit(*a, **k))
    site = Site(layer, layer.weight.detach(), layer.bias.detach(), (16, 128))
    options = Options(structure="blast", max_error=0.1, params=0.25, blocks=(2, 4), speed_gate=False)
    refusal = choose(site, options, None)
    assert isinstance(refusal, Refusal) and refusal.category == "over budget"
    assert "singular-value bound, no fit" in refusal.reason
    assert fits == []


def test_choose_blast_search_starts_at_the_bound() -> None:
    """Near a rank-6 BLAST matrix the search finds rank 6 or less, and every rank below it fails the budget."""
    weight = _blast_like(64, 64, 4, 6)
    layer = torch.nn.Linear(64, 64)
    site = Site(layer, weight, None, (16, 64))
    options = Options(structure="blast", max_error=0.05, blocks=(4,), speed_gate=False)
    choice = choose(site, options, None)
    assert not isinstance(choice, Refusal)
    rank = choice.candidate.structure.rank  # type: ignore[attr-defined]
    assert 1 <= rank <= 6 and choice.report.weight_error <= 0.05
    below = fit(weight, Blast(blocks=4, rank=rank - 1, max_iter=choose_module.SEARCH_ITERATIONS)).report
    assert rank == 1 or below.weight_error > 0.05


def test_blast_error_floor_with_the_grid_curve_is_at_least_the_monarch_error() -> None:
    weight = torch.randn(32, 48)
    grid = error_by_rank(weight, Monarch(blocks=4, rank=1))
    floor = blast_error_floor(weight, 4, grid_errors=grid)
    assert bool((floor[: len(grid)] >= grid - 1e-12).all())
    for rank in (2, 5):
        assert float(floor[rank]) <= fit(weight, Blast(blocks=4, rank=rank)).report.weight_error + 1e-6
