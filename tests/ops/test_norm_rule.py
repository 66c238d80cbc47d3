"""Pinned tests of the normalization rules: batch, instance, group, layer and RMS norm."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F


def test_batch_norm_parameters_and_stats_join_the_channel_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bn, self.b = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.b(F.relu(self.bn(self.a(x))))

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    (g,) = a.groups
    assert (g.size, g.exact) == (8, True)
    assert rig.members(g) == {("a.weight", 0, "p"), ("a.bias", 0, "p"), ("bn.weight", 0, "p"), ("bn.bias", 0, "p"),
                              ("bn.running_mean", 0, "c"), ("bn.running_var", 0, "c"), ("b.weight", 1, "c")}
    assert rig.errors(a)[g.id] < 1e-6
    small = rig.prune(a, {g: [2, 4, 6]})
    shapes = rig.shapes(small)
    assert [shapes[f"bn.{n}"] for n in ("weight", "bias", "running_mean", "running_var")] == [(5,)] * 4
    assert small.bn.num_features == 5


def test_batch_norm_without_affine_cannot_zero_the_channel(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bn, self.b = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8, affine=False), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.b(self.bn(self.a(x)))

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    (g,) = a.groups  # zero input becomes -mean/sqrt(var): a constant, not zero
    assert not g.exact
    assert g.reason == "nothing zeroes the channel before b (read by b)"
    assert rig.errors(a)[g.id] > 1e-3


def test_instance_norm_affine_is_per_channel_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.n, self.b = nn.Conv2d(3, 8, 1), nn.InstanceNorm2d(8, affine=True), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.b(self.n(self.a(x)))

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    (g,) = a.groups
    assert g.exact
    assert rig.members(g) == {("a.weight", 0, "p"), ("a.bias", 0, "p"), ("n.weight", 0, "p"), ("n.bias", 0, "p"),
                              ("b.weight", 1, "c")}
    rig.errors(a)
    small = rig.prune(a, {g: [0]})
    assert rig.shapes(small)["n.weight"] == (7,)
    assert small.n.num_features == 7


def test_instance_norm_without_affine_keeps_zero_channel_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.n, self.b = nn.Conv2d(3, 8, 1), nn.InstanceNorm2d(8), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.b(self.n(self.a(x)))

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    (g,) = a.groups
    assert g.exact
    assert rig.members(g) == {("a.weight", 0, "p"), ("a.bias", 0, "p"), ("b.weight", 1, "c")}
    assert rig.errors(a)[g.id] < 1e-6


def test_group_norm_whole_groups_exact_channels_within_groups_not(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.gn, self.b = nn.Conv2d(3, 8, 1), nn.GroupNorm(4, 8), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.b(self.gn(self.a(x)))

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    whole, inner = rig.group(a, "a.weight/0.0"), rig.group(a, "a.weight/0.1")
    assert (whole.size, whole.width, whole.exact) == (4, 2, True)
    assert (inner.size, inner.width, inner.exact) == (2, 4, False)
    assert inner.reason == "gn normalizes over the channels of each group"
    members = {("a.weight", 0, "p"), ("a.bias", 0, "p"), ("gn.weight", 0, "p"), ("gn.bias", 0, "p"),
               ("b.weight", 1, "c")}
    assert rig.members(whole) == rig.members(inner) == members
    errors = rig.errors(a)
    assert errors[whole.id] < 1e-6 and errors[inner.id] > 1e-3
    small = rig.prune(a, {whole: [0, 3]})
    assert rig.shapes(small)["gn.weight"] == (4,)
    assert (small.gn.num_groups, small.gn.num_channels) == (2, 4)


def test_layer_norm_over_features_makes_group_approximate(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.ln, self.b = nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3)

        def forward(self, x):
            return self.b(self.ln(self.a(x)))

    a = rig.analyze(Net(), torch.randn(2, 5, 6))
    (g,) = a.groups
    assert (g.size, g.exact) == (8, False)
    assert g.reason == "ln normalizes over this dim: removing channels changes its mean/variance"
    assert rig.members(g) == {("a.weight", 0, "p"), ("a.bias", 0, "p"), ("ln.weight", 0, "p"), ("ln.bias", 0, "p"),
                              ("b.weight", 1, "c")}
    assert rig.errors(a)[g.id] > 1e-3
    small = rig.prune(a, {g: [1, 2]})
    assert rig.shapes(small)["ln.weight"] == (6,)
    assert small.ln.normalized_shape == (6,)


def test_layer_norm_over_tokens_without_affine_leaves_hidden_features_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.ln, self.b = nn.Linear(6, 8), nn.LayerNorm(5, elementwise_affine=False), nn.Linear(8, 3)

        def forward(self, x):
            return self.b(self.ln(self.a(x).transpose(1, 2)).transpose(1, 2))

    a = rig.analyze(Net(), torch.randn(2, 5, 6))
    (g,) = a.groups  # normalizing over the 5 tokens treats every feature alone: a zero row stays zero
    assert (g.id, g.size, g.exact) == ("a.weight/0", 8, True)
    assert rig.errors(a)[g.id] < 1e-6


@pytest.mark.parametrize("norm", ["layer", "batch", "group"])
def test_norm_with_bias_turns_zero_rows_of_unnormalized_dims_into_constants(rig, norm):
    make = {"layer": lambda: nn.LayerNorm(5), "batch": lambda: nn.BatchNorm1d(5), "group": lambda: nn.GroupNorm(1, 5)}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.n, self.b = nn.Linear(6, 8), make[norm](), nn.Linear(8, 3)

        def forward(self, x):  # (batch, 5, 8): the 8 features of a are not the norm's channels
            y = self.a(x)
            return self.b(self.n(y.transpose(1, 2)).transpose(1, 2) if norm == "layer" else self.n(y))

    a = rig.analyze(Net(), torch.randn(2, 5, 6))
    (g,) = a.groups
    error = rig.errors(a)[g.id]
    assert not g.exact, f"labelled exact, but zeroing differs from removing by {error:.2e}"


@pytest.mark.parametrize("bias", [True, False])
def test_rms_norm_is_approximate_with_and_without_producer_bias(rig, bias):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.n, self.b = nn.Linear(6, 8, bias=bias), nn.RMSNorm(8), nn.Linear(8, 3)

        def forward(self, x):
            return self.b(self.n(self.a(x)))

    a = rig.analyze(Net(), torch.randn(2, 5, 6))
    (g,) = a.groups
    assert not g.exact
    assert g.reason == "n normalizes over this dim: removing channels changes its mean/variance"
    assert ("n.weight", 0, "p") in rig.members(g)
    assert rig.errors(a)[g.id] > 1e-3
    small = rig.prune(a, {g: [0, 1, 2]})
    assert rig.shapes(small)["n.weight"] == (5,)
    assert small.n.normalized_shape == (5,)


def test_convnext_channels_last_layer_norm_behind_permute_couples_conv_and_linear(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.dw = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.ln, self.fc1, self.fc2, self.head = nn.LayerNorm(8), nn.Linear(8, 16), nn.Linear(16, 8), \
                nn.Conv2d(8, 2, 1)

        def forward(self, x):
            x = self.stem(x)
            y = self.fc2(F.gelu(self.fc1(self.ln(self.dw(x).permute(0, 2, 3, 1)))))
            return self.head(x + y.permute(0, 3, 1, 2))

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    stem, hidden = rig.group(a, "stem.weight/0"), rig.group(a, "fc1.weight/0")
    assert rig.members(stem) == {
        ("stem.weight", 0, "p"), ("stem.bias", 0, "p"), ("dw.weight", 0, "p"), ("dw.bias", 0, "p"),
        ("ln.weight", 0, "p"), ("ln.bias", 0, "p"), ("fc1.weight", 1, "c"), ("fc2.weight", 0, "p"),
        ("fc2.bias", 0, "p"), ("head.weight", 1, "c")}
    assert (stem.size, stem.exact) == (8, False)
    assert stem.reason.startswith("ln normalizes over this dim")
    assert (hidden.size, hidden.exact) == (16, True)
    errors = rig.errors(a)
    assert errors[hidden.id] < 1e-6 and errors[stem.id] > 1e-3
    small = rig.prune(a, {stem: [0, 7], hidden: list(range(8))})
    shapes = rig.shapes(small)
    assert (shapes["dw.weight"], shapes["ln.weight"], shapes["fc1.weight"], shapes["fc2.weight"]) == \
        ((6, 1, 3, 3), (6,), (8, 6), (6, 8))
    assert small.ln.normalized_shape == (6,)


def test_convnext_block_on_graph_input_residual_freezes_the_stem_channels(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw, self.ln, self.fc1, self.fc2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.LayerNorm(8), \
                nn.Linear(8, 16), nn.Linear(16, 8)

        def forward(self, x):
            y = self.fc2(F.gelu(self.fc1(self.ln(self.dw(x).permute(0, 2, 3, 1)))))
            return x + y.permute(0, 3, 1, 2)

    a = rig.analyze(Net(), torch.randn(2, 8, 8, 8))
    assert [g.id for g in a.groups] == ["fc1.weight/0"]
    f = rig.frozen(a, "dw.weight/0")
    assert f.reason == "dim of graph input x"
    assert {("ln.weight", 0, "p"), ("fc2.weight", 0, "p")} <= rig.members(f)
