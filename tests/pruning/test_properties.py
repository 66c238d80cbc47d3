"""Properties over random networks: whatever prune() removes is zero-invariant, and the result runs."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fxopt
from fxopt.pruning import prune
from fxopt.testing import check_zero_invariance
from fxopt.testing.strategies import build, net_specs


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=net_specs(max_blocks=3), ratio=st.sampled_from([0.3, 0.5, 0.7]), round_to=st.sampled_from([1, 2, 4]))
def test_prune_random_network_pruned_groups_are_zero_invariant(spec, ratio, round_to) -> None:  # type: ignore[no-untyped-def]
    model, inputs = build(spec)
    analysis = fxopt.analyze(model, inputs)
    small, report = prune(analysis, ratio=ratio, round_to=round_to)
    assert not report.failed
    with torch.no_grad():
        assert small(*inputs).shape == model(*inputs).shape
    pruned = {d.group: d for d in report.pruned}
    groups = [g for g in analysis.groups if g.id in pruned]
    assert all(c.passed for c in check_zero_invariance(analysis, groups=groups))
    for g in groups:  # kept channels are multiples of the alignment wherever the group is big enough
        kept = pruned[g.id].kept
        if g.granularity == "channel" and g.width == 1 and g.size >= round_to:
            assert kept % round_to == 0
