"""Pinned tests of the shape rules: reshape family, permutes, indexing/slicing, repeat, factories."""

from __future__ import annotations

import operator

import torch
import torch.nn as nn
import torch.nn.functional as F


def test_view_transpose_reshape_flatten_unflatten_carry_channels_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Linear(8, 2)

        def forward(self, x):
            y = self.a(x)
            n, c, h, w = y.shape
            y = y.view(n, c, h * w).transpose(1, 2).reshape(n, h, w, c)
            return self.b(y.flatten(1, 2).unflatten(1, (h, w)).permute(0, 1, 2, 3))

    a = rig.analyze(Net(), torch.randn(2, 3, 4, 4))
    (g,) = a.groups
    assert (g.id, g.size, g.exact) == ("a.weight/0", 8, True)
    assert rig.members(g) == {("a.weight", 0, "p"), ("a.bias", 0, "p"), ("b.weight", 1, "c")}
    rig.errors(a)
    small = rig.prune(a, {g: [0, 1, 2]})
    views = {n.name: [a if isinstance(a, int) else "read" for a in n.args[1:]]
             for n in small.graph.nodes if n.target in ("view", "reshape")}
    # the channel entries read from y.shape become the new size; the others still read the shape at run time
    assert views == {"view": ["read", 5, "read"], "reshape": ["read", "read", "read", 5]}
    assert rig.shapes(small)["b.weight"] == (2, 5)


def test_reshape_that_mixes_channels_with_space_freezes_them(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 6, 1), nn.Linear(24, 2)

        def forward(self, x):
            return self.b(self.a(x).reshape(2, 4, 24))  # 6 x 16 -> 4 x 24: 4 and 6 do not divide

    a = rig.analyze(Net(), torch.randn(2, 3, 4, 4))
    assert a.groups == []
    f = rig.frozen(a, "a.weight/0")
    assert (f.size, f.reason) == (6, "reshape mixes channels of different dims")


def test_flatten_into_linear_maps_each_channel_to_a_block_of_features_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8 * 4 * 4, 2)

        def forward(self, x):
            return self.fc(torch.flatten(F.relu(self.a(x)), 1))

    a = rig.analyze(Net(), torch.randn(2, 3, 6, 6))
    (g,) = a.groups
    assert (g.size, g.width, g.exact) == (8, 1, True)
    cols = a.unit_slices(g)[next(m for m in g.members if m.qualname == "fc.weight")]
    assert cols.shape == (8, 16) and cols[2].tolist() == list(range(32, 48))
    rig.errors(a)
    small = rig.prune(a, {g: [1, 2, 3, 4]})
    assert rig.shapes(small)["fc.weight"] == (2, 64)
    assert small.fc.in_features == 64


def test_view_with_minus_one_into_linear_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8 * 4 * 4, 2)

        def forward(self, x):
            y = F.relu(self.a(x))
            return self.fc(y.view(y.size(0), -1))

    a = rig.analyze(Net(), torch.randn(2, 3, 6, 6))
    (g,) = a.groups
    rig.errors(a)
    small = rig.prune(a, {g: [0]})
    assert rig.shapes(small)["fc.weight"] == (2, 112)


def test_channel_shuffle_splits_channels_into_two_factors_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = F.relu(self.a(x))
            n, c, h, w = y.shape
            return self.b(y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w))

    a = rig.analyze(Net(), torch.randn(2, 3, 4, 4))
    assert {g.id: (g.size, g.width, g.exact) for g in a.groups} == {"a.weight/0.0": (2, 4, True),
                                                                    "a.weight/0.1": (4, 2, True)}
    inner = rig.group(a, "a.weight/0.1")
    m = {m.qualname: m for m in inner.members}
    slices = a.unit_slices(inner)
    assert slices[m["a.weight"]].tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert slices[m["b.weight"]].tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]  # after the shuffle
    rig.errors(a)
    small = rig.prune(a, {inner: [1]})
    assert rig.shapes(small)["b.weight"] == (2, 6, 1, 1)


def test_getitem_slices_split_a_dim_into_parts_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 12, 1), nn.Conv2d(8, 2, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            y = self.a(x)
            return self.b(y[:, :8]) + self.c(y[:, 8:])

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    assert {g.id: g.size for g in a.groups} == {"a.weight/0@0": 8, "a.weight/0@8": 4}
    rig.errors(a)
    small = rig.prune(a, {rig.group(a, "a.weight/0@0"): [0, 1, 2]})
    items = [n.args[1] for n in small.graph.nodes if n.target is operator.getitem]
    assert [i[1] for i in items] == [slice(0, 5, None), slice(5, 9, None)]


def test_getitem_unused_channels_form_a_dead_group_and_spatial_crop_is_frozen(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 12, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.b(self.a(x)[:, 2:10, 1:7])

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    dead, used = rig.group(a, "a.weight/0@0"), rig.group(a, "a.weight/0@2")
    assert rig.members(dead) == {("a.weight", 0, "p"), ("a.bias", 0, "p")}  # channels 0, 1, 10, 11 are never read
    assert a.unit_slices(dead)[dead.members[0]].ravel().tolist() == [0, 1, 10, 11]
    assert (used.size, used.exact) == (8, True)
    rig.errors(a)
    small = rig.prune(a, {dead: [0, 1, 2], used: [0]})
    assert rig.shapes(small)["a.weight"] == (8, 3, 1, 1)


def test_getitem_strided_slice_freezes_the_channels(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.b(self.a(x)[:, ::2])

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    assert a.groups == []
    assert rig.frozen(a, "a.weight/0").reason == "getitem takes a strided slice"


def test_window_partition_and_merge_keep_channels_prunable_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            n, h, w, c = x.shape
            y = self.a(x).view(n, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, 4, c)
            y = self.b(y).view(n, h // 2, w // 2, 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)
            return self.c(y)

    a = rig.analyze(Net(), torch.randn(2, 4, 4, 8))
    assert {g.id: (g.size, g.exact) for g in a.groups} == {"a.weight/0": (8, True), "b.weight/0": (8, True)}
    rig.errors(a)
    small = rig.prune(a, {rig.group(a, "a.weight/0"): [0, 1], rig.group(a, "b.weight/0"): [7]})
    assert rig.shapes(small)["b.weight"] == (7, 6)
    windows = next(n for n in small.graph.nodes if n.name == "view")
    assert [a if isinstance(a, int) else "read" for a in windows.args[1:]] == ["read", "read", 2, "read", 2, 6]


def test_window_partition_spatial_dims_are_frozen(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8)

        def forward(self, x):
            n, h, w, c = x.shape
            return self.a(x.view(n, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, 4, c))

    a = rig.analyze(Net(), torch.randn(2, 4, 4, 8))
    assert a.groups == []
    view = next(n for n in a.gm.graph.nodes if n.name == "view")
    for d in (1, 2, 3, 4):
        (atom,) = a.axes.of((view.name, d))
        assert a.facts.table.frozen_reason(atom) == "dim of graph input x"


def test_repeat_interleave_makes_each_channel_a_block_of_copies_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.b(F.relu(self.a(x)).repeat_interleave(2, dim=1))

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    (g,) = a.groups
    assert (g.size, g.exact) == (4, True)
    b_cols = a.unit_slices(g)[next(m for m in g.members if m.qualname == "b.weight")]
    assert b_cols.tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    rig.errors(a)
    small = rig.prune(a, {g: [1]})
    assert rig.shapes(small)["b.weight"] == (2, 6, 1, 1)


def test_repeat_tiles_channels_so_each_unit_appears_in_every_tile_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.b(F.relu(self.a(x)).repeat(1, 2, 1, 1))

    a = rig.analyze(Net(), torch.randn(2, 3, 8, 8))
    (g,) = a.groups
    b_cols = a.unit_slices(g)[next(m for m in g.members if m.qualname == "b.weight")]
    assert b_cols.tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    rig.errors(a)


def test_repeat_interleave_copies_factor_removal_rewrites_the_count(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 3), nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):  # b's 6 features are 3 x 2 like a's repeated output: the copies are prunable
            return self.c(self.a(x).repeat_interleave(2, dim=-1) * self.b(x))

    a = rig.analyze(Net(), torch.randn(5, 4))
    copies = next(g for g in a.groups if g.granularity == "repeat")
    rig.prune(a, {copies: [1]})


def test_getattr_shape_reads_couple_nothing(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            y = self.a(x)
            return self.b(y.reshape(y.shape[0], y.size(1)))

    a = rig.analyze(Net(), torch.randn(3, 4))
    (g,) = a.groups
    assert g.exact and a.barriers == []
    small = rig.prune(a, {g: [0]})
    assert next(n for n in small.graph.nodes if n.target == "reshape").args[2] == 7


def test_getattr_transpose_of_weight_couples_it_as_consumer(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.w = nn.Linear(4, 8), nn.Parameter(torch.randn(3, 8))

        def forward(self, x):
            return F.relu(self.a(x)) @ self.w.T

    a = rig.analyze(Net(), torch.randn(2, 4))
    (g,) = a.groups
    assert ("w", 1) in {(q, d) for q, d, _ in rig.members(g)}
    small = rig.prune(a, {g: [0]})
    assert rig.shapes(small)["w"] == (3, 7)


class ArangeTable(nn.Module):
    """``b(a(x) * cos(arange(n * 8).reshape(n, 8)))``: a table sized from the input, as rotary embeddings build it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        n = x.shape[0]
        return self.b(self.a(x) * torch.arange(n * 8.0).reshape(n, 8).cos())


def test_arange_table_coupled_to_channels_freezes_them(rig):
    a = rig.analyze(ArangeTable(), torch.randn(3, 4))
    assert a.groups == []
    assert rig.frozen(a, "a.weight/0").reason == "arange holds position-dependent values"


def test_arange_table_frozen_group_names_the_arange(rig):
    a = rig.analyze(ArangeTable(), torch.randn(3, 4))
    assert rig.frozen(a, "a.weight/0").node == "arange"


def test_ones_factory_sized_from_channels_is_resized(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            y = self.a(x)
            return self.b(y * torch.ones(y.shape[0], 8))

    a = rig.analyze(Net(), torch.randn(3, 4), frontend="export")  # fx cannot trace torch.ones(proxy, 8)
    (g,) = a.groups
    assert g.exact
    rig.errors(a)
    small = rig.prune(a, {g: [0, 1]})
    batch, channels = next(n for n in small.graph.nodes if n.name == "ones").args[0]
    assert channels == 6 and batch.target is torch.ops.aten.sym_size.int  # the batch stays a run-time read
    assert small(torch.randn(5, 4)).shape == (5, 2)


def test_pixel_shuffle_prunes_whole_channel_blocks_and_freezes_the_factor(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.ps, self.b = nn.Conv2d(3, 16, 1), nn.PixelShuffle(2), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.b(self.ps(self.a(x)))

    a = rig.analyze(Net(), torch.randn(2, 3, 4, 4))
    (g,) = a.groups
    assert (g.id, g.size, g.width, g.exact) == ("a.weight/0.0", 4, 4, True)
    assert rig.frozen(a, "a.weight/0.1").reason == "pixel shuffle factor"
    rig.errors(a)
    small = rig.prune(a, {g: [3]})
    assert rig.shapes(small)["a.weight"] == (12, 3, 1, 1)


def test_constant_table_folded_at_trace_time_is_sliced_like_a_buffer_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):  # no input in the expression: symbolic tracing stores the result as a constant
            return self.b(self.a(x) * torch.arange(24.0).reshape(3, 8).cos())

    a = rig.analyze(Net(), torch.randn(3, 4))
    (g,) = a.groups
    assert rig.members(g) == {("a.weight", 0, "p"), ("a.bias", 0, "p"), ("_tensor_constant0", 1, "p"),
                              ("b.weight", 1, "c")}
    rig.errors(a)
    small = rig.prune(a, {g: [0, 7]})
    table = torch.arange(24.0).reshape(3, 8).cos()
    assert torch.equal(small._tensor_constant0, table[:, 1:7])
