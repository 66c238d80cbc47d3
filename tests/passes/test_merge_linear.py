"""Linear -> linear merging, and the cases it must leave alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from fxopt.testing import assert_equivalent


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_merge_linear_chain_becomes_one_linear(passes, frontend: str) -> None:
    model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 4), nn.Linear(4, 3, bias=False))
    x = torch.randn(5, 6)
    gm, result = passes.run("merge_linear", model, x, frontend=frontend)
    assert passes.kinds(gm) == ["linear"] and result.metrics["fired"] == 2
    assert sum(p.numel() for p in gm.parameters()) == 6 * 3 + 3
    assert_equivalent(model, gm, (x,))


def test_merge_linear_bottleneck_is_kept_with_reason(passes) -> None:
    model = nn.Sequential(nn.Linear(64, 4), nn.Linear(4, 64))
    gm, result = passes.run("merge_linear", model, torch.randn(2, 64))
    assert passes.kinds(gm) == ["linear", "linear"] and not result.changed
    assert "larger than the pair" in result.skips[0].reason


def test_merge_linear_with_activation_between_does_not_match(passes) -> None:
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6))
    gm, result = passes.run("merge_linear", model, torch.randn(2, 6))
    assert passes.kinds(gm) == ["linear", "unary_zero", "linear"]
    assert not result.changed and not result.skips


def test_merge_linear_first_output_read_twice_is_kept(passes) -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            return self.b(h) + h

    gm, result = passes.run("merge_linear", M(), torch.randn(2, 6))
    assert passes.kinds(gm) == ["linear", "linear", "add"] and "2 users" in result.skips[0].reason
