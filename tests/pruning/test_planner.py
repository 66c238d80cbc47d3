"""Planning: ratios (uniform, global, per module), budgets, floors, alignment, ignores, eligibility."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import fxopt
from fxopt.pruning import PruneConfig, prune
from fxopt.pruning.plan_cost import CostModel
from fxopt.pruning.planner import alignment_step, round_kept


def _widths(gm: torch.nn.Module) -> dict[str, int]:
    return {n: p.shape[0] for n, p in gm.named_parameters() if n.endswith("weight") and p.ndim > 1}


class Wide(nn.Module):
    """Three independent groups of 64, 24 and 10 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.head = nn.Linear(8, 64), nn.Linear(64, 24), nn.Linear(24, 10), nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x)))))))


def test_uniform_ratio_keeps_floor_of_each_group_like_torch_pruning() -> None:
    small, report = prune(Wide().eval(), torch.randn(2, 8), ratio=0.3)
    assert _widths(small) == {"a.weight": 44, "b.weight": 16, "c.weight": 7, "head.weight": 3}
    assert {d.status for d in report.decisions} == {"pruned"}


class GroupedBlock(nn.Module):
    """1x1 conv to 4 groups x 8 channels, a grouped 3x3 conv, 1x1 conv back (a ResNeXt/RegNet bottleneck)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 32, 1)
        self.b = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.c = nn.Conv2d(32, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_grouped_conv_ratio_removes_half_the_channels_not_three_quarters() -> None:
    analysis = fxopt.analyze(GroupedBlock().eval(), torch.randn(1, 3, 8, 8))
    factors = sorted((g.size, g.width) for g in analysis.groups if g.granularity == "block")
    assert factors == [(4, 8), (8, 4), (8, 4)]  # a's groups x width, a's width, b's width
    small, report = prune(analysis, ratio=0.5)
    assert small.get_parameter("a.weight").shape[0] == 16 and small.get_parameter("b.weight").shape[0] == 16
    assert small.get_submodule("b").groups == 4  # the width inside each group is halved, the group count kept
    (shadowed,) = [d for d in report.decisions if d.status == "factor"]
    assert shadowed.size == 4 and "is pruned instead" in shadowed.reason


def test_round_to_keeps_channel_counts_multiple_of_alignment() -> None:
    small, report = prune(Wide().eval(), torch.randn(2, 8), ratio=0.3, round_to=8)
    widths = _widths(small)
    assert widths["a.weight"] == 40 and widths["b.weight"] == 16
    assert widths["c.weight"] == 8  # 10 channels: kept 8 (the smallest multiple), not 7
    assert report.round_to == 8


def test_round_kept_and_alignment_step_rules() -> None:
    class G:
        size, width, granularity = 12, 1, "channel"

    assert alignment_step(G(), 8) == 8  # type: ignore[arg-type]
    G.width, G.granularity = 48, "head"
    assert alignment_step(G(), 8) == 1  # type: ignore[arg-type]  # a head of 48 channels is aligned already
    G.granularity = "head_dim"
    assert alignment_step(G(), 8) == 8  # type: ignore[arg-type]
    assert round_kept(G(), 5.9, 1, 1) == 5  # type: ignore[arg-type]
    assert round_kept(G(), 0.2, 1, 2) == 2  # type: ignore[arg-type]
    assert round_kept(G(), 13, 1, 1) == 12  # type: ignore[arg-type]


def test_global_scope_removes_ratio_of_all_channels_with_floor() -> None:
    model = Wide().eval()
    with torch.no_grad():
        model.a.weight[:60] *= 1e-3  # 60 of a's 64 channels are nearly dead: global ranking takes them first
        model.a.bias[:60] *= 1e-3
        model.b.weight[:, :60] *= 1e-3
    small, report = prune(model, torch.randn(2, 8), scope="global", ratio=0.5, floor=0.25)
    widths = _widths(small)
    assert widths["a.weight"] == 16  # the floor (25% of 64) stops the collapse of layer a
    removed = sum(d.removed for d in report.decisions)
    assert removed == pytest.approx(0.5 * (64 + 24 + 10), abs=1)


def test_ratio_mapping_by_module_regex_and_default() -> None:
    small, _ = prune(Wide().eval(), torch.randn(2, 8), ratio={"a": 0.5, "re:[bc]": 0.25})
    assert _widths(small)["a.weight"] == 32 and _widths(small)["b.weight"] == 18
    small, _ = prune(Wide().eval(), torch.randn(2, 8), ratio={"b": 0.5})
    assert _widths(small)["a.weight"] == 64 and _widths(small)["b.weight"] == 12


def test_ignore_by_name_regex_and_type_reports_frozen_groups(convnet) -> None:  # type: ignore[no-untyped-def]
    model, x = convnet
    _, report = prune(model, x, ratio=0.5, ignore=("conv1", "re:stem"))
    assert report.ignored == {"conv1": ("conv1.weight/0",), "re:stem": ("stem.weight/0",)}
    assert "ignore 'conv1' froze 1 groups" in report.to_text()
    _, report = prune(model, x, ratio=0.5, ignore=("BatchNorm2d",))
    assert len(report.ignored["BatchNorm2d"]) == 2 and not report.pruned
    _, report = prune(model, x, ratio=0.5, ignore=(nn.Conv2d,))
    assert set(report.ignored["Conv2d"]) == {"conv1.weight/0", "stem.weight/0"}


class Normed(nn.Module):
    """A LayerNorm'd hidden dim (approximate group) and an MLP hidden dim (exact)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.ln, self.up, self.down = nn.Linear(6, 16), nn.LayerNorm(16), nn.Linear(16, 32), nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(self.ln(self.inp(x)))))


def test_approximate_groups_skipped_by_default_and_pruned_on_opt_in() -> None:
    model, x = Normed().eval(), torch.randn(3, 6)
    _, report = prune(model, x, ratio=0.5)
    status = {d.group: d.status for d in report.decisions}
    assert status == {"inp.weight/0": "approximate", "up.weight/0": "pruned"}
    assert "approximate=True" in next(d.reason for d in report.decisions if d.status == "approximate")
    small, report = prune(model, x, ratio=0.5, approximate=True)
    assert _widths(small)["inp.weight"] == 8 and len(report.pruned) == 2


def test_granularity_filter_reports_skipped_kinds(mlp) -> None:  # type: ignore[no-untyped-def]
    model, x = mlp
    _, report = prune(model, x, ratio=0.5, granularity=("head",))
    assert {d.status for d in report.decisions} == {"granularity"}


@pytest.mark.parametrize("metric", ["params", "macs", "latency"])
@pytest.mark.parametrize("scope", ["uniform", "global"])
def test_budget_is_met_and_close(convnet, metric, scope) -> None:  # type: ignore[no-untyped-def]
    model, x = convnet
    budget = 0.8 if metric == "latency" else 0.5  # a tiny model's predicted latency is mostly per-op overhead
    small, report = prune(model, x, budget=budget, metric=metric, scope=scope)
    assert report.budget_achieved is not None and budget - 0.15 < report.budget_achieved <= budget + 1e-9
    if metric == "params":
        assert report.params_after <= 0.5 * report.params_before
    a = fxopt.analyze(small, x)
    assert CostModel(a).evaluate().params == sum(p.numel() for p in small.parameters())


def test_budget_unreachable_warns_and_stops_at_floor(mlp, caplog) -> None:  # type: ignore[no-untyped-def]
    model, x = mlp
    with caplog.at_level(logging.WARNING, logger="fxopt.pruning.planner"):
        _, report = prune(model, x, budget=0.01, metric="params", floor=0.5)
    assert "not reachable" in caplog.text
    assert all(d.kept >= d.size // 2 for d in report.decisions)


@pytest.mark.parametrize("options, message", [
    ({"ratio": 1.0}, "must be in"), ({}, "give a ratio"), ({"ratio": 0.5, "budget": 0.5}, "not both"),
    ({"ratio": 0.5, "scope": "layer"}, "unknown scope"), ({"ratio": 0.5, "granularity": ("chan",)}, "granularity"),
    ({"ratio": 0.5, "reconstruct": "svd"}, "reconstruct"), ({"budget": 0.5, "metric": "energy"}, "metric"),
])
def test_config_invalid_options_raise(options, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        PruneConfig(**options)
