"""Pinned tests of the linear and addmm rules."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_linear_chain_hidden_features_exact(rig, frontend):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.b(F.gelu(self.a(x)))

    a = rig.analyze(Net(), torch.randn(2, 5, 6), frontend=frontend)
    (g,) = a.groups
    assert (g.id, g.size, g.granularity, g.exact) == ("a.weight/0", 8, "channel", True)
    assert rig.members(g) == {("a.weight", 0, "p"), ("a.bias", 0, "p"), ("b.weight", 1, "c")}
    assert rig.errors(a)["a.weight/0"] < 1e-6
    small = rig.prune(a, {g: [0, 1, 2, 7]})
    assert rig.shapes(small) == {"a.weight": (4, 6), "a.bias": (4,), "b.weight": (3, 4), "b.bias": (3,)}
    if frontend == "fx":
        assert (small.a.out_features, small.b.in_features) == (4, 4)


def test_linear_reading_graph_input_and_writing_output_has_no_group(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 8)

        def forward(self, x):
            return self.a(x)

    a = rig.analyze(Net(), torch.randn(2, 6))
    assert a.groups == []
    assert [(f.id, f.reason) for f in a.frozen] == [("a.weight/0", "dim of graph output a")]


def test_linear_bias_free_hidden_layer_is_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 8, bias=False), nn.Linear(8, 3, bias=False)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    a = rig.analyze(Net(), torch.randn(4, 6))
    (g,) = a.groups
    assert rig.members(g) == {("a.weight", 0, "p"), ("b.weight", 1, "c")}
    assert g.exact
    small = rig.prune(a, {g: [3]})
    assert rig.shapes(small) == {"a.weight": (7, 6), "b.weight": (3, 7)}


def test_addmm_gpt2_conv1d_weight_is_in_by_out_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1, self.b1 = nn.Parameter(torch.randn(6, 8)), nn.Parameter(torch.randn(8))
            self.w2, self.b2 = nn.Parameter(torch.randn(8, 3)), nn.Parameter(torch.randn(3))

        def forward(self, x):
            return torch.addmm(self.b2, torch.relu(torch.addmm(self.b1, x, self.w1)), self.w2)

    a = rig.analyze(Net(), torch.randn(4, 6))
    (g,) = a.groups
    assert (g.id, g.size, g.exact) == ("w1/1", 8, True)
    assert rig.members(g) == {("w1", 1, "p"), ("b1", 0, "p"), ("w2", 0, "c")}
    rig.errors(a)
    small = rig.prune(a, {g: [0, 5]})
    assert rig.shapes(small) == {"w1": (6, 6), "b1": (6,), "w2": (6, 3), "b2": (3,)}
