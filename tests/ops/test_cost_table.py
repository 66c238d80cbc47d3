"""The op registry's cost table: a kind registered once is counted by fxopt.cost and by the pruning cost model."""

from __future__ import annotations

import sympy
import torch
import torch.fx
import torch.nn as nn

import fxopt
from fxopt.analysis.cost import B
from fxopt.ops import REGISTRY, Facts, OpCost, OpRegistry, OpView, Sizes
from fxopt.ops.cost import op_cost, out_numel
from fxopt.ops.forms import function_form
from fxopt.pruning.cost import CostModel, count_macs


@torch.fx.wrap
def channel_mix(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` as one opaque call (a custom kernel in real code)."""
    return x @ weight.t()


class Mixer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.mix = nn.Parameter(torch.randn(6, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_mix(torch.relu(self.fc(x)), self.mix)


def _register_rule(registry: OpRegistry) -> None:
    registry.register_ops("channel_mix", [channel_mix], function_form(["x", "weight"], ["x"], ["weight"]))

    @registry.rule("channel_mix")
    def channel_mix_rule(view: OpView, facts: Facts) -> None:
        """channel_mix: x's last dim is summed against the weight's columns; outputs are the weight's rows."""
        x, w, out = view.inputs[0], view.params["weight"], view.out
        assert x is not None and w is not None
        for d in range(x.ndim - 1):
            facts.transfer(out.axis(d), x.axis(d))
        facts.same(x.axis(-1), w.axis(1))
        facts.sink(x.axis(-1), True, "channel_mix sums over its input features")
        facts.same(out.axis(-1), w.axis(0))
        facts.zero(out.axis(-1), "all", [w.axis(0)])


def _register_cost(registry: OpRegistry) -> None:
    @registry.cost("channel_mix")
    def channel_mix_cost(view: OpView, sizes: Sizes) -> OpCost:
        """channel_mix: a MAC per output element and input feature."""
        w = view.params["weight"]
        assert w is not None
        macs = out_numel(view, sizes) * sizes.size(w, 1)
        return op_cost(view, sizes, "matmul", 2 * macs, macs, sizes.shape(w))


def test_cost_of_a_registered_kind_counts_in_fxopt_cost_and_pruning_model() -> None:
    model, x = Mixer().eval(), torch.randn(3, 4)
    with REGISTRY.scoped() as registry:
        _register_rule(registry)
        _register_cost(registry)
        table = fxopt.cost(model, x)
        row = next(r for r in table.rows if r.kind == "channel_mix")
        assert row.category == "matmul" and sympy.expand(row.flops - 2 * B * 6 * 8) == 0
        assert sympy.expand(row.bytes - 4 * (B * 8 + 6 * 8 + B * 6)) == 0

        analysis = fxopt.analyze(model, x)
        assert not analysis.barriers
        hidden = next(g for g in analysis.groups if g.id.startswith("fc."))
        cm = CostModel(analysis)
        assert cm.evaluate().macs == 3 * 4 * 8 + 3 * 8 * 6
        assert cm.evaluate(cm.kept_after({hidden: 2})).macs == 3 * 4 * 6 + 3 * 6 * 6


def test_cost_of_a_kind_without_one_is_a_flop_per_output_element_plus_traffic() -> None:
    model, x = Mixer().eval(), torch.randn(3, 4)
    with REGISTRY.scoped() as registry:
        _register_rule(registry)
        row = next(r for r in fxopt.cost(model, x).rows if r.node == "channel_mix")
        assert row.kind == "channel_mix" and row.category == "other" and row.flops == 6 * B
        assert sympy.expand(row.bytes - 4 * (B * 8 + 6 * 8 + B * 6)) == 0
        cm = CostModel(fxopt.analyze(model, x))
        assert cm.evaluate().macs == 3 * 4 * 8  # only the linear's


def test_cost_unknown_op_costs_the_default() -> None:
    table = fxopt.cost(Mixer().eval(), torch.randn(3, 4))
    row = next(r for r in table.rows if r.node == "channel_mix")
    assert row.kind == "unknown" and row.category == "other" and row.flops == 6 * B


def test_cost_registrations_are_dropped_with_the_scope() -> None:
    with REGISTRY.scoped() as registry:
        _register_cost(registry)
        assert "channel_mix" in registry.costs
    assert "channel_mix" not in REGISTRY.costs


def test_cost_rnn_macs_match_the_flop_counter_before_and_after_pruning() -> None:
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(8, 16, num_layers=2, batch_first=True)
            self.head = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.gru(x)[0])

    model, x = Encoder().eval(), torch.randn(2, 5, 8)
    analysis = fxopt.analyze(model, x)
    hidden = next(g for g in analysis.groups if g.id.startswith("gru."))
    cm = CostModel(analysis)
    assert cm.evaluate().macs == count_macs(model, (x,))
    small = fxopt.prune_groups(analysis, {hidden: range(4)})
    assert cm.evaluate(cm.kept_after({hidden: 4})).macs == count_macs(small, (x,))
    row = next(r for r in fxopt.cost(model, x).rows if r.kind == "rnn")
    assert row.category == "matmul"
