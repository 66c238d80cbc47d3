"""Pinned tests of the elementwise rules: unary maps, binary ops with broadcasting, where/masked_fill, prelu."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F


def test_mul_by_broadcast_scale_adds_the_scale_as_producer_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.scale, self.b = nn.Conv2d(3, 8, 1), nn.Parameter(torch.randn(8, 1, 1)), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.b(self.a(x) * self.scale)

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    (g,) = a.groups
    assert g.exact
    assert rig.members(g) == {("a.weight", 0, "p"), ("a.bias", 0, "p"), ("scale", 0, "p"), ("b.weight", 1, "c")}
    rig.errors(a)
    small = rig.prune(a, {g: [0, 1]})
    assert rig.shapes(small)["scale"] == (6, 1, 1)


def test_add_of_a_constant_makes_the_channel_nonzero_approximate(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.shift, self.b = nn.Conv2d(3, 8, 1), nn.Parameter(torch.randn(8, 1, 1)), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.b(self.a(x) * self.shift + 1.0)

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    (g,) = a.groups
    assert (g.exact, g.reason) == (False, "channel is not zero after add (read by b)")
    assert rig.errors(a)[g.id] > 1e-3
    small = rig.prune(a, {g: [0, 1]})
    assert rig.shapes(small)["shift"] == (6, 1, 1)


def test_add_broadcast_over_batch_and_spatial_keeps_channel_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.c, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            pooled = self.c(x).mean((2, 3), keepdim=True)
            return self.b(self.a(x) + pooled)

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    (g,) = a.groups
    assert g.exact
    assert rig.members(g) == {("a.weight", 0, "p"), ("a.bias", 0, "p"), ("c.weight", 0, "p"), ("c.bias", 0, "p"),
                              ("b.weight", 1, "c")}
    rig.errors(a)


def test_zero_preserving_activation_keeps_group_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(torch.tanh(F.silu(self.a(x))).abs())

    a = rig.analyze(Net(), torch.randn(3, 4))
    (g,) = a.groups
    assert g.exact
    assert rig.errors(a)[g.id] < 1e-6


def test_sigmoid_is_not_zero_preserving_approximate(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(torch.sigmoid(self.a(x)))

    a = rig.analyze(Net(), torch.randn(3, 4))
    (g,) = a.groups
    assert (g.exact, g.reason) == (False, "nothing zeroes the channel before b (read by b)")
    assert rig.errors(a)[g.id] > 1e-3


def test_masked_fill_with_zero_keeps_zero_channels_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            y = self.a(x)
            return self.b(y.masked_fill(y < 0, 0.0))

    a = rig.analyze(Net(), torch.randn(3, 4))
    (g,) = a.groups
    assert g.exact
    rig.errors(a)


def test_masked_fill_with_nonzero_value_is_approximate(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            y = self.a(x)
            return self.b(y.masked_fill(y <= 0, 2.0))

    a = rig.analyze(Net(), torch.randn(3, 4))
    (g,) = a.groups
    assert not g.exact
    assert rig.errors(a)[g.id] > 1e-3


def test_prelu_per_channel_slope_is_a_consumer_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.p, self.b = nn.Conv2d(3, 8, 1), nn.PReLU(8), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.b(self.p(self.a(x)))

    a = rig.analyze(Net(), torch.randn(2, 3, 4, 4))
    (g,) = a.groups
    assert g.exact
    assert rig.members(g) == {("a.weight", 0, "p"), ("a.bias", 0, "p"), ("p.weight", 0, "c"), ("b.weight", 1, "c")}
    small = rig.prune(a, {g: [1, 2]})
    assert rig.shapes(small)["p.weight"] == (6,)
    assert small.p.num_parameters == 6


def test_mul_of_two_branches_lets_either_producer_zero_the_channel_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.g, self.b = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(self.a(x) * torch.sigmoid(self.g(x)))

    a = rig.analyze(Net(), torch.randn(3, 4))
    (g,) = a.groups
    assert g.exact
    assert rig.members(g) == {("a.weight", 0, "p"), ("a.bias", 0, "p"), ("g.weight", 0, "p"), ("g.bias", 0, "p"),
                              ("b.weight", 1, "c")}
    rig.errors(a)


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("f, exact", [
    (lambda t: t.clamp(0.0, 1.0), True),
    (lambda t: t.clamp(min=-2.0), True),
    (lambda t: torch.clamp_max(t, 3.0), True),
    (nn.Hardtanh(), True),
    (lambda t: t.clamp(min=1e-3), False),  # clamp(0) == 1e-3: a zero channel becomes a constant
    (lambda t: t.clamp(max=-1.0), False),
    (lambda t: F.hardtanh(t, 0.5, 2.0), False),
], ids=["clamp_0_1", "clamp_min_neg", "clamp_max_pos", "hardtanh", "clamp_min_eps", "clamp_max_neg", "hardtanh_pos"])
def test_clamp_keeps_zero_only_when_its_bounds_contain_zero(rig, frontend, f, exact):
    a = rig.analyze(rig.between_linears(f), torch.randn(3, 4), frontend=frontend)
    (g,) = a.groups
    assert g.exact is exact
    if exact:
        assert rig.errors(a)[g.id] < 1e-6
