"""Pinned tests of the reduction rules: sums are exact sinks, statistics and softmax are not."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F


def test_sum_over_channels_is_an_exact_sink(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)

        def forward(self, x):
            return torch.relu(self.a(x)).sum(1)

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    (g,) = a.groups
    assert (g.size, g.exact, g.nodes) == (8, True, ("sum_1",))
    assert rig.members(g) == {("a.weight", 0, "p"), ("a.bias", 0, "p")}
    assert rig.errors(a)[g.id] < 1e-6
    small = rig.prune(a, {g: [0, 1, 2, 3]})
    assert rig.shapes(small)["a.weight"] == (4, 3, 1, 1)


@pytest.mark.parametrize("op", ["mean", "amax", "var"])
def test_statistics_over_channels_are_inexact_sinks(rig, op):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)

        def forward(self, x):
            return getattr(torch, op)(self.a(x), 1)

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    (g,) = a.groups
    assert not g.exact
    assert g.reason == f"{op} takes the {op} over this dim: removing channels changes the result"
    assert rig.errors(a)[g.id] > 1e-3


def test_mean_over_space_keeps_channels_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.fc = nn.Conv2d(3, 8, 1), nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.a(x)).mean((2, 3)))

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    (g,) = a.groups
    assert g.exact
    assert rig.members(g) == {("a.weight", 0, "p"), ("a.bias", 0, "p"), ("fc.weight", 1, "c")}
    rig.errors(a)


def test_softmax_over_features_is_an_inexact_sink(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(self.a(x).softmax(-1))

    a = rig.analyze(Net(), torch.randn(2, 3))
    (g,) = a.groups
    assert (g.exact, g.reason) == (False, "softmax normalizes along this dim")
    assert rig.errors(a)[g.id] > 1e-3
    small = rig.prune(a, {g: [0]})
    assert rig.shapes(small)["b.weight"] == (2, 7)


def test_softmax_over_tokens_keeps_features_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)).softmax(1) * torch.relu(self.a(x)))

    a = rig.analyze(Net(), torch.randn(2, 5, 3))
    (g,) = a.groups
    assert g.exact
    assert rig.errors(a)[g.id] < 1e-6


def test_cumsum_over_features_is_inexact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(self.a(x).cumsum(-1))

    a = rig.analyze(Net(), torch.randn(2, 3))
    (g,) = a.groups
    assert not g.exact
    assert rig.errors(a)[g.id] > 1e-3


def test_topk_over_channels_freezes_them(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 8)

        def forward(self, x):
            return torch.topk(self.a(x), 2, dim=-1).values

    a = rig.analyze(Net(), torch.randn(2, 3))
    assert a.groups == []
    assert rig.frozen(a, "a.weight/0").reason == "topk reorders this dim"


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("f", [
    lambda t: F.normalize(t, dim=-1),
    lambda t: F.normalize(t, p=1.0, dim=-1),
    lambda t: t * t.norm(dim=-1, keepdim=True),
], ids=["normalize_p2", "normalize_p1", "times_norm"])
def test_p_norms_over_features_ignore_zero_channels_exact(rig, frontend, f):
    a = rig.analyze(rig.between_linears(f), torch.randn(3, 4), frontend=frontend)
    (g,) = a.groups
    assert g.exact
    assert rig.errors(a)[g.id] < 1e-6
    small = rig.prune(a, {g: [0, 5]})
    assert rig.shapes(small)["a.weight"] == (6, 4)


def test_negative_order_normalize_is_an_inexact_sink(rig):
    a = rig.analyze(rig.between_linears(lambda t: F.normalize(t, p=-1.0, dim=-1)), torch.randn(3, 4))
    (g,) = a.groups
    assert not g.exact and g.reason.endswith("removing channels changes the norm")


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_max_of_two_tensors_is_elementwise_not_a_reduction(rig, frontend):
    a = rig.analyze(rig.between_linears(lambda t: torch.max(t, 0.5 * t)), torch.randn(3, 4),
                    frontend=frontend)
    assert a.barriers == []
    (g,) = a.groups
    assert g.exact  # max(0, 0) == 0
    assert rig.errors(a)[g.id] < 1e-6
