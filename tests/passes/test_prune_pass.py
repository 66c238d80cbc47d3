"""The ``prune`` pass: spec round trip, option validation, in-place pruning through the editor, optimize()."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxopt
from fxopt.errors import PassError
from fxopt.passes import PassContext, PassManager, parse_pass
from fxopt.passes.prune import PrunePass
from fxopt.pruning import PruneConfig


class Net(nn.Module):
    """conv-BN-ReLU, conv-BN-ReLU, pooled classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def traced() -> tuple[torch.fx.GraphModule, torch.Tensor]:
    """A traced randomized Net and its input."""
    model = Net().eval()
    with torch.no_grad():
        for b in (model.bn1, model.bn2):
            b.weight.uniform_(0.5, 1.5)
            b.bias.normal_()
            b.running_mean.normal_()
    x = torch.randn(2, 3, 8, 8)
    return fxopt.trace(model, x), x


@pytest.mark.parametrize("spec", [
    "prune(ratio=0.5)",
    "prune(ratio=0.5,round_to=8,ignore=('fc', 're:conv.*'))",
    "prune(ratio=(('conv1', 0.25), ('*', 0.5)),criterion='taylor',reconstruct='ls')",
    "prune(budget=0.3,metric='macs',scope='global',granularity=('channel', 'head'))",
])
def test_prune_pass_spec_round_trips(spec: str) -> None:
    p = parse_pass(spec)
    assert isinstance(p, PrunePass) and parse_pass(str(p)) == p and str(p) == spec


def test_prune_pass_mapping_ratio_becomes_pairs_and_config_matches() -> None:
    p = PrunePass(ratio={"conv1": 0.25, "*": 0.5}, ignore="fc")
    assert p.ratio == (("conv1", 0.25), ("*", 0.5)) and p.ignore == ("fc",)
    assert p.config() == PruneConfig(ratio={"conv1": 0.25, "*": 0.5}, ignore=("fc",))
    pass_fields = {f.name for f in dataclasses.fields(PrunePass)}
    assert pass_fields == {f.name for f in dataclasses.fields(PruneConfig)}


@pytest.mark.parametrize("spec, message", [
    ("prune(ratio=1.5)", "must be in"), ("prune", "give a ratio"), ("prune(ratio=0.5,speed=2)", "no option speed"),
])
def test_prune_pass_invalid_options_raise_pass_error(spec: str, message: str) -> None:
    with pytest.raises(PassError, match=message):
        parse_pass(spec)


def test_prune_pass_prunes_in_place_and_reports(traced) -> None:  # type: ignore[no-untyped-def]
    gm, x = traced
    before = sum(p.numel() for p in gm.parameters())
    run = PassManager([PrunePass(ratio=0.5, ignore=("conv1",))]).run(gm, (x,))
    result = run.results[0]
    assert run.gm is gm and result.changed
    assert gm.conv2.weight.shape == (16, 16, 3, 3) and gm.conv2.out_channels == 16
    assert gm.bn2.num_features == 16 and gm.fc.in_features == 16
    assert gm.conv1.weight.shape == (16, 3, 3, 3)  # ignored
    assert result.metrics["prune_params"] == (before, sum(p.numel() for p in gm.parameters()))
    assert result.metrics["ignored"] == {"conv1": ["conv1.weight/0"]}
    assert [(s.rule, s.node) for s in result.skips] == [("prune:ignored", "conv1.weight/0")]
    assert result.counts()["set_tensor"] == 6  # conv2, bn2 weight/bias/mean/var, fc
    assert any("params" in n for n in result.notes)
    with torch.no_grad():
        assert gm(x).shape == (2, 5)


def test_prune_pass_reads_calibration_from_context(traced) -> None:  # type: ignore[no-untyped-def]
    gm, x = traced
    ctx = PassContext(calibration=[torch.randn(4, 3, 8, 8)])
    run = PassManager("prune(ratio=0.5,criterion='variance',reconstruct='bias')").run(gm, (x,), ctx)
    assert gm.conv2.bias is not None and gm.conv2.bias.shape == (16,)  # bias compensation gave it one
    assert any("reconstruction (bias)" in n for n in run.results[0].notes)


def test_prune_pass_without_calibration_for_data_criterion_raises_pass_error(traced) -> None:  # type: ignore[no-untyped-def]
    gm, x = traced
    with pytest.raises(PassError, match="calibration"):
        PassManager("prune(ratio=0.5,criterion='taylor')").run(gm, (x,))


def test_prune_pass_keeps_tied_weights_tied() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(20, 16)
            self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)
            self.head = nn.Linear(16, 20, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            h = self.emb(ids)
            return self.head(h + self.down(torch.relu(self.up(h))))

    ids = torch.randint(0, 20, (2, 5))
    gm = fxopt.trace(Tied().eval(), ids)
    PassManager("prune(ratio=0.5)").run(gm, (ids,))
    assert gm.head.weight is gm.emb.weight  # the residual width (16 -> 8) and the MLP (32 -> 16) both shrank
    assert gm.emb.weight.shape == (20, 8) and gm.up.weight.shape == (16, 8)


def test_prune_pass_rolls_back_a_failed_group_and_prunes_the_rest(traced) -> None:  # type: ignore[no-untyped-def]
    from fxopt.ops.registry import REGISTRY

    gm, x = traced
    conv1 = gm.conv1.weight

    def broken(view, resizer):  # type: ignore[no-untyped-def]
        if view.node.name == "conv2" and resizer.changed(view.inputs[0].axis(1)):
            resizer.fail(view.node, "deliberately broken rewriter")

    with REGISTRY.scoped():
        REGISTRY.rewriter("conv")(broken)
        result = PassManager([PrunePass(ratio=0.5)]).run(gm, (x,)).results[0]
    assert [(s.rule, s.node) for s in result.skips] == [("prune:failed", "conv1.weight/0")]
    assert gm.conv1.weight is conv1 and gm.bn1.num_features == 16 and gm.conv2.weight.shape == (16, 16, 3, 3)
    assert {e.target for e in result.edits if e.action == "set_tensor"} == {
        "conv2.weight", "bn2.weight", "bn2.bias", "bn2.running_mean", "bn2.running_var", "fc.weight"}
    with torch.no_grad():
        assert gm(x).shape == (2, 5)


def test_optimize_with_prune_ratio_runs_the_pass() -> None:
    from fxopt.api import optimize, report

    model = Net().eval()
    x = torch.randn(1, 3, 8, 8)
    fast = optimize(model, x, target="cpu", prune={"ratio": 0.5, "round_to": 8}, compile=False)
    r = report(fast)
    assert "prune(ratio=0.5,round_to=8)" in r.pipeline
    assert r.after.params < 0.5 * r.before.params
    with torch.no_grad():
        assert fast(x).shape == (1, 5)
