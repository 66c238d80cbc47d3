"""fxopt.optimize / report / cost: lossless results, reports reachable through compile, clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from fxopt.api import cost, optimize, report
from fxopt.errors import FxoptError, PassError
from fxopt.passes import PASSES
from fxopt.report import Report
from fxopt.testing import assert_equivalent


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Dropout(0.2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        return self.head(torch.relu(self.block(y) + y))


@pytest.fixture
def net(rig) -> nn.Module:  # type: ignore[no-untyped-def]
    return rig.randomize(SmallNet())


def test_optimize_without_lossy_options_matches_and_reports(net) -> None:
    x = torch.randn(2, 3, 16, 16)
    fast = optimize(net, x, compile=False, checked=True)
    assert_equivalent(net, fast, (x,), rtol=1e-4, atol=1e-5)
    r = report(fast)
    assert isinstance(r, Report) and r.pipeline == "cleanup,fuse,channels_last"
    assert r.after.params < r.before.params and r.after.nodes < r.before.nodes
    assert r.result("fuse").metrics["fired"] == 3  # two BN folds and the linear merge
    assert r.after.predicted_s < r.before.predicted_s
    text = r.to_text()
    assert "fuse: changed" in text and "parameters" in text and "predicted ms" in text


def test_optimize_leaves_the_model_untouched(net) -> None:
    before = copy.deepcopy(net.state_dict())
    optimize(net, torch.randn(1, 3, 8, 8), compile=False)
    after = net.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_optimize_compiled_result_carries_report_and_matches() -> None:
    model, x = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval(), torch.randn(2, 8)
    fast = optimize(model, x, target="cpu")
    r = report(fast)
    assert hasattr(fast, "_orig_mod") == r.lowered  # eager is kept when it ran faster than the compiled module
    assert r.lowered or "kept eager" in (r.lowering_note or "")
    assert_equivalent(model, fast, (x,))


def test_optimize_explicit_pipeline_replaces_targets(net) -> None:
    fast = optimize(net, torch.randn(1, 3, 8, 8), passes="cleanup,fold_bn", compile=False)
    assert report(fast).pipeline == "cleanup,fold_bn"


def test_optimize_training_mode_keeps_bn_and_warns(net) -> None:
    net.train()
    fast = optimize(net, torch.randn(2, 3, 8, 8), compile=False)
    r = report(fast)
    assert r.result("fuse").metrics["fired"] == 1  # only the linear merge
    assert any("training mode" in w for w in r.warnings)


def test_optimize_prune_without_prune_pass_raises_clear_error(net) -> None:
    with PASSES.scoped():
        PASSES.passes.pop("prune", None)
        with pytest.raises(PassError, match="needs a pass registered as 'prune'"):
            optimize(net, torch.randn(1, 3, 8, 8), prune=0.5, compile=False)


def test_optimize_bf16_on_slow_cpu_is_refused(net, monkeypatch) -> None:
    import dataclasses

    from fxopt.targets import get_target

    slow = dataclasses.replace(get_target("cpu"), slow_dtypes=("bf16", "fp16"))
    with pytest.raises(PassError, match="slower than fp32"):
        optimize(net, torch.randn(1, 3, 8, 8), target=slow, precision="bf16", compile=False)


def test_report_of_plain_module_raises() -> None:
    with pytest.raises(FxoptError, match="carries no fxopt report"):
        report(nn.Linear(2, 2))


def test_cost_of_model_is_symbolic_in_batch(net) -> None:
    table = cost(net, torch.randn(1, 3, 8, 8))
    assert table.symbolic and table.flops(B=4) == pytest.approx(4 * table.flops())
    assert table.time() > 0


def test_optimize_for_gpu_target_builds_its_pipeline_and_stays_lossless() -> None:
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.scaled_dot_product_attention(self.q(x), self.k(x), self.v(x))

    model, x = Attention().eval(), torch.randn(2, 5, 16)
    fast = optimize(model, x, target="h100", compile=False)
    r = report(fast)
    assert r.pipeline == "cleanup,fuse(siblings=True),sdpa,channels_last" and r.target == "h100"
    assert r.result("fuse").metrics["fused_linears"] == 3
    assert_equivalent(model, fast, (x,))


def test_optimize_for_a_gpu_target_without_the_gpu_skips_lowering_with_one_warning(net, monkeypatch) -> None:
    """D14: the report said "compiled with inductor (max_autotune ...)" for a100 on a machine with no GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning) as caught:
        fast = optimize(net, x, target="a100", prune=0.5)
    skipped = [str(w.message) for w in caught if "lowering skipped" in str(w.message)]
    assert skipped == ["fxopt.optimize: lowering skipped: target 'a100' runs on cuda and this machine has no CUDA "
                       "device: the model stays on cpu, uncompiled (optimize on a machine with the GPU to lower for "
                       "it)"]
    r = report(fast)
    assert not r.lowered and not hasattr(fast, "_orig_mod")
    assert "compiled with" not in r.to_text() and "lowered: no (not compiled: target 'a100'" in r.to_text()
    assert [w for w in r.warnings if w.startswith("lowering skipped: target 'a100'")]
    assert r.pipeline.startswith("cleanup,fuse(siblings=True),prune(")  # the passes the target shapes still ran
    assert "round_to=4" in r.pipeline  # tensor-core channel multiple of a100 in fp32
    widths = [m.out_channels for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert widths and all(w % 4 == 0 for w in widths)


def test_measure_attaches_side_by_side_timings_to_the_report(net) -> None:
    from fxopt.api import measure

    x = torch.randn(1, 3, 8, 8)
    fast = optimize(net, x, compile=False)
    assert "measured: not timed on this machine" in report(fast).to_text()
    timed = measure(net, fast, rounds=3)
    assert report(fast) is timed and timed.measured is not None
    assert [t.label for t in timed.measured.timings] == ["original", "optimized"]
    text = timed.to_text()
    assert f"measured: {timed.measured['original'].to_text()} -> {timed.measured['optimized'].to_text()}" in text


def test_fxopt_save_load_and_measure_are_public() -> None:
    """D16: the docs used fxopt.save/fxopt.load, which did not exist."""
    import fxopt
    from fxopt import serialization

    assert fxopt.save is serialization.save and fxopt.load is serialization.load
    assert {"save", "load", "measure"} <= set(fxopt.__all__)


def _mlp_where_big_units_are_dead() -> nn.Module:
    """Hidden units 0-3 have large input weights but no output weight (dead: magnitude keeps them, Taylor drops
    them); units 4-7 have small input weights and carry the output."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    with torch.no_grad():
        model[0].weight[:4] *= 100.0
        model[2].weight[:, :4] = 0.0
    return model


def test_optimize_prune_taylor_uses_loss_fn_and_differs_from_magnitude() -> None:
    model = _mlp_where_big_units_are_dead()
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    calibration = [(x, y)]
    options = {"ratio": 0.5, "round_to": 1}
    calls = []

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls.append(target)
        return torch.nn.functional.mse_loss(out, target)

    taylor = optimize(model, x, prune={**options, "criterion": "taylor"}, calibration=calibration,
                      loss_fn=loss_fn, compile=False)
    assert calls and calls[0] is y  # the loss reached the criterion, with the batch's target
    magnitude = optimize(model, x, prune={**options, "criterion": "l2"}, compile=False)
    for pruned in (taylor, magnitude):
        assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    assert_equivalent(model, taylor, (x,), rtol=1e-4, atol=1e-5)  # it dropped the dead units
    assert not torch.allclose(model(x), magnitude(x), atol=1e-3)  # it dropped the live ones
    assert model[0].weight.grad is None  # the gradients were taken on a copy


def test_report_result_of_a_pass_that_did_not_run_raises_fxopt_error_listing_those_that_did(net) -> None:
    r = report(optimize(net, torch.randn(1, 3, 8, 8), compile=False))
    assert r.result("fuse").pass_name == "fuse"
    with pytest.raises(FxoptError, match="no pass 'prune' ran; passes that ran: cleanup, fuse"):
        r.result("prune")


def test_pass_error_and_edit_error_are_exported_fxopt_errors() -> None:
    import fxopt

    assert issubclass(fxopt.PassError, fxopt.FxoptError) and issubclass(fxopt.EditError, fxopt.FxoptError)
    assert {"PassError", "EditError", "AnalysisError"} <= set(fxopt.__all__)
