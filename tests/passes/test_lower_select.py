"""Lowering keeps the fastest of its compiled candidates and eager, and says why (tiny models, CPU)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
import torch
import torch.nn as nn

from fxopt.passes import LowerPass, PassManager
from fxopt.passes.base import PassContext
from fxopt.passes.lower_select import EAGER, Selection, select_fastest
from fxopt.targets import OptimizeOptions, get_target, pipeline_for
from fxopt.testing import assert_equivalent


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()


def _fake_timer(ms: Mapping[str, float]) -> Callable[[Mapping[str, Callable[..., Any]], Sequence[Any]],
                                                     dict[str, float]]:
    def timer(modules: Mapping[str, Callable[..., Any]], inputs: Sequence[Any]) -> dict[str, float]:
        assert set(modules) == set(ms)
        return {label: ms[label] for label in modules}

    return timer


def test_select_fastest_compiled_slower_than_eager_keeps_eager() -> None:
    model, x = _tiny(), torch.randn(2, 8)
    compiled = {"default": model, "reduce-overhead": model}
    chosen = select_fastest(compiled, model, (x,),
                            timer=_fake_timer({"default": 3.0, "reduce-overhead": 2.5, EAGER: 1.0}))
    assert chosen == Selection(EAGER, {"default": 3.0, "reduce-overhead": 2.5, EAGER: 1.0})
    assert chosen.reason() == ("kept eager: 1.000 ms per call on the example inputs against default 3.000 ms, "
                               "reduce-overhead 2.500 ms")


def test_select_fastest_tie_keeps_the_first_compiled_candidate() -> None:
    model, x = _tiny(), torch.randn(2, 8)
    chosen = select_fastest({"default": model, "reduce-overhead": model}, model, (x,),
                            timer=_fake_timer({"default": 1.0, "reduce-overhead": 0.5, EAGER: 0.5}))
    assert chosen.winner == "reduce-overhead"


def test_select_fastest_refuses_a_candidate_named_eager() -> None:
    model = _tiny()
    with pytest.raises(ValueError, match="cannot be labelled 'eager'"):
        select_fastest({EAGER: model}, model, (torch.randn(2, 8),), timer=_fake_timer({EAGER: 1.0}))


def test_lower_select_times_candidates_and_reports_the_winner(passes) -> None:  # type: ignore[no-untyped-def]
    model, x = _tiny(), torch.randn(2, 8)
    run = PassManager([LowerPass(select=True)]).run(passes.trace(model, x), (x,))
    result = run.results[0]
    winner = result.metrics["winner"]
    assert winner in ("default", EAGER) and {"ms[default]", "ms[eager]"} <= set(result.metrics)
    assert result.notes[0].startswith(f"kept {winner}: ")
    assert result.metrics["lowered"] is (winner != EAGER)
    assert (run.module is run.gm) == (winner == EAGER)
    assert_equivalent(model, run.module, (x,))


def test_lower_compiled_forced_slower_than_eager_keeps_eager_with_the_times(passes) -> None:  # type: ignore[no-untyped-def]
    model, x = _tiny(), torch.randn(2, 8)
    ctx = PassContext(example_inputs=(x,), timer=_fake_timer({"default": 2.0, EAGER: 1.0}))
    run = PassManager([LowerPass(select=True)]).run(passes.trace(model, x), (x,), ctx)
    result = run.results[0]
    assert run.module is run.gm and ctx.lowered is None
    assert result.metrics["lowered"] is False and result.metrics["winner"] == EAGER
    assert result.metrics["fallback_reason"] == "eager ran fastest"
    assert result.notes[0] == "kept eager: 1.000 ms per call on the example inputs against default 2.000 ms"
    assert_equivalent(model, run.module, (x,))


def test_lower_compiled_faster_is_kept(passes) -> None:  # type: ignore[no-untyped-def]
    model, x = _tiny(), torch.randn(2, 8)
    ctx = PassContext(example_inputs=(x,), timer=_fake_timer({"default": 1.0, EAGER: 2.0}))
    run = PassManager([LowerPass(select=True)]).run(passes.trace(model, x), (x,), ctx)
    assert run.module is ctx.lowered and run.results[0].metrics["lowered"] is True
    assert run.results[0].metrics["ms[default]"] == 1.0
    assert_equivalent(model, run.module, (x,))


def test_lower_failing_alternative_is_noted_and_the_other_kept(passes, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real, calls = torch.compile, []

    def second_fails(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("autotuning exploded")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "compile", second_fails)
    model, x = _tiny(), torch.randn(2, 8)
    run = PassManager([LowerPass(alternatives=("max-autotune",))]).run(passes.trace(model, x), (x,))
    result = run.results[0]
    assert result.metrics["lowered"] is True and result.metrics["winner"] == "default"
    assert "max-autotune not compiled: RuntimeError: autotuning exploded" in result.notes
    assert_equivalent(model, run.module, (x,))


def test_lower_budget_spent_skips_the_later_candidates(passes) -> None:  # type: ignore[no-untyped-def]
    x = torch.randn(2, 8)
    lower = LowerPass(alternatives=("max-autotune",), budget_s=0.0)
    run = PassManager([lower]).run(passes.trace(_tiny(), x), (x,))
    result = run.results[0]
    assert "compile_s[default]" in result.metrics and "compile_s[max-autotune]" not in result.metrics
    assert any(n.startswith("max-autotune not compiled: the compile budget of 0 s was spent") for n in result.notes)


def test_lower_alternative_reduce_overhead_compiles_with_cuda_graphs_and_mode_without() -> None:
    lower = LowerPass(alternatives=("reduce-overhead",))
    assert lower.candidates() == [("default", None), ("reduce-overhead", "reduce-overhead")]
    assert lower.inductor_options()["triton.cudagraphs"] is False
    assert lower.inductor_options("reduce-overhead")["triton.cudagraphs"] is True


@pytest.mark.parametrize(("options", "alternatives"), [
    (OptimizeOptions(), ("reduce-overhead",)),
    (OptimizeOptions(recipe="max-autotune"), ("reduce-overhead", "max-autotune")),
    (OptimizeOptions(compile_budget_s=60.0), ("reduce-overhead", "max-autotune")),
])
def test_pipeline_gpu_autotunes_only_when_asked(options: OptimizeOptions, alternatives: tuple[str, ...]) -> None:
    lower = pipeline_for(get_target("h200"), options)[-1]
    assert isinstance(lower, LowerPass) and lower.select and lower.mode is None
    assert lower.alternatives == alternatives and lower.budget_s == options.compile_budget_s


def test_pipeline_unknown_recipe_lists_the_known_ones() -> None:
    from fxopt.errors import PassError

    with pytest.raises(PassError, match="unknown lowering recipe 'fast'.*'max-autotune'"):
        pipeline_for(get_target("h200"), OptimizeOptions(recipe="fast"))
