"""The cost model: symbolic FLOPs and bytes, roofline times, and the text table."""

from __future__ import annotations

import dataclasses

import sympy
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxopt
from fxopt.analysis.cost import B, S, graph_cost
from fxopt.api import cost
from fxopt.targets import get_target


def test_cost_linear_flops_are_symbolic_in_batch() -> None:
    table = graph_cost(fxopt.trace(nn.Sequential(nn.Linear(8, 16), nn.ReLU()), (torch.randn(3, 8),)),
                       (torch.randn(3, 8),))
    assert table.symbolic and table.bindings == {"B": 3}
    assert sympy.expand(table.total_flops() - (2 * 8 * 16 * B + 16 * B + 16 * B)) == 0
    assert table.flops(B=10) == 10 * (2 * 8 * 16 + 32)


def test_cost_conv_flops_follow_the_formula() -> None:
    conv = nn.Conv2d(4, 8, 3, padding=1, groups=2)
    table = graph_cost(fxopt.trace(conv, (torch.randn(1, 4, 6, 6),)), (torch.randn(1, 4, 6, 6),))
    (row,) = table.rows
    assert row.category == "grouped"
    assert row.flops == B * (2 * 8 * 36 * (4 // 2) * 9 + 8 * 36)


def test_cost_attention_is_quadratic_in_sequence() -> None:
    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(50, 16)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            h = self.emb(ids).unsqueeze(1)
            return F.scaled_dot_product_attention(h, h, h)

    ids = torch.randint(0, 50, (2, 12))
    table = graph_cost(fxopt.trace(Attn(), (ids,)), (ids,))
    sdpa = next(r for r in table.rows if r.kind == "sdpa")
    assert sympy.degree(sdpa.flops, S) == 2 and table.bindings == {"B": 2, "S": 12}
    assert table.flops(S=24) > 3.5 * table.flops()


def test_cost_export_graph_is_exact_at_example_and_linear_in_batch() -> None:
    model, x = nn.Sequential(nn.Linear(8, 8)), torch.randn(2, 8)
    table = graph_cost(fxopt.trace(model, (x,), frontend="export"), (x,))
    assert not table.symbolic and table.flops() == 2 * (2 * 64 + 8)
    assert table.flops(B=4) == 2 * table.flops()


def test_cost_roofline_compute_bound_vs_memory_bound() -> None:
    cpu = get_target("cpu")
    big = dataclasses.replace(cpu, memory_bandwidth=1e15, op_overhead_s=0.0, efficiency={})
    table = graph_cost(fxopt.trace(nn.Linear(256, 256), (torch.randn(64, 256),)), (torch.randn(64, 256),))
    assert abs(table.time(big) - table.flops() / big.peak("fp32")) < 1e-12
    slow_memory = dataclasses.replace(big, memory_bandwidth=1.0)
    assert table.time(slow_memory) == table.bytes()


def test_cost_api_table_text_lists_the_expensive_nodes() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    table = cost(model, torch.randn(1, 3, 8, 8), target="h100")
    text = table.to_text(top=2)
    assert "predicted on h100" in text and text.count("\n") == 6
    assert table.target is not None and table.time() > 0


def test_cost_bias_adds_count_only_with_a_bias() -> None:
    x = torch.randn(2, 8)
    for bias in (True, False):
        table = graph_cost(fxopt.trace(nn.Linear(8, 4, bias=bias), (x,)), (x,))
        assert table.flops() == 2 * (2 * 8 * 4 + (4 if bias else 0))
