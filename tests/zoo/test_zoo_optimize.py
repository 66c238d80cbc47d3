"""The model zoo through ``fxopt.optimize(target="cpu", compile=False)`` and through every lossless pass alone.

Outputs must match the original model (fp32: rtol 1e-4, atol 1e-5). The fast slice runs by default (in checked
mode, so every pass of the pipeline is compared with its input); ``-m zoo_full`` runs every model, and every
lossless pass on its own.
"""

from __future__ import annotations

import copy
import gc

import pytest
import torch

import fxopt
from fxopt.api import optimize, report
from fxopt.passes import LOSSLESS_PASSES, PassManager
from fxopt.testing import assert_equivalent
from fxopt.testing.zoo import ZooEntry, zoo_entries

ENTRIES = zoo_entries()
FAST = [e for e in ENTRIES if e.fast_slice]


def _optimize_matches(entry: ZooEntry, checked: bool) -> None:
    torch.manual_seed(0)
    model, inputs = entry.build(), entry.inputs()
    fast = optimize(model, inputs, target="cpu", compile=False, checked=checked)
    assert_equivalent(model, fast, inputs, rtol=1e-4, atol=1e-5)
    r = report(fast)
    assert r.after.params <= r.before.params and r.after.flops <= r.before.flops * (1 + 1e-9)


@pytest.mark.zoo
@pytest.mark.parametrize("entry", FAST, ids=[e.name for e in FAST])
def test_zoo_fast_slice_optimize_matches(entry: ZooEntry) -> None:
    _optimize_matches(entry, checked=True)


@pytest.mark.zoo_full
@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_zoo_optimize_matches(entry: ZooEntry) -> None:
    _optimize_matches(entry, checked=False)


@pytest.mark.zoo_full
@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_zoo_every_lossless_pass_alone_matches(entry: ZooEntry) -> None:
    torch.manual_seed(0)
    model, inputs = entry.build(), entry.inputs()
    traced = fxopt.trace(copy.deepcopy(model), inputs)
    for spec in LOSSLESS_PASSES:
        gm = copy.deepcopy(traced)
        PassManager(spec).run(gm, inputs)
        assert_equivalent(model, gm, inputs, rtol=1e-4, atol=1e-5)
        del gm
        gc.collect()  # a GraphModule sits in reference cycles: free each copy before the next (vit_h_14 is 2.5 GB)
