"""Unknown ops freeze what they touch and are reported; a scoped registry teaches fxopt a new op for one test."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import fxopt
from fxopt.ops import REGISTRY, Facts, OpView
from fxopt.ops.view import output_refs, ref_of


@torch.library.custom_op("fxopt_tests::flip_features", mutates_args=())
def flip_features(x: torch.Tensor) -> torch.Tensor:
    """Reverses the last dim: a custom op fxopt has no rule for."""
    return x.flip(-1).contiguous()


@flip_features.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("fxopt_tests::double", mutates_args=())
def double(x: torch.Tensor) -> torch.Tensor:
    """2 * x: elementwise and zero-preserving, but opaque until a rule is registered."""
    return x * 2


@double.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def opaque_relu(t: torch.Tensor) -> torch.Tensor:
    """A function symbolic tracing keeps as one opaque call."""
    return torch.relu(t)


torch.fx.wrap("opaque_relu")


class Through(nn.Module):
    """``b(op(a(x)))`` for an op given at construction."""

    def __init__(self, op) -> None:
        super().__init__()
        self.a, self.b, self.op = nn.Linear(4, 8), nn.Linear(8, 2), op

    def forward(self, x):
        return self.b(self.op(self.a(x)))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_custom_op_without_rule_is_a_barrier_that_freezes_its_dims(rig, frontend):
    a = rig.analyze(Through(flip_features), torch.randn(3, 4), frontend=frontend)
    assert a.groups == []
    (barrier,) = a.barriers
    assert barrier.op == "unknown"
    assert barrier.reason == "no channel rule for call_function flip_features.default"
    assert "fxopt.ops.REGISTRY" in barrier.hint
    frozen = rig.frozen(a, "a.weight/0")
    assert (frozen.reason, frozen.node) == (barrier.reason, barrier.node.name)
    assert f"barrier {barrier.node.name} (unknown)" in a.summary()
    with pytest.raises(fxopt.PruneError, match=f"group a.weight/0 is frozen at {barrier.node.name}: no channel rule"):
        fxopt.prune_groups(a, {frozen: [0]})
    with pytest.raises(fxopt.AnalysisError, match=f"group a.weight/0 is frozen at {barrier.node.name}: no channel"):
        a.group("a.weight/0")


def test_analysis_group_of_unknown_id_raises_analysis_error_naming_valid_ids(rig):
    a = rig.analyze(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(3, 4))
    assert a.group(a.groups[0].id) is a.groups[0]
    with pytest.raises(fxopt.AnalysisError, match=r"no group 'nope'; groups include \['0.weight/0'\]"):
        a.group("nope")


def test_fft_over_the_channel_dim_freezes_it_and_is_listed(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(torch.fft.fft(torch.relu(self.a(x)), dim=-1).real)

    a = rig.analyze(Net(), torch.randn(3, 4), frontend="export")
    assert a.groups == []
    assert [b.node.name for b in a.barriers] == ["fft_fft", "real"]
    assert rig.frozen(a, "a.weight/0").node == "fft_fft"


def test_fft_over_time_leaves_the_channels_of_other_layers_prunable(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.c(torch.relu(self.b(torch.fft.fft(self.a(x), dim=-1).real)))

    a = rig.analyze(Net(), torch.randn(3, 4), frontend="export")
    (g,) = a.groups  # b's outputs do not pass through the barrier
    assert (g.id, g.exact) == ("b.weight/0", True)
    rig.errors(a)


def _elementwise_view(node, gm, kind):
    x = node.args[0]
    return OpView(node, kind, (ref_of(x),), {}, {}, output_refs(node))


def _elementwise_zero_rule(view: OpView, facts: Facts) -> None:
    (x,) = view.inputs
    for a, b in zip(x.axes(), view.out.axes()):
        facts.transfer(b, a)


def test_scoped_registry_rule_makes_a_custom_op_transparent_only_inside_the_scope(rig):
    model, x = rig.randomize(Through(double)), torch.randn(3, 4)
    before = fxopt.analyze(model, x, frontend="fx")
    assert [b.reason for b in before.barriers] == ["no channel rule for call_function double.default"]
    with REGISTRY.scoped() as registry:
        registry.register_ops("test_double", [torch.ops.fxopt_tests.double], _elementwise_view)
        registry.rule("test_double")(_elementwise_zero_rule)
        inside = fxopt.analyze(model, x, frontend="fx")
        assert inside.barriers == []
        (g,) = inside.groups
        assert (g.id, g.exact) == ("a.weight/0", True)
        assert rig.members(g) == {("a.weight", 0, "p"), ("a.bias", 0, "p"), ("b.weight", 1, "c")}
        rig.errors(inside)
        small = rig.prune(inside, {g: [0, 1, 2]})
        assert rig.shapes(small)["b.weight"] == (2, 5)
    after = fxopt.analyze(model, x, frontend="fx")
    assert len(after.barriers) == 1 and after.groups == []
    assert "test_double" not in REGISTRY.rules


def test_rule_that_raises_becomes_a_barrier_naming_the_rule(rig):
    def broken(view: OpView, facts: Facts) -> None:
        raise ValueError("cannot read these arguments")

    with REGISTRY.scoped() as registry:
        registry.register_ops("test_broken", [torch.ops.fxopt_tests.double], _elementwise_view)
        registry.rule("test_broken")(broken)
        a = rig.analyze(Through(double), torch.randn(3, 4), frontend="fx")
    (barrier,) = a.barriers
    assert barrier.reason == "rule 'test_broken' could not handle double_default: cannot read these arguments"
    assert a.groups == []


def test_auto_frontend_prefers_export_when_fx_leaves_more_barriers(rig):
    a = rig.analyze(Through(lambda t: opaque_relu(t)), torch.randn(3, 4))
    info = a.gm.meta["fxopt"]["trace"]
    assert (info.frontend, info.fallback_reason) == ("export", "fx graph had 1 nodes without rules, export 0")
    assert [g.id for g in a.groups] == ["a.weight/0"]


class SquareWithIdentityGrad(torch.autograd.Function):
    """x * x forward, straight-through backward."""

    @staticmethod
    def forward(ctx, x):
        return x * x

    @staticmethod
    def backward(ctx, grad):
        return grad


def test_custom_autograd_function_is_a_barrier_that_freezes_its_dims(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(SquareWithIdentityGrad.apply(self.a(x)))

    a = rig.analyze(Net(), torch.randn(3, 4), frontend="fx")
    (barrier,) = a.barriers
    assert a.groups == []
    assert rig.frozen(a, "a.weight/0").node == barrier.node.name
    assert barrier.reason.startswith("no channel rule for custom autograd.Function ")
    assert barrier.reason.endswith(":SquareWithIdentityGrad")
