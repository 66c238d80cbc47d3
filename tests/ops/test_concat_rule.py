"""Pinned tests of the concat rules: cat, stack, split/chunk and unbind."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_cat_of_two_branches_gives_one_group_per_branch_with_offsets_exact(rig, frontend):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1), nn.Conv2d(10, 2, 1)

        def forward(self, x):
            return self.c(torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1))

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8), frontend=frontend)
    assert {g.id: (g.size, g.exact) for g in a.groups} == {"a.weight/0": (4, True), "b.weight/0": (6, True)}
    ga, gb = rig.group(a, "a.weight/0"), rig.group(a, "b.weight/0")
    assert rig.members(gb) == {("b.weight", 0, "p"), ("b.bias", 0, "p"), ("c.weight", 1, "c")}
    c_slices = a.unit_slices(gb)[next(m for m in gb.members if m.qualname == "c.weight")]
    assert c_slices.ravel().tolist() == [4, 5, 6, 7, 8, 9]  # the second branch sits at offset 4 of c's input
    rig.errors(a)
    small = rig.prune(a, {ga: [0], gb: [1, 5]})
    assert rig.shapes(small)["c.weight"] == (2, 7, 1, 1)
    c = small.get_parameter("c.weight")
    original = a.gm.get_parameter("c.weight")
    assert torch.equal(c[:, :3], original[:, 1:4]) and torch.equal(c[:, 3:], original[:, [4, 6, 7, 8]])


def test_cat_with_the_graph_input_leaves_the_input_part_frozen(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(11, 2, 1)

        def forward(self, x):
            return self.b(torch.cat([F.relu(self.a(x)), x], 1))

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    (g,) = a.groups
    assert (g.id, g.size, g.exact) == ("a.weight/0", 8, True)
    rig.errors(a)
    small = rig.prune(a, {g: list(range(7))})
    assert rig.shapes(small)["b.weight"] == (2, 4, 1, 1)  # 1 kept channel of a + the 3 input channels
    assert torch.equal(small.get_parameter("b.weight")[:, 1:], a.gm.get_parameter("b.weight")[:, 8:])


def test_cat_then_residual_couples_the_branches_to_the_skip(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.s, self.a, self.b, self.c = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 2, 1), nn.Conv2d(6, 4, 1), \
                nn.Conv2d(6, 2, 1)

        def forward(self, x):
            s = self.s(x)
            return self.c(s + torch.cat([self.a(s), self.b(s)], 1))

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    assert {g.id: g.size for g in a.groups} == {"s.weight/0@0": 2, "s.weight/0@2": 4}
    g = rig.group(a, "s.weight/0@2")
    assert rig.members(g) == {("s.weight", 0, "p"), ("s.bias", 0, "p"), ("a.weight", 1, "c"), ("b.weight", 1, "c"),
                              ("b.weight", 0, "p"), ("b.bias", 0, "p"), ("c.weight", 1, "c")}
    assert all(e < 1e-6 for e in rig.errors(a).values())


def test_chunk_parts_are_separate_groups_and_unequal_removal_rewrites_to_split(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            u, v = self.a(x).chunk(2, dim=1)
            return self.b(u) + self.c(v)

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    assert {g.id: (g.size, g.exact) for g in a.groups} == {"a.weight/0@0": (4, True), "a.weight/0@4": (4, True)}
    first, second = rig.group(a, "a.weight/0@0"), rig.group(a, "a.weight/0@4")
    assert rig.members(second) == {("a.weight", 0, "p"), ("a.bias", 0, "p"), ("c.weight", 1, "c")}
    rig.errors(a)
    small = rig.prune(a, {first: [0, 1], second: [3]})
    assert rig.shapes(small)["a.weight"] == (5, 3, 1, 1)
    (split,) = [n for n in small.graph.nodes if n.name == "chunk"]
    assert (split.target, split.args[1:]) == ("split", ([2, 3], 1))
    assert small.meta["fxopt"]["pruned"]["rewritten"] == ["chunk"]


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_split_with_sizes_rewrites_sizes_with_either_frontend(rig, frontend):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 10), nn.Linear(4, 2), nn.Linear(6, 2)

        def forward(self, x):
            u, v = torch.split(self.a(x), [4, 6], dim=-1)
            return self.b(u) * self.c(v)

    a = rig.analyze(Net(), torch.randn(2, 3), frontend=frontend)
    assert {g.id: g.size for g in a.groups} == {"a.weight/0@0": 4, "a.weight/0@4": 6}
    rig.errors(a)
    small = rig.prune(a, {rig.group(a, "a.weight/0@4"): [0, 1, 2, 3, 4]})
    assert rig.shapes(small)["a.weight"] == (5, 3)
    (split,) = [n for n in small.graph.nodes if "split" in str(n.target)]
    assert list(split.args[1]) == [4, 1]


def test_chunk_halves_multiplied_together_form_paired_units_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 8), nn.Linear(4, 2)

        def forward(self, x):
            u, v = self.a(x).chunk(2, dim=-1)  # GLU: u_i * sigmoid(v_i), unit i covers a's rows i and 4 + i
            return self.b(u * torch.sigmoid(v))

    a = rig.analyze(Net(), torch.randn(2, 3))
    (g,) = a.groups
    assert (g.size, g.width, g.exact) == (4, 2, True)
    rows = a.unit_slices(g)[next(m for m in g.members if m.qualname == "a.weight")]
    assert rows.tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    rig.errors(a)
    small = rig.prune(a, {g: [1]})
    assert rig.shapes(small)["a.weight"] == (6, 3)


def test_stack_then_unbind_couples_the_stacked_tensors_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 8), nn.Linear(3, 8), nn.Linear(8, 2)

        def forward(self, x):
            p, q = torch.stack([self.a(x), self.b(x)], 0).unbind(0)
            return self.c(p - q)

    a = rig.analyze(Net(), torch.randn(2, 3))
    (g,) = a.groups
    assert g.exact
    assert rig.members(g) == {("a.weight", 0, "p"), ("a.bias", 0, "p"), ("b.weight", 0, "p"), ("b.bias", 0, "p"),
                              ("c.weight", 1, "c")}
    rig.errors(a)
    small = rig.prune(a, {g: [0, 4]})
    assert rig.shapes(small)["b.weight"] == (6, 3)


def test_stacked_dim_itself_is_frozen(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 8), nn.Linear(3, 8)

        def forward(self, x):
            return torch.stack([self.a(x), self.b(x)], 1).sum(1)

    a = rig.analyze(Net(), torch.randn(2, 3))
    assert a.groups == []  # the output keeps the 8 features
    (f,) = a.frozen
    assert f.reason.startswith("dim of graph output")
    stacked = next(n for n in a.gm.graph.nodes if n.name == "stack")
    axis = a.axes.of((stacked.name, 1))
    assert a.facts.table.frozen_reason(axis[0]) == "stack stacks along this dim"


@pytest.mark.parametrize("join", [torch.cat, torch.stack])
def test_join_along_tokens_is_zero_only_when_every_input_channel_is(rig, join):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.c(join([self.a(x), torch.sigmoid(self.b(x))], 1))

    a = rig.analyze(Net(), torch.randn(2, 3, 4))
    (g,) = a.groups
    error = rig.errors(a)[g.id]
    assert not g.exact, f"labelled exact, but zeroing differs from removing by {error:.2e}"


def test_join_along_tokens_of_zero_preserving_branches_is_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 2)
            self.cls = nn.Parameter(torch.randn(1, 1, 8))

        def forward(self, x):
            tokens = torch.cat([self.cls.expand(x.shape[0], 1, 8), self.a(x), torch.tanh(self.b(x))], 1)
            return self.c(tokens)

    a = rig.analyze(Net(), torch.randn(2, 3, 4), frontend="export")
    (g,) = a.groups
    assert g.exact
    assert rig.members(g) == {("cls", 2, "p"), ("a.weight", 0, "p"), ("a.bias", 0, "p"), ("b.weight", 0, "p"),
                              ("b.bias", 0, "p"), ("c.weight", 1, "c")}
    rig.errors(a)
    small = rig.prune(a, {g: [0, 1]})
    assert rig.shapes(small)["cls"] == (1, 1, 6)
