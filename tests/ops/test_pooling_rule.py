"""Pinned tests of the spatial rules: pooling, interpolation, padding, roll."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F


def test_pool_interpolate_pad_pass_channels_through_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.p, self.b, self.fc = nn.Conv2d(3, 8, 3), nn.MaxPool2d(2), nn.Conv2d(8, 6, 1), \
                nn.Linear(6, 2)

        def forward(self, x):
            y = F.interpolate(self.p(F.relu(self.a(x))), scale_factor=2.0, mode="nearest")
            y = F.avg_pool2d(F.pad(self.b(y), (1, 1, 1, 1)), 2)
            return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))

    a = rig.analyze(Net(), torch.randn(2, 3, 10, 10))
    assert {g.id: (g.size, g.exact) for g in a.groups} == {"a.weight/0": (8, True), "b.weight/0": (6, True)}
    assert rig.members(rig.group(a, "b.weight/0")) == {("b.weight", 0, "p"), ("b.bias", 0, "p"),
                                                       ("fc.weight", 1, "c")}
    assert all(e < 1e-6 for e in rig.errors(a).values())
    small = rig.prune(a, {rig.group(a, "a.weight/0"): [0, 1], rig.group(a, "b.weight/0"): [5]})
    assert (rig.shapes(small)["b.weight"], rig.shapes(small)["fc.weight"]) == ((5, 6, 1, 1), (2, 5))


def test_pad_with_nonzero_value_freezes_nothing_but_padded_dims(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 3)

        def forward(self, x):
            return self.b(F.pad(self.a(x), (1, 1, 1, 1), value=1.0))

    a = rig.analyze(Net(), torch.randn(2, 3, 6, 6))
    (g,) = a.groups
    assert g.size == 8
    pad = next(n for n in a.gm.graph.nodes if n.name == "pad")
    assert all(a.facts.table.frozen_reason(c) == "padded dim" for d in (2, 3) for c in a.axes.of((pad.name, d)))


def test_pad_with_nonzero_value_makes_the_border_of_a_zero_channel_nonzero(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 3)

        def forward(self, x):
            return self.b(F.pad(self.a(x), (1, 1, 1, 1), value=1.0))

    a = rig.analyze(Net(), torch.randn(2, 3, 6, 6))
    (g,) = a.groups
    error = rig.errors(a)[g.id]
    assert not g.exact, f"a zeroed channel is padded with ones, yet labelled exact (error {error:.2e})"


def test_roll_over_channels_freezes_them_but_roll_over_space_does_not(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(12, 2, 1)

        def forward(self, x):
            return self.c(torch.cat([torch.roll(self.a(x), 1, dims=2), torch.roll(self.b(x), 1, dims=1)], 1))

    a = rig.analyze(Net(), torch.randn(2, 3, 6, 6))
    (g,) = a.groups
    assert (g.id, g.exact) == ("a.weight/0", True)
    assert rig.frozen(a, "b.weight/0").reason == "rolled dim"
    rig.errors(a)


@pytest.mark.parametrize("pad", [nn.ReflectionPad2d, nn.ReplicationPad2d])
def test_pad_reflection_module_copies_zero_channels_exact(rig, pad):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.p, self.b = nn.Conv2d(3, 8, 1), pad(1), nn.Conv2d(8, 2, 3)

        def forward(self, x):
            return self.b(self.p(self.a(x)))

    a = rig.analyze(Net(), torch.randn(2, 3, 6, 6))
    (g,) = a.groups
    assert (g.size, g.exact) == (8, True)
    assert all(e < 1e-6 for e in rig.errors(a).values())
