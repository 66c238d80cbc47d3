"""Lowering with torch.compile: one real compile of a tiny model, and fallbacks that never fail the pipeline."""

from __future__ import annotations

import torch
import torch.nn as nn

from fxopt.passes import LowerPass, PassManager
from fxopt.testing import assert_equivalent


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()


def test_lower_tiny_model_compiles_with_freezing_and_matches(passes) -> None:
    model, x = _tiny(), torch.randn(2, 8)
    run = PassManager([LowerPass(freezing=True)], checked=True).run(passes.trace(model, x), (x,))
    result = run.results[0]
    assert result.metrics["lowered"] is True and not result.changed
    assert run.module is run.ctx.lowered and getattr(run.module, "_orig_mod", None) is run.gm
    assert_equivalent(model, run.module, (x,))


def test_lower_compile_error_falls_back_to_eager_with_reason(passes, monkeypatch) -> None:
    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("inductor exploded\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    model, x = _tiny(), torch.randn(2, 8)
    run = PassManager("lower").run(passes.trace(model, x), (x,))
    assert run.module is run.gm and run.results[0].metrics["lowered"] is False
    assert run.results[0].metrics["fallback_reason"] == "RuntimeError: inductor exploded"
    assert_equivalent(model, run.module, (x,))


def test_lower_missing_cpp_compiler_falls_back_without_trying(passes, monkeypatch) -> None:
    from torch._inductor import config

    monkeypatch.setattr(config.cpp, "cxx", ("no-such-compiler-fxopt",))
    monkeypatch.setattr(torch, "compile", lambda *a, **k: (_ for _ in ()).throw(AssertionError("called")))
    x = torch.randn(2, 8)
    run = PassManager("lower").run(passes.trace(_tiny(), x), (x,))
    assert "no C++ compiler" in run.results[0].metrics["fallback_reason"]


def test_lower_mode_options_merge_into_inductor_options() -> None:
    options = LowerPass(mode="max-autotune", freezing=True, cuda_graphs=False).inductor_options()
    assert options["max_autotune"] is True and options["freezing"] is True
    assert options["triton.cudagraphs"] is False
