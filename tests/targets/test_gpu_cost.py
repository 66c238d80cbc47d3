"""The GPU cost model: TF32 where PyTorch uses it, launch cost overlapping the work, a size ramp, grouped convs,
and GPU targets built from measurements."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

import fxopt
from fxopt.analysis.cost import roofline_time
from fxopt.errors import FxoptError
from fxopt.pruning import LatencyModel
from fxopt.targets import GpuMeasurements, calibrate_gpu, get_target, target_from_measurements, tf32_allowed
from fxopt.targets.gpus import tf32_categories


def test_tf32_allowed_follows_pytorch_defaults_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tf32_allowed() == ("conv",)  # cuDNN convs in TF32 by default, matmuls in full fp32
    with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
        assert tf32_allowed() == ()
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    assert tf32_allowed() == ("conv", "matmul", "attention")
    assert tf32_categories(False, True) == ("matmul", "attention")


def test_gpu_fp32_conv_runs_at_tf32_peak_and_matmul_at_fp32_peak() -> None:
    h100 = get_target("h100")
    assert h100.compute_dtype("fp32", "conv") == "tf32" and h100.compute_dtype("fp32", "matmul") == "fp32"
    assert h100.compute_dtype("bf16", "conv") == "bf16"
    ieee = dataclasses.replace(h100, tf32_categories=())
    big = 1e13  # compute-bound: 10 TFLOP
    assert roofline_time(ieee, "conv", "fp32", big, 0) / roofline_time(h100, "conv", "fp32", big, 0) == \
        pytest.approx(h100.peak("tf32") / h100.peak("fp32"), rel=1e-3)


def test_gpu_launch_overlaps_work_but_adds_to_it_on_cpu() -> None:
    h100, cpu = get_target("h100"), get_target("cpu")
    assert roofline_time(h100, "elementwise", "fp32", 10, 80) == h100.overhead_of("elementwise")
    huge = 8e9  # bytes: 8 GB of traffic far exceeds a launch
    assert roofline_time(h100, "elementwise", "fp32", 0, huge) == pytest.approx(huge / h100.memory_bandwidth)
    assert roofline_time(cpu, "elementwise", "fp32", 0, 80) == pytest.approx(80 / cpu.memory_bandwidth
                                                                                + cpu.op_overhead_s)
    assert h100.overhead_of("conv") > h100.overhead_of("elementwise") == h100.op_overhead_s


def test_gpu_small_matmuls_run_below_peak() -> None:
    h100 = get_target("h100")
    rate = [f / roofline_time(h100, "matmul", "bf16", f, 0) for f in (1e8, 1e12)]
    assert rate[0] < 0.1 * rate[1]  # 100 MFLOP cannot fill the device
    assert rate[1] == pytest.approx(h100.peak("bf16") * h100.efficiency_of("matmul"), rel=0.01)


def test_gpu_grouped_conv_is_slower_per_flop_than_dense_conv() -> None:
    x = torch.randn(32, 64, 28, 28)
    h200 = get_target("h200")
    dense, grouped = (fxopt.cost(nn.Conv2d(64, 64, 3, padding=1, groups=g), x, target=h200) for g in (1, 8))
    assert [r.category for r in grouped.rows] == ["grouped"]
    assert grouped.time() / grouped.flops() > 3 * dense.time() / dense.flops()


def test_pruning_latency_model_times_nodes_like_its_target() -> None:
    h200 = get_target("h200")
    lm = LatencyModel.from_target(h200)
    for category, dtype, flops, nbytes in [("conv", "fp32", 3e9, 1e7), ("elementwise", "fp32", 1e3, 8e3),
                                           ("grouped", "bf16", 1e8, 1e8), ("matmul", "fp32", 1e9, 1e6)]:
        assert roofline_time(lm, category, dtype, flops, nbytes) == pytest.approx(
            roofline_time(h200, category, dtype, flops, nbytes))


def test_target_from_measurements_predicts_a_large_matmul_at_the_measured_rate() -> None:
    m = GpuMeasurements("Fake GPU", {"fp32": 50e12, "tf32": 300e12, "bf16": 600e12}, 4e12, 7e-6, 80e9, "sm_90")
    t = target_from_measurements(m, name="mine")
    assert t.name == "mine" and t.device == "cuda" and t.memory_bandwidth == 4e12 and t.isa == "sm_90"
    flops = 1e14
    assert flops / roofline_time(t, "matmul", "bf16", flops, 0) == pytest.approx(600e12, rel=0.01)
    assert t.op_overhead_s == 7e-6 and t.overhead_of("conv") > 7e-6 and t.launch_overlaps
    assert t.peak("fp16") == t.peak("fp32")  # not measured: not guessed


@pytest.mark.parametrize("bad", [{"matmul_flops": {"bf16": 1e12}}, {"bandwidth": 0.0}, {"launch_s": -1.0}])
def test_target_from_measurements_refuses_missing_or_non_positive_figures(bad: dict[str, object]) -> None:
    m = dataclasses.replace(GpuMeasurements("Fake GPU", {"fp32": 50e12}, 4e12, 7e-6), **bad)  # type: ignore[arg-type]
    with pytest.raises(FxoptError, match="Fake GPU"):
        target_from_measurements(m)


def test_calibrate_gpu_without_cuda_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FxoptError, match="needs a CUDA device"):
        calibrate_gpu()


@pytest.mark.zoo
def test_gpu_cost_ranks_the_h200_measurements() -> None:
    """Eager fp32 at batch 32 on an H200 measured regnet_y_1_6gf 16.5 ms > swin_t 13.7 > wide_resnet50_2 7.9 >
    mobilenet_v3_large 3.4 (issue 14); the datasheet model without TF32 and launches ranked them 0.59."""
    torchvision = pytest.importorskip("torchvision")
    x = torch.randn(1, 3, 224, 224)
    names = ["regnet_y_1_6gf", "swin_t", "wide_resnet50_2", "mobilenet_v3_large"]
    predicted = [fxopt.cost(getattr(torchvision.models, n)().eval(), x, target="h200").time(B=32) for n in names]
    assert predicted == sorted(predicted, reverse=True), dict(zip(names, predicted))
