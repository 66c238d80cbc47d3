"""Choosing a structure and rank for one layer: rank growth when the data disagree with the whitened curve, BLAST's
rank search, the speed model's view of a forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fxopt.structured import Blast, InputStats, Monarch
from fxopt.structured.choose import Choice, Options, Refusal, Site, choose
from fxopt.structured.fit import error_by_rank, fit
from fxopt.structured.speed import forward_ops


def _site(weight: torch.Tensor, tokens: int = 512) -> Site:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return Site(layer, layer.weight.detach(), None, (tokens, weight.shape[1]))


def test_grid_rank_grows_until_the_output_error_on_the_data_holds() -> None:
    """Block-column whitening ignores the covariance between the two halves of these inputs (one is minus the
    other), so the curve's rank 8 is just over the budget on the data; the rank grows until it holds."""
    w, z = torch.randn(64, 64), torch.randn(512, 32)
    stats = InputStats.of(torch.cat([z, -z], 1))
    curve = error_by_rank(w, Monarch(2, 1), activations=stats)
    budget = float(curve[8]) + 1e-3
    assert fit(w, Monarch(2, 8), activations=stats).report.output_error > budget  # the curve alone would pass it
    choice = choose(_site(w), Options(structure="monarch", max_error=budget, blocks=(2,), speed_gate=False), None,
                    stats)
    assert isinstance(choice, Choice) and choice.candidate.label == "Monarch(blocks=2, rank=10)"
    assert choice.report.output_error <= budget
    capped = choose(_site(w), Options(structure="monarch", max_error=budget, params=0.5, blocks=(2,),
                                      speed_gate=False), None, stats)
    assert isinstance(capped, Refusal) and capped.category == "over budget"
    assert "after fitting; a larger rank breaks the caps or saves nothing" in capped.reason


def test_blast_rank_search_finds_the_smallest_rank_within_the_budget() -> None:
    w = Blast(blocks=4, rank=6).build(64, 64, bias=False).to_dense().detach()
    choice = choose(_site(w), Options(structure="blast", max_error=1e-3, blocks=(4,), speed_gate=False), None)
    assert isinstance(choice, Choice) and choice.layer.rank == 6 and choice.report.weight_error <= 1e-3


def test_forward_ops_sees_the_copies_a_flop_count_misses() -> None:
    layer = Monarch(blocks=4, rank=2).build(64, 64, device="meta")
    ops = forward_ops(layer, (8, 64))
    assert [op.kind for op in ops] == ["bmm", "clone", "bmm", "clone", "add"]
    matmul = sum(float(op.flops) for op in ops if op.category == "matmul")
    assert matmul == 2 * 8 * layer.macs_per_token
    assert [op.kind for op in forward_ops(nn.Linear(64, 64, device="meta"), (8, 64))] == ["addmm"]


def test_choose_slower_at_rank_one_refused_before_any_svd(monkeypatch: pytest.MonkeyPatch) -> None:
    """One token through a 128x128 layer on an H100 is launch-bound: no rank of any ranked structure can win, so no
    error curve is computed."""
    from fxopt.structured import choose as choose_module
    from fxopt.targets import get_target

    def no_svd(*args: object, **kwargs: object) -> None:
        raise AssertionError("an error curve was computed for a structure refused on speed")

    monkeypatch.setattr(choose_module, "error_by_rank", no_svd)
    layer = nn.Linear(128, 128)
    site = Site(layer, layer.weight.detach(), layer.bias.detach(), (1, 128))
    for structure in ("lowrank", "monarch", "btt"):
        refusal = choose(site, Options(structure=structure, blocks=(4,)), get_target("h100"))
        assert isinstance(refusal, Refusal) and refusal.category == "not faster", refusal
        assert "even at rank 1" in refusal.reason and refusal.reason.endswith("on h100")
