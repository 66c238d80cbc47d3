"""Lowering with torch.compile: one real compile of a tiny model, and fallbacks that never fail the pipeline."""

from __future__ import annotations

import logging
import sys

import torch
import torch.nn as nn

from fxopt.passes import LowerPass, PassManager, lower
from fxopt.passes.base import PassContext
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

    monkeypatch.setattr(torch, "compile", lambda *a, **k: (_ for _ in ()).throw(AssertionError("called")))
    x = torch.randn(2, 8)
    with config.patch({"cpp.cxx": ("no-such-compiler-fxopt",)}):  # restores the setting; setattr+undo did not
        run = PassManager("lower").run(passes.trace(_tiny(), x), (x,))
    assert "no C++ compiler" in run.results[0].metrics["fallback_reason"]


def test_lower_unreadable_compiler_setting_falls_back_with_the_reason(passes, monkeypatch) -> None:
    def unreadable() -> None:
        raise AttributeError("cxx")  # what torch 2.14 raised after a monkeypatch of cpp.cxx was undone

    monkeypatch.setattr(lower, "_cxx_setting", unreadable)
    model, x = _tiny(), torch.randn(2, 8)
    run = PassManager("lower").run(passes.trace(model, x), (x,))
    reason = run.results[0].metrics["fallback_reason"]
    assert reason == "inductor's C++ compiler setting cannot be read (AttributeError: cxx)"
    assert run.module is run.gm
    assert_equivalent(model, run.module, (x,))


def test_lower_after_a_compiler_setting_patch_still_compiles(passes) -> None:
    """The order that failed the README's suite: a test patching the compiler setting, then a real compile."""
    from torch._inductor import config

    model, x = _tiny(), torch.randn(2, 8)
    with config.patch({"cpp.cxx": ("no-such-compiler-fxopt",)}):
        PassManager("lower").run(passes.trace(model, x), (x,))
    run = PassManager("lower").run(passes.trace(model, x), (x,))
    assert run.results[0].metrics["lowered"] is True, run.results[0].metrics
    assert_equivalent(model, run.module, (x,))


def test_lower_for_a_gpu_target_on_a_cpu_model_is_skipped_with_the_reason(passes, monkeypatch) -> None:
    from fxopt.targets.registry import get_target

    monkeypatch.setattr(torch, "compile", lambda *a, **k: (_ for _ in ()).throw(AssertionError("called")))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    x = torch.randn(2, 8)
    ctx = PassContext(example_inputs=(x,), target=get_target("a100"))
    run = PassManager([LowerPass(mode="max-autotune", cuda_graphs=True)]).run(passes.trace(_tiny(), x), (x,), ctx)
    reason = run.results[0].metrics["fallback_reason"]
    assert reason.startswith("target 'a100' runs on cuda and this machine has no CUDA device")
    assert run.results[0].notes == (f"not compiled: {reason}",)


def test_quiet_compilers_hides_printed_progress_and_restores_loggers(capsys) -> None:
    inductor = logging.getLogger("torch._inductor")
    level = inductor.level
    with lower.quiet_compilers():
        sys.stderr.write("AUTOTUNE mm(64x64, 64x64)\n")
        print("progress")
        assert inductor.level == logging.ERROR
    assert inductor.level == level
    assert capsys.readouterr() == ("", "")


def test_lower_mode_options_merge_into_inductor_options() -> None:
    options = LowerPass(mode="max-autotune", freezing=True, cuda_graphs=False).inductor_options()
    assert options["max_autotune"] is True and options["freezing"] is True
    assert options["triton.cudagraphs"] is False
