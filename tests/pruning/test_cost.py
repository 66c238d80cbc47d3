"""The analytic cost model against measured parameters and torch's FLOP counter."""

from __future__ import annotations

import pytest
import torch
import torchvision

import fxopt
from fxopt.pruning.cost import CostModel, LatencyModel, count_macs


def test_cost_model_matches_pruned_resnet_params_and_flop_counter() -> None:
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 32, 32)
    a = fxopt.analyze(model, x)
    cm = CostModel(a)
    assert cm.evaluate().params == sum(p.numel() for p in model.parameters())
    assert cm.evaluate().macs == pytest.approx(count_macs(model, (x,)), rel=1e-6)
    plan = {g: list(range(g.size // 3)) for g in a.groups}
    small = fxopt.prune_groups(a, plan)
    predicted = cm.evaluate(cm.kept_after(plan))
    assert predicted.params == sum(p.numel() for p in small.parameters())
    assert predicted.macs == pytest.approx(count_macs(small, (x,)), rel=1e-6)


def test_cost_model_counts_attention_macs_like_the_flop_counter() -> None:
    model = torchvision.models.VisionTransformer(16, 8, 1, 4, 32, 64).eval()
    x = torch.randn(1, 3, 16, 16)
    a = fxopt.analyze(model, x)
    assert CostModel(a).evaluate().macs == pytest.approx(count_macs(a.gm, (x,)), rel=0.02)


def test_latency_model_penalizes_misaligned_channels(mlp) -> None:  # type: ignore[no-untyped-def]
    model, x = mlp
    a = fxopt.analyze(model, x)
    g = next(g for g in a.groups if g.id.startswith("fc1"))
    cm = CostModel(a, LatencyModel(alignment=8, misaligned_penalty=0.5))
    aligned = cm.evaluate(cm.kept_after({g: 8})).latency   # 32 -> 24 channels
    odd = cm.evaluate(cm.kept_after({g: 7})).latency       # 32 -> 25 channels: fewer, but misaligned
    assert odd > aligned


def test_latency_model_reads_target_fields() -> None:
    from fxopt.targets.registry import get_target

    lm = LatencyModel.from_target(get_target("cpu"))
    assert lm.peak_flops > 0 and lm.bandwidth > 0 and lm.alignment >= 1
    assert LatencyModel.from_target(None) == LatencyModel()


def test_cost_model_counts_an_attention_leaf_like_its_decomposition() -> None:
    class SelfAttention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = torch.nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mha(x, x, x, need_weights=False)[0]

    model, x = SelfAttention().eval(), torch.randn(2, 12, 16)
    leaf = fxopt.analyze(model, x, frontend="fx")
    assert [b.node.name for b in leaf.barriers] == ["mha"]
    decomposed = fxopt.analyze(model, x, frontend="export")
    assert CostModel(leaf).evaluate().macs == CostModel(decomposed).evaluate().macs
