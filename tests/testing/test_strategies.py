"""Property tests over random conv/linear networks with residuals, concats and splits."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fxopt
from fxopt.testing import check_zero_invariance
from fxopt.testing.strategies import (
    Concat,
    Glu,
    Layer,
    NetSpec,
    Residual,
    Shuffle,
    Split,
    block_width,
    build,
    net_specs,
)
from fxopt.testing.zero_invariance import pick_units

PROPERTY = settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(net_specs())
def test_random_networks_every_exact_group_is_zero_invariant(spec):
    model, inputs = build(spec)
    a = fxopt.analyze(model, inputs)
    assert a.barriers == []
    checks = check_zero_invariance(a)  # raises if an exact group differs or any removal fails
    assert [c.group for c in checks] == [g.id for g in a.groups]


@PROPERTY
@given(net_specs(exact_only=True))
def test_random_networks_without_sigmoid_or_layer_norm_have_only_exact_groups(spec):
    model, inputs = build(spec)
    a = fxopt.analyze(model, inputs)
    assert a.groups, a.summary()
    assert [g.id for g in a.groups if not g.exact] == []


@PROPERTY
@given(net_specs())
def test_random_networks_analysis_is_deterministic(spec):
    model, inputs = build(spec)

    def listing(a):
        return ([(g.id, g.size, g.width, g.exact, g.reason, g.members) for g in a.groups],
                [(f.id, f.size, f.reason) for f in a.frozen])

    assert listing(fxopt.analyze(model, inputs)) == listing(fxopt.analyze(model, inputs))


@settings(max_examples=15, deadline=None, derandomize=True)
@given(net_specs(), st.floats(min_value=0.1, max_value=0.9))
def test_random_networks_pruning_every_group_at_once_runs_and_shrinks(spec, fraction):
    model, inputs = build(spec)
    a = fxopt.analyze(model, inputs)
    plan = {g: pick_units(g, fraction) for g in a.groups}
    small = fxopt.prune_groups(a, plan)
    with torch.no_grad():
        assert small(*inputs).shape == model(*inputs).shape
    before = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in small.parameters()) < before or not plan


@settings(max_examples=20, deadline=None, derandomize=True)
@given(net_specs())
def test_strategy_builds_the_same_model_from_the_same_spec(spec):
    (m1, (x1,)), (m2, (x2,)) = build(spec), build(spec)
    assert torch.equal(x1, x2)
    assert all(torch.equal(p, q) for p, q in zip(m1.state_dict().values(), m2.state_dict().values()))
    with torch.no_grad():
        out = m1(x1)
    expected = (spec.batch, spec.classes, spec.spatial, spec.spatial) if spec.kind == "conv" else \
        (spec.batch, spec.classes)
    assert tuple(out.shape) == expected


def test_strategy_block_widths_follow_each_block():
    assert block_width(5, Layer(out=3)) == 3
    assert block_width(5, Layer(out=3, kernel=0)) == 5  # depthwise keeps the width
    assert block_width(5, Residual(hidden=2)) == 5
    assert block_width(5, Concat(a=2, b=3, with_input=True)) == 10
    assert block_width(5, Split(parts=(2, 4), out=6)) == 6
    assert block_width(5, Glu(hidden=3, out=2)) == 2
    assert block_width(5, Shuffle()) == 5


def test_strategy_spec_builds_the_described_layers():
    blocks = (Residual(2, norm="batch"), Concat(2, 3, True), Split((3, 3), 4, chunk=True), Layer(6, 1, groups=2),
              Glu(3, 4), Shuffle(), Layer(4, 0, norm="layer"))
    spec = NetSpec("conv", 3, 4, blocks, 2, 0)
    model, (x,) = build(spec)
    assert x.shape == (2, 3, 6, 6)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.endswith("weight")}
    assert shapes["blocks.0.first.weight"] == (2, 4, 1, 1)
    assert shapes["blocks.1.b.weight"] == (3, 4, 1, 1)
    assert shapes["blocks.2.wide.weight"] == (6, 9, 1, 1)
    assert shapes["blocks.3.op.weight"] == (6, 2, 1, 1)  # gcd(2, 4, 6) = 2 groups
    assert shapes["blocks.4.first.weight"] == (6, 6, 1, 1)
    assert shapes["blocks.6.norm.ln.weight"] == (4,)  # channels-last LayerNorm after the depthwise conv
    assert shapes["head.weight"] == (2, 4, 1, 1)
    assert model.blocks[0].norm.running_var.min() >= 0.5  # statistics are random, variances stay positive


@settings(max_examples=10, deadline=None, derandomize=True)
@given(net_specs(max_blocks=2))
def test_random_networks_fx_and_export_frontends_find_the_same_groups(spec):
    model, inputs = build(spec)

    def listing(a):
        return [(g.id, g.size, g.exact, {(m.qualname, m.dim, m.role) for m in g.members}) for g in a.groups]

    assert listing(fxopt.analyze(model, inputs, frontend="fx")) == \
        listing(fxopt.analyze(model, inputs, frontend="export"))
