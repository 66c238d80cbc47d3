"""The checks must be able to fail: corrupted rewrites, corrupted weights and mislabelled groups are caught."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxopt
from fxopt.testing import assert_equivalent, check_zero_invariance
from fxopt.testing.zero_invariance import zero_producers


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 6, 1), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.c(F.relu(self.b(F.relu(self.a(x)))))


class Sliced(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 10), nn.Linear(4, 2), nn.Linear(6, 2)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return self.b(y[:, :4]) + self.c(y[:, 4:])


def test_oracle_passes_on_the_uncorrupted_models(rig):
    assert all(e < 1e-6 for e in rig.errors(rig.analyze(Chain(), torch.randn(2, 3, 4, 4))).values())
    assert all(e < 1e-6 for e in rig.errors(rig.analyze(Sliced(), torch.randn(3, 4))).values())


def test_oracle_catches_a_slice_rewriter_that_shifts_bounds_wrongly(rig, monkeypatch):
    a = rig.analyze(Sliced(), torch.randn(3, 4))
    original = a.registry.rewriters["getitem"]

    def off_by_one(view, resizer):  # shift every rewritten slice by one element: same sizes, wrong channels
        original(view, resizer)
        items = view.node.args[1]
        if isinstance(items, tuple) and isinstance(items[1], slice) and items[1].start:
            view.node.args = (view.node.args[0], (items[0], slice(items[1].start - 1, items[1].stop - 1)))

    monkeypatch.setitem(a.registry.rewriters, "getitem", off_by_one)
    with pytest.raises(AssertionError, match="a.weight/0@0: relative error"):
        check_zero_invariance(a)


def test_oracle_catches_a_rewriter_that_breaks_the_graph(rig, monkeypatch):
    a = rig.analyze(Sliced(), torch.randn(3, 4))
    monkeypatch.setitem(a.registry.rewriters, "getitem", lambda view, resizer: None)  # stale slice bounds
    checks = check_zero_invariance(a, raise_on_failure=False)
    assert [(c.group, c.passed) for c in checks] == [("a.weight/0@0", False), ("a.weight/0@4", True)]
    assert checks[0].error is not None and checks[1].error is None  # y[:, :4] still takes 4 channels
    with pytest.raises(AssertionError, match="1 of 2 groups fail zero-invariance:\na.weight/0@0: error "):
        check_zero_invariance(a)


def test_assert_equivalent_catches_a_corrupted_pruned_weight(rig):
    a = rig.analyze(Chain(), torch.randn(2, 3, 4, 4))
    g = a.group("a.weight/0")
    plan = {g: [1, 2]}
    zeroed, small = zero_producers(a, plan), fxopt.prune_groups(a, plan)
    assert_equivalent(zeroed, small, a.example_inputs)
    with torch.no_grad():
        small.b.weight[0, 0] += 1e-2
    with pytest.raises(AssertionError, match="Tensor-likes are not close"):
        assert_equivalent(zeroed, small, a.example_inputs)


def test_oracle_catches_a_consumer_sliced_at_the_wrong_columns(rig, monkeypatch):
    a = rig.analyze(Chain(), torch.randn(2, 3, 4, 4))
    real_prune = fxopt.testing.zero_invariance.prune_groups

    def prune_then_rotate_consumer(analysis, removals, **options):  # right shapes, wrong kept columns
        small = real_prune(analysis, removals, **options)
        with torch.no_grad():
            small.b.weight.copy_(small.b.weight.roll(1, dims=1))
        return small

    monkeypatch.setattr(fxopt.testing.zero_invariance, "prune_groups", prune_then_rotate_consumer)
    checks = check_zero_invariance(a, groups=[a.group("a.weight/0")], raise_on_failure=False)
    assert checks[0].error is None
    assert not checks[0].passed and checks[0].relative > 1e-3


def test_oracle_catches_a_group_mislabelled_exact(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.ln, self.b = nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(self.ln(self.a(x)))

    a = rig.analyze(Net(), torch.randn(3, 4))
    (g,) = a.groups
    assert not g.exact
    assert check_zero_invariance(a)[0].passed  # approximate groups report their error and pass
    lie = dataclasses.replace(g, exact=True, reason=None)
    a.groups = [lie]
    with pytest.raises(AssertionError, match=r"1 of 1 groups fail zero-invariance:\na.weight/0: relative error"):
        check_zero_invariance(a)


def test_oracle_catches_a_rule_that_forgets_a_consumer(rig, monkeypatch):
    from fxopt.ops import REGISTRY

    original = REGISTRY.rules["linear"]

    def no_input_coupling(view, facts):  # the rule forgets that the input features are the weight's columns
        x, out, w, b = view.inputs[0], view.out, view.params["weight"], view.params.get("bias")
        for d in range(x.ndim - 1):
            facts.transfer(out.axis(d), x.axis(d))
        facts.same(out.axis(-1), w.axis(0))
        if b is not None:
            facts.same(out.axis(-1), b.axis(0))
        facts.zero(out.axis(-1), "all", [w.axis(0)] + ([b.axis(0)] if b is not None else []))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    assert original is not no_input_coupling
    with REGISTRY.scoped():
        monkeypatch.setitem(REGISTRY.rules, "linear", no_input_coupling)
        a = rig.analyze(Net(), torch.randn(3, 4))
    (g,) = a.groups
    assert ("b.weight", 1, "c") not in rig.members(g)  # the corrupted analysis lost the consumer ...
    checks = check_zero_invariance(a, raise_on_failure=False)
    assert not checks[0].passed and checks[0].error is not None  # ... and the removal cannot run without it
    with pytest.raises(fxopt.PruneError, match="the pruned graph does not run"):
        fxopt.prune_groups(a, {g: [0]})
