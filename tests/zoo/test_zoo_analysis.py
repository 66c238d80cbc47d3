"""The model zoo through analysis, removal and the zero-invariance oracle.

The fast slice (``fast_slice`` entries) runs in CI; ``-m zoo_full`` runs every model with every group.
"""

from __future__ import annotations

import pytest
import torch

import fxopt
from fxopt.testing.zero_invariance import check_zero_invariance, pick_units, representative_groups
from fxopt.testing.zoo import ZooEntry, zoo_entries

ENTRIES = zoo_entries()
FAST = [e for e in ENTRIES if e.fast_slice]
FAST_GROUP_LIMIT = 12  # per model in the fast slice: enough to cover every kind of group it has


def _check(entry: ZooEntry, group_limit: int | None) -> None:
    torch.manual_seed(0)
    model, inputs = entry.build(), entry.inputs()
    analysis = fxopt.analyze(model, inputs)
    assert analysis.groups, f"{entry.name}: no prunable group found ({analysis.summary()})"
    plan = {g: pick_units(g, 0.5) for g in analysis.groups if g.exact and g.size > 1}
    small = fxopt.prune_groups(analysis, plan)
    with torch.no_grad():
        out = small(*analysis.example_inputs)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in analysis.gm.parameters())
    assert out is not None
    groups = analysis.groups if group_limit is None else representative_groups(analysis.groups, group_limit)
    checks = check_zero_invariance(analysis, groups=groups)
    assert all(c.passed for c in checks if c.exact)


@pytest.mark.zoo
@pytest.mark.parametrize("entry", FAST, ids=[e.name for e in FAST])
def test_zoo_fast_slice_groups_are_zero_invariant(entry: ZooEntry) -> None:
    _check(entry, FAST_GROUP_LIMIT)


@pytest.mark.zoo_full
@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_zoo_every_group_is_zero_invariant(entry: ZooEntry) -> None:
    _check(entry, None)
