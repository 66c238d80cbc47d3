"""prune_groups: requests it refuses (with clear messages) and what the smaller model keeps."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxopt


class Chain(nn.Module):
    """conv(3->8) -> relu -> conv(8->4) -> relu -> conv(4->2)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.c(F.relu(self.b(F.relu(self.a(x)))))


@pytest.fixture
def chain(rig) -> fxopt.Analysis:
    return rig.analyze(Chain(), torch.randn(2, 3, 8, 8))


def test_removal_of_two_groups_slices_every_member_and_records_what_it_did(rig, chain):
    ga, gb = chain.group("a.weight/0"), chain.group("b.weight/0")
    small = rig.prune(chain, {ga: [0, 7], gb: [1]})
    assert rig.shapes(small) == {"a.weight": (6, 3, 3, 3), "a.bias": (6,), "b.weight": (3, 6, 1, 1), "b.bias": (3,),
                                 "c.weight": (2, 3, 1, 1), "c.bias": (2,)}
    pruned = small.meta["fxopt"]["pruned"]
    assert pruned["units"] == {"a.weight/0": 2, "b.weight/0": 1}
    assert sorted(pruned["parameters"]) == ["a.bias", "a.weight", "b.bias", "b.weight", "c.weight"]
    assert torch.equal(small.b.weight, chain.gm.b.weight[[0, 2, 3]][:, 1:7])


def test_removal_leaves_the_analysed_model_untouched(rig, chain):
    before = rig.shapes(chain.gm)
    fxopt.prune_groups(chain, {"a.weight/0": [0, 1, 2]})
    assert rig.shapes(chain.gm) == before
    assert chain.gm.a.out_channels == 8


def test_removal_accepts_group_ids_and_ignores_duplicate_indices(rig, chain):
    small = fxopt.prune_groups(chain, {"a.weight/0": [3, 3, 5]})
    assert rig.shapes(small)["a.weight"] == (6, 3, 3, 3)


def test_removal_of_no_units_returns_an_unchanged_copy(rig, chain):
    small = fxopt.prune_groups(chain, {"a.weight/0": []})
    assert small is not chain.gm
    assert rig.shapes(small) == rig.shapes(chain.gm)


def test_pruned_model_trains_and_reloads_its_state_dict(rig, chain):
    small = fxopt.prune_groups(chain, {"a.weight/0": [0, 1]})
    x = torch.randn(2, 3, 8, 8)
    small(x).square().mean().backward()
    assert small.a.weight.grad.shape == (6, 3, 3, 3)
    copy = fxopt.prune_groups(chain, {"a.weight/0": [5, 6]})
    copy.load_state_dict(small.state_dict())
    with torch.no_grad():
        assert torch.equal(copy(x), small(x))


@pytest.mark.parametrize("units", [[8], [-1], [0, 8]])
def test_out_of_range_indices_raise_with_the_valid_range(chain, units):
    with pytest.raises(fxopt.PruneError, match=r"group a.weight/0 has 8 units; indices must be in \[0, 8\)"):
        fxopt.prune_groups(chain, {"a.weight/0": units})


def test_removing_every_unit_of_a_group_raises(chain):
    with pytest.raises(fxopt.PruneError, match="removing all 8 units of group a.weight/0 would delete the layer; "
                                               "keep at least one"):
        fxopt.prune_groups(chain, {"a.weight/0": range(8)})


def test_removing_all_but_one_unit_is_allowed(rig, chain):
    small = rig.prune(chain, {chain.group("a.weight/0"): range(7)})
    assert rig.shapes(small)["a.weight"] == (1, 3, 3, 3)


def test_frozen_group_object_cannot_be_pruned(chain):
    frozen = next(f for f in chain.frozen if f.id == "c.weight/0")
    with pytest.raises(fxopt.PruneError, match="group c.weight/0 is frozen at output: dim of graph output c"):
        fxopt.prune_groups(chain, {frozen: [0]})


@pytest.mark.parametrize("key, message", [("c.weight/0", "group c.weight/0 is frozen at output"),
                                          ("nope/0", "'nope/0' is not a group of this analysis")])
def test_frozen_or_unknown_group_id_raises_prune_error(chain, key, message):
    with pytest.raises(fxopt.PruneError, match=message):
        fxopt.prune_groups(chain, {key: [0]})


def test_group_of_another_analysis_is_rejected(rig, chain):
    other = rig.analyze(Chain(), torch.randn(2, 3, 8, 8))
    with pytest.raises(fxopt.PruneError, match="is not a group of this analysis"):
        fxopt.prune_groups(chain, {other.group("a.weight/0"): [0]})


def test_a_stale_shape_constant_raises_prune_error_naming_the_node(rig, monkeypatch):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.fc = nn.Conv2d(3, 8, 1), nn.Linear(8 * 16, 2)

        def forward(self, x):
            return self.fc(self.a(x).view(2, 8 * 16))

    a = rig.analyze(Net(), torch.randn(2, 3, 4, 4))
    monkeypatch.setitem(a.registry.rewriters, "reshape", lambda view, resizer: None)
    with pytest.raises(fxopt.PruneError, match="(?s)the pruned graph does not run: .*view"):
        fxopt.prune_groups(a, {"a.weight/0": [0]})


def test_a_shape_constant_rewritten_wrongly_is_caught_by_the_shape_check(rig, monkeypatch):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(self.a(x).view(3, 2, 4).flatten(1))

    a = rig.analyze(Net(), torch.randn(3, 4))
    (g,) = [g for g in a.groups if g.id == "a.weight/0.0"]

    def swap_factors(view, resizer):  # a view to (3, 4, 1) runs, but is not the shape the analysis predicts
        if view.node.target == "view":
            view.node.args = (view.node.args[0], 3, 4, 1)

    monkeypatch.setitem(a.registry.rewriters, "reshape", swap_factors)
    with pytest.raises(fxopt.PruneError, match=r"view produced shape \[\(3, 4, 1\)\] but the analysis "
                                               r"expected \[\(3, 1, 4\)\]; an op rule or rewriter is wrong"):
        fxopt.prune_groups(a, {g: [0]})
