"""Pinned tests of the structured-linear rule: features within blocks are channels, block counts are frozen."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import fxopt
from fxopt.analysis.analysis import analyze_graph
from fxopt.analysis.cost import B
from fxopt.editor import GraphEditor
from fxopt.structured import (
    BlastLinear,
    BlockDiagonalLinear,
    BTTLinear,
    ChannelLinear,
    LowRank,
    LowRankLinear,
    MonarchLinear,
    StructuredLinear,
)

Make = Callable[[torch.Tensor, torch.Tensor], StructuredLinear]


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(24, 32), nn.Linear(32, 48), nn.Linear(48, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def _with_b(make: Make, x: torch.Tensor) -> fx.GraphModule:
    """The traced MLP with ``b`` replaced by ``make(b.weight, b.bias)`` through the editor."""
    gm = fxopt.trace(MLP(), x)
    GraphEditor(gm).set_submodule("b", make(gm.b.weight, gm.b.bias))
    gm.recompile()
    return gm


LAYERS: dict[str, tuple[Make, dict[str, tuple[int, ...]]]] = {
    # layer, b's parameter shapes after removing half of its output rows within blocks (and of its input columns)
    "lowrank": (lambda w, b: LowRankLinear.from_dense(w, b, rank=6),
                {"u": (24, 6), "v": (6, 16), "bias": (24,)}),
    "blockdiag": (lambda w, b: BlockDiagonalLinear.from_dense(w, b, blocks=4),
                  {"weight": (4, 6, 4), "bias": (24,)}),
    "monarch": (lambda w, b: MonarchLinear.from_dense(w, b, blocks=4, rank=2),
                {"left": (4, 6, 8), "right": (4, 8, 4), "bias": (24,)}),
    "monarch_shuffled": (lambda w, b: MonarchLinear.from_dense(w, b, blocks=4, rank=2, shuffle=True),
                         {"left": (4, 6, 8), "right": (4, 8, 4), "bias": (24,)}),
    "btt": (lambda w, b: BTTLinear.from_dense(w, b, rank=2, m1=4, n0=4),
            {"left": (4, 6, 8), "right": (4, 8, 4), "bias": (24,)}),
    "blast": (lambda w, b: BlastLinear.from_dense(w, b, blocks=4, rank=6),
              {"u": (4, 6, 6), "s": (4, 4, 6), "v": (4, 4, 6), "bias": (24,)}),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_structured_layer_outputs_and_inputs_within_blocks_prune_exactly(rig, name: str) -> None:
    make, shapes = LAYERS[name]
    x = torch.randn(5, 24)
    a = analyze_graph(_with_b(make, x), (x,))
    assert a.barriers == []
    assert all(g.exact for g in a.groups)
    rig.errors(a)  # the zero-invariance oracle: zeroing the producers equals removing the units
    out = next(g for g in a.groups if g.id.startswith("b."))
    into = next(g for g in a.groups if g.id.startswith("a."))
    assert out.size == 48 // (1 if name == "lowrank" else 4)
    assert into.size == 32 // (1 if name == "lowrank" else 4)
    small = rig.prune(a, {out: range(out.size // 2), into: range(into.size // 2)})
    assert {k: tuple(v.shape) for k, v in small.b.state_dict().items()} == shapes
    assert (small.b.in_features, small.b.out_features) == (16, 24)


@pytest.mark.parametrize("name", ["blockdiag", "monarch", "btt", "blast"])
def test_structured_layer_block_counts_are_frozen_with_the_reason(name: str) -> None:
    x = torch.randn(5, 24)
    a = analyze_graph(_with_b(LAYERS[name][0], x), (x,))
    reasons = " ".join(f.reason for f in a.frozen)
    assert "are fixed (" in reasons and "(b)" in reasons
    assert not any(f.id.startswith("b.") and "fixed" not in f.reason for f in a.frozen)


def test_lowrank_rank_is_not_a_channel(rig) -> None:
    x = torch.randn(5, 24)
    a = analyze_graph(_with_b(LAYERS["lowrank"][0], x), (x,))
    members = {m for g in a.groups for m in rig.members(g)}
    assert ("b.u", 1, "p") not in members and ("b.v", 0, "c") not in members
    assert rig.members(next(g for g in a.groups if g.id == "b.u/0")) == {
        ("b.u", 0, "p"), ("b.bias", 0, "p"), ("c.weight", 1, "c")}


def test_channel_linear_prunes_conv_channels_through_dim_1(rig) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 24, 1), nn.Conv2d(24, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(torch.relu(self.b(torch.relu(self.a(x)))))

    x = torch.randn(2, 3, 7, 7)
    gm = fxopt.trace(rig.randomize(Net()), x)
    GraphEditor(gm).set_submodule("b", ChannelLinear.from_conv1x1(gm.b, LowRank(rank=4)))
    gm.recompile()
    a = analyze_graph(gm, (x,))
    assert a.barriers == [] and all(g.exact for g in a.groups)
    rig.errors(a)
    out = rig.group(a, "b.linear.u/0")
    small = rig.prune(a, {out: range(10), rig.group(a, "a.weight/0"): range(6)})
    assert {k: tuple(v.shape) for k, v in small.b.state_dict().items()} == {
        "linear.u": (14, 4), "linear.v": (4, 10), "linear.bias": (14,)}


@pytest.mark.parametrize("name", list(LAYERS))
def test_structured_layer_costs_its_factors_multiply_adds(name: str) -> None:
    x = torch.randn(5, 24)
    gm = _with_b(LAYERS[name][0], x)
    (row,) = [r for r in fxopt.cost(gm, x).rows if r.node == "b"]
    assert (row.kind, row.category) == ("structured_linear", "matmul")
    assert float(row.flops.xreplace({B: 5})) == gm.b.flops(5)  # 2 MACs per token and factor element, plus the bias adds
