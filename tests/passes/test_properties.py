"""Properties over random small networks: lossless pipelines keep outputs; lossless passes are idempotent."""

from __future__ import annotations

import copy

import torch
from hypothesis import HealthCheck, given, settings

import fxopt
from fxopt.passes import PassManager
from fxopt.testing import assert_equivalent
from fxopt.testing.strategies import build, net_specs

LOSSLESS = "cleanup,fuse(siblings=True),channels_last"


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net_specs())
def test_lossless_pipeline_preserves_outputs_on_random_nets(spec) -> None:  # type: ignore[no-untyped-def]
    model, inputs = build(spec)
    gm = fxopt.trace(copy.deepcopy(model), inputs)
    PassManager(LOSSLESS, checked=True).run(gm, inputs)
    assert_equivalent(model, gm, inputs)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net_specs())
def test_lossless_passes_are_idempotent_on_random_nets(spec) -> None:  # type: ignore[no-untyped-def]
    model, inputs = build(spec)
    gm = fxopt.trace(copy.deepcopy(model), inputs)
    first = PassManager(LOSSLESS).run(gm, inputs)
    second = PassManager(LOSSLESS).run(gm, inputs)
    assert not any(r.changed for r in second.results), [r.summary() for r in first.results + second.results]
    assert torch.is_tensor(gm(*inputs))
