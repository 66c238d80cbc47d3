"""Horizontal fusion of sibling linears (Q, K, V projections)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from fxopt.testing import assert_equivalent


class QKV(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 4, bias=False), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q(x)[..., :4] * self.k(x) + self.v(x)


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_fuse_siblings_qkv_becomes_one_linear_and_a_split(passes, frontend: str) -> None:
    model, x = QKV(), torch.randn(2, 3, 8)
    gm, result = passes.run("fuse_siblings", model, x, frontend=frontend)
    assert passes.kinds(gm).count("linear") == 1 and "split" in passes.kinds(gm)
    assert (result.metrics["groups"], result.metrics["fused_linears"]) == (1, 3)
    assert_equivalent(model, gm, (x,))


def test_fuse_siblings_tied_weight_is_left_alone(passes) -> None:
    model = QKV()
    model.k.weight = model.v.weight  # tied: fusing would untie them
    gm, result = passes.run("fuse_siblings", model, torch.randn(2, 8))
    assert passes.kinds(gm).count("linear") == 3 and not result.changed  # only q is left: no group
    assert sum("tied" in s.reason for s in result.skips) == 2


def test_fuse_siblings_linears_on_different_inputs_are_not_fused(passes) -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(y)

    gm, result = passes.run("fuse_siblings", M(), torch.randn(2, 4), torch.randn(2, 4))
    assert passes.kinds(gm) == ["linear", "linear", "add"] and not result.changed
