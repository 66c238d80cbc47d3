"""Channel rules and costs of the torch.ops.fxopt nodes that torch.export leaves for the structured layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxopt
from fxopt.structured import (
    BlastLinear,
    BlockDiagonalLinear,
    LowRankLinear,
    MonarchLinear,
)


class _Sandwich(nn.Module):
    def __init__(self, middle: nn.Module) -> None:
        super().__init__()
        self.first, self.middle, self.last = nn.Linear(8, 16), middle, nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(torch.relu(self.middle(torch.relu(self.first(x)))))


LAYERS = {
    "blockdiag_matmul": lambda: BlockDiagonalLinear(16, 16, blocks=4),
    "monarch": lambda: MonarchLinear(16, 16, blocks=4, rank=2),
    "blast": lambda: BlastLinear(16, 16, blocks=4, rank=3),
    "lowrank": lambda: LowRankLinear(16, 16, rank=3),
}


@pytest.mark.parametrize("kind", LAYERS)
def test_kernel_op_under_export_freezes_features_not_the_node(kind):
    model = _Sandwich(LAYERS[kind]()).eval()
    analysis = fxopt.analyze(model, torch.randn(2, 8), frontend="export")
    assert analysis.barriers == []
    frozen = " ".join(str(g) for g in analysis.frozen)
    assert f"structured matmul ({kind})" in frozen


@pytest.mark.parametrize("kind", LAYERS)
def test_kernel_op_cost_counts_the_layers_macs(kind):
    layer = LAYERS[kind]()
    model = _Sandwich(layer).eval()
    x = torch.randn(2, 8)
    rows = [r for r in fxopt.cost(fxopt.trace(model, x, frontend="export"), x).rows if r.kind == kind]
    assert len(rows) == 1 and rows[0].category == "matmul"
    flops = rows[0].flops.subs({s: 2 for s in rows[0].flops.free_symbols})  # the batch symbol at the example's 2
    assert int(flops) == 2 * 2 * layer.macs_per_token
