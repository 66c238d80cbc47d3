"""Channel rules and costs of the torch.ops.fxopt nodes that torch.export leaves where a model calls the ops.

The structured layers still run in plain torch (calling the ops from their forward is not merged yet: the ops'
eager dispatch costs more than they save at small sizes); these tests call the ops from layer subclasses.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxopt
from fxopt.kernels import blast as _blast  # noqa: F401  (registers torch.ops.fxopt.blast)
from fxopt.kernels import blockdiag as _blockdiag  # noqa: F401  (registers torch.ops.fxopt.blockdiag_matmul)
from fxopt.kernels import lowrank as _lowrank  # noqa: F401  (registers torch.ops.fxopt.lowrank)
from fxopt.structured import BlastLinear, BlockDiagonalLinear, LowRankLinear


class _BlockDiagonalOp(BlockDiagonalLinear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._add_bias(torch.ops.fxopt.blockdiag_matmul(x, self.weight, False, False))


class _BlastOp(BlastLinear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._add_bias(torch.ops.fxopt.blast(x, self.u, self.s, self.v))


class _LowRankOp(LowRankLinear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._add_bias(torch.ops.fxopt.lowrank(x, self.u, self.v))


class _Sandwich(nn.Module):
    def __init__(self, middle: nn.Module) -> None:
        super().__init__()
        self.first, self.middle, self.last = nn.Linear(8, 16), middle, nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(torch.relu(self.middle(torch.relu(self.first(x)))))


LAYERS = {
    "blockdiag_matmul": lambda: _BlockDiagonalOp(16, 16, blocks=4),
    "blast": lambda: _BlastOp(16, 16, blocks=4, rank=3),
    "lowrank": lambda: _LowRankOp(16, 16, rank=3),
}


@pytest.mark.parametrize("kind", LAYERS)
def test_kernel_op_computes_what_the_layer_computes(kind):
    layer, x = LAYERS[kind](), torch.randn(3, 16)
    plain = type(layer).__mro__[1].forward(layer, x)
    torch.testing.assert_close(layer(x), plain, rtol=1e-5, atol=1e-5)


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
