"""Pinned tests of the conv rule: plain, transposed, grouped and depthwise convolutions, 1d to 3d."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_chain_output_channels_are_one_exact_group(rig, dims):
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = conv(3, 8, 3, padding=1), conv(8, 4, 3)

        def forward(self, x):
            return self.b(F.relu(self.a(x)))

    a = rig.analyze(Net(), torch.randn(2, 3, *[6] * dims))
    (g,) = a.groups
    assert (g.id, g.size, g.width, g.granularity, g.exact) == ("a.weight/0", 8, 1, "channel", True)
    assert rig.members(g) == {("a.weight", 0, "p"), ("a.bias", 0, "p"), ("b.weight", 1, "c")}
    assert rig.errors(a)["a.weight/0"] < 1e-6
    small = rig.prune(a, {g: [0, 3, 5]})
    k = (3,) * dims
    assert rig.shapes(small) == {"a.weight": (5, 3, *k), "a.bias": (5,), "b.weight": (4, 5, *k), "b.bias": (4,)}
    assert (small.a.out_channels, small.b.in_channels) == (5, 5)


def test_conv_output_of_graph_is_frozen_with_reason(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            return self.a(x)

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    assert a.groups == []
    (f,) = a.frozen
    assert (f.id, f.size, f.node) == ("a.weight/0", 8, "output")
    assert f.reason == "dim of graph output a"
    assert rig.members(f) == {("a.weight", 0, "p"), ("a.bias", 0, "p")}


def test_conv_transpose_chain_prunes_weight_dim1_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.ConvTranspose2d(3, 8, 2, stride=2), nn.ConvTranspose2d(8, 4, 3)

        def forward(self, x):
            return self.b(F.relu(self.a(x)))

    a = rig.analyze(Net(), torch.randn(2, 3, 4, 4))
    (g,) = a.groups
    assert (g.id, g.size, g.exact) == ("a.weight/1", 8, True)
    assert rig.members(g) == {("a.weight", 1, "p"), ("a.bias", 0, "p"), ("b.weight", 0, "c")}
    rig.errors(a)
    small = rig.prune(a, {g: [1, 2, 7]})
    assert rig.shapes(small)["a.weight"] == (3, 5, 2, 2)
    assert rig.shapes(small)["b.weight"] == (5, 4, 3, 3)
    assert (small.a.out_channels, small.b.in_channels) == (5, 5)


def test_grouped_conv_whole_groups_and_per_group_channels_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.g, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 16, 3, groups=4), nn.Conv2d(16, 2, 1)

        def forward(self, x):
            return self.b(F.relu(self.g(F.relu(self.a(x)))))

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    groups = {g.id: (g.size, g.width, g.granularity, g.exact) for g in a.groups}
    assert groups == {
        "a.weight/0.0": (4, 2, "block", True),  # whole groups: 2 input and 4 output channels each
        "a.weight/0.1": (2, 4, "block", True),  # i-th input channel of every group
        "g.weight/0.1": (4, 4, "block", True),  # j-th output channel of every group
    }
    whole = rig.group(a, "a.weight/0.0")
    assert rig.members(whole) == {("a.weight", 0, "p"), ("a.bias", 0, "p"), ("g.weight", 0, "p"),
                                  ("g.bias", 0, "p"), ("b.weight", 1, "c")}
    assert rig.members(rig.group(a, "a.weight/0.1")) == {("a.weight", 0, "p"), ("a.bias", 0, "p"),
                                                         ("g.weight", 1, "c")}
    assert all(e < 1e-6 for e in rig.errors(a).values())
    small = rig.prune(a, {whole: [1]})
    assert rig.shapes(small)["g.weight"] == (12, 2, 3, 3)
    assert (small.g.groups, small.g.in_channels, small.g.out_channels) == (3, 6, 12)
    small = rig.prune(a, {rig.group(a, "a.weight/0.1"): [0], rig.group(a, "g.weight/0.1"): [1, 2]})
    assert rig.shapes(small)["g.weight"] == (8, 1, 3, 3)
    assert (small.g.groups, small.g.in_channels, small.g.out_channels) == (4, 4, 8)


def test_grouped_conv_on_graph_input_freezes_its_groups(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.g, self.b = nn.Conv2d(4, 8, 3, groups=2), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.b(F.relu(self.g(x)))

    a = rig.analyze(Net(), torch.randn(2, 4, 8, 8))
    (g,) = a.groups  # only the outputs within each group remain prunable
    assert (g.id, g.size, g.width, g.exact) == ("g.weight/0.1", 4, 2, True)
    whole = rig.frozen(a, "g.weight/0.0")
    assert whole.reason == "dim of graph input x"
    small = rig.prune(a, {g: [0, 1]})
    assert (small.g.groups, small.g.out_channels) == (2, 4)


def test_depthwise_separable_depthwise_channels_follow_producer_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.dw = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.pw, self.o = nn.Conv2d(8, 6, 1), nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.o(F.relu(self.pw(F.relu(self.dw(F.relu(self.a(x)))))))

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    assert [g.id for g in a.groups] == ["a.weight/0", "pw.weight/0"]
    g = rig.group(a, "a.weight/0")
    assert (g.size, g.exact) == (8, True)
    assert rig.members(g) == {("a.weight", 0, "p"), ("a.bias", 0, "p"), ("dw.weight", 0, "p"),
                              ("dw.bias", 0, "p"), ("pw.weight", 1, "c")}
    rig.errors(a)
    small = rig.prune(a, {g: [0, 1, 2]})
    assert rig.shapes(small)["dw.weight"] == (5, 1, 3, 3)
    assert (small.dw.groups, small.dw.in_channels, small.dw.out_channels) == (5, 5, 5)


def test_depthwise_conv_on_graph_input_is_frozen(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw, self.pw = nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.pw(self.dw(x))

    a = rig.analyze(Net(), torch.randn(2, 4, 8, 8))
    assert a.groups == []
    f = rig.frozen(a, "dw.weight/0")
    assert (f.size, f.reason) == (4, "dim of graph input x")
    assert ("pw.weight", 1, "c") in rig.members(f)


def test_grouped_conv_transpose_groups_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.t, self.b = nn.Conv2d(3, 8, 1), nn.ConvTranspose2d(8, 12, 2, stride=2, groups=4), \
                nn.Conv2d(12, 2, 1)

        def forward(self, x):
            return self.b(F.relu(self.t(F.relu(self.a(x)))))

    a = rig.analyze(Net(), torch.randn(2, 3, 4, 4))
    assert {g.id: (g.size, g.width) for g in a.groups} == {"a.weight/0.0": (4, 2), "a.weight/0.1": (2, 4),
                                                           "t.weight/1": (3, 1)}
    assert all(g.exact for g in a.groups)
    rig.errors(a)
    small = rig.prune(a, {rig.group(a, "a.weight/0.0"): [0, 3], rig.group(a, "t.weight/1"): [2]})
    assert rig.shapes(small)["t.weight"] == (4, 2, 2, 2)
    assert (small.t.groups, small.t.in_channels, small.t.out_channels) == (2, 4, 4)


def test_functional_conv_weight_attribute_is_a_producer(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.b = nn.Parameter(torch.randn(8, 3, 3, 3)), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.b(F.relu(F.conv2d(x, self.w, padding=1)))

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    (g,) = a.groups
    assert (g.id, g.size, g.exact) == ("w/0", 8, True)
    assert rig.members(g) == {("w", 0, "p"), ("b.weight", 1, "c")}
    small = rig.prune(a, {g: [4]})
    assert rig.shapes(small)["w"] == (7, 3, 3, 3)


def test_functional_conv_without_bias_keeps_group_exact_but_bias_add_outside_is_not(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.b = nn.Parameter(torch.randn(8, 3, 1, 1)), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.b(F.conv2d(x, self.w) + 1.0)

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    (g,) = a.groups
    assert not g.exact
    assert g.reason == "channel is not zero after add (read by b)"
    assert rig.errors(a)["w/0"] > 1e-3


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_conv_bn_chain_same_groups_with_either_frontend(rig, frontend):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bn, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3, groups=2)

        def forward(self, x):
            return self.b(F.relu(self.bn(self.a(x))))

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8), frontend=frontend)
    assert a.gm.meta["fxopt"]["trace"].frontend == frontend
    (g,) = a.groups  # b's output is the graph output: its groups factor is frozen, its per-group inputs are not
    assert (g.id, g.size, g.width, g.exact) == ("a.weight/0.1", 4, 2, True)
    assert rig.members(g) == {
        ("a.weight", 0, "p"), ("a.bias", 0, "p"), ("bn.weight", 0, "p"), ("bn.bias", 0, "p"),
        ("bn.running_mean", 0, "c"), ("bn.running_var", 0, "c"), ("b.weight", 1, "c")}
    assert rig.frozen(a, "a.weight/0.0").reason.startswith("dim of graph output")
    rig.errors(a)
    small = rig.prune(a, {rig.group(a, "a.weight/0.1"): [0, 3]})
    assert rig.shapes(small)["bn.running_var"] == (4,)
    assert rig.shapes(small)["b.weight"] == (4, 2, 3, 3)
    assert rig.shapes(small)["a.weight"] == (4, 3, 3, 3)
