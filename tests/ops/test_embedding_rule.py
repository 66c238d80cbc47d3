"""Pinned tests of the embedding rule."""

from __future__ import annotations

import torch
import torch.nn as nn


def test_embedding_dim_is_a_channel_produced_by_table_columns_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.e, self.a = nn.Embedding(20, 8), nn.Linear(8, 3)

        def forward(self, ids):
            return self.a(torch.relu(self.e(ids)))

    a = rig.analyze(Net(), torch.randint(0, 20, (2, 5)))
    (g,) = a.groups
    assert (g.id, g.size, g.exact) == ("e.weight/1", 8, True)
    assert rig.members(g) == {("e.weight", 1, "p"), ("a.weight", 1, "c")}
    assert rig.errors(a)[g.id] < 1e-6
    small = rig.prune(a, {g: [0, 2, 4, 6]})
    assert rig.shapes(small)["e.weight"] == (20, 4)
    assert small.e.embedding_dim == 4


def test_embedding_vocabulary_dim_is_never_prunable(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.e = nn.Embedding(20, 8)

        def forward(self, ids):
            return self.e(ids)

    a = rig.analyze(Net(), torch.randint(0, 20, (2, 5)))
    assert a.groups == []
    assert [(f.id, f.size) for f in a.frozen] == [("e.weight/1", 8)]
    assert a.facts.table.frozen_reason(a.axes.of(("param:e.weight", 0))[0]) == "vocabulary dim of an embedding table"


def test_embedding_plus_position_table_share_channels_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos, self.a = nn.Embedding(20, 8), nn.Parameter(torch.randn(5, 8)), nn.Linear(8, 3)

        def forward(self, ids):
            return self.a(self.tok(ids) + self.pos)

    a = rig.analyze(Net(), torch.randint(0, 20, (2, 5)))
    (g,) = a.groups
    assert g.exact
    assert rig.members(g) == {("tok.weight", 1, "p"), ("pos", 1, "p"), ("a.weight", 1, "c")}
    rig.errors(a)
    small = rig.prune(a, {g: [7]})
    assert rig.shapes(small)["pos"] == (5, 7)
