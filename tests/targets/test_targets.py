"""Targets as data, and the pipelines built from them."""

from __future__ import annotations

import dataclasses

import pytest

from fxopt.errors import FxoptError, PassError
from fxopt.passes import PASSES
from fxopt.targets import TARGETS, OptimizeOptions, get_target, pipeline_for, register_target


def _names(passes) -> list[str]:  # type: ignore[no-untyped-def]
    return [str(p) for p in passes]


def test_get_target_unknown_name_lists_registered() -> None:
    with pytest.raises(FxoptError, match="unknown target 'tpu'.*a100, cpu, h100, h200"):
        get_target("tpu")


def test_cpu_target_is_detected_with_cores_isa_and_slow_half_precision() -> None:
    cpu = get_target("cpu")
    assert cpu.device == "cpu" and cpu.cores >= 1 and cpu.isa
    assert cpu.peak("fp32") > 0 and cpu.memory_bandwidth > 0
    if "bf16" in cpu.slow_dtypes:
        assert cpu.peak("bf16") < cpu.peak("fp32") / 10


def test_gpu_targets_have_ordered_peaks_and_double_sparse_peaks() -> None:
    a100, h100, h200 = (get_target(n) for n in ("a100", "h100", "h200"))
    assert a100.peak("bf16") == 312e12 and h100.peak("bf16") > 3 * a100.peak("bf16")
    assert h200.peak("bf16") == h100.peak("bf16") and h200.memory_bandwidth > h100.memory_bandwidth
    assert h100.peak("bf16", sparse=True) == 2 * h100.peak("bf16") and h100.supports_2_4
    assert h100.alignment("bf16") == 8 and h100.alignment("int8") == 16
    assert a100.peak("torch_unknown_dtype") == a100.peak("fp32")


def test_pipeline_for_cpu_lowers_with_freezing_and_no_sibling_fusion() -> None:
    passes = pipeline_for(get_target("cpu"), OptimizeOptions())
    assert _names(passes) == ["cleanup", "fuse", "channels_last", "lower(freezing=True,select=True)"]


def test_pipeline_for_gpu_fuses_siblings_and_times_default_and_cuda_graphs_without_tf32() -> None:
    passes = pipeline_for(get_target("h100"), OptimizeOptions())
    assert _names(passes) == ["cleanup", "fuse(siblings=True)", "sdpa", "channels_last",
                              "lower(freezing=True,alternatives=('reduce-overhead',),select=True)"]


def test_pipeline_for_gpu_auto_precision_picks_bf16_and_tf32() -> None:
    passes = pipeline_for(get_target("a100"), OptimizeOptions(precision="auto"))
    assert "precision" in _names(passes) and passes[-1].tf32


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_pipeline_for_cpu_refuses_slow_half_precision(precision: str) -> None:
    cpu = dataclasses.replace(get_target("cpu"), slow_dtypes=("bf16", "fp16"))
    with pytest.raises(PassError, match="slower than fp32"):
        pipeline_for(cpu, OptimizeOptions(precision=precision))


def test_pipeline_for_cpu_auto_precision_stays_fp32() -> None:
    passes = pipeline_for(get_target("cpu"), OptimizeOptions(precision="auto", compile=False))
    assert "precision" not in _names(passes)


def test_pipeline_for_prune_without_registered_pass_names_it() -> None:
    with PASSES.scoped():
        PASSES.passes.pop("prune", None)
        with pytest.raises(PassError, match=r"optimize\(prune=\.\.\.\) needs a pass registered as 'prune'"):
            pipeline_for(get_target("cpu"), OptimizeOptions(prune=0.5))


def test_pipeline_for_prune_builds_registered_pass_after_fuse() -> None:
    if "prune" not in PASSES:
        pytest.skip("no prune pass registered in this build")
    passes = pipeline_for(get_target("h100"), OptimizeOptions(prune=0.25, compile=False))
    names = [p.name for p in passes]
    assert names == ["cleanup", "fuse", "prune", "cleanup", "sdpa", "channels_last"]
    assert passes[2].ratio == 0.25


def test_register_target_custom_target_drives_pipeline() -> None:
    with TARGETS.scoped():
        register_target("cpu_nhwc_off", dataclasses.replace(get_target("cpu"), name="x", channels_last=False))
        passes = pipeline_for(get_target("cpu_nhwc_off"), OptimizeOptions(compile=False))
    assert _names(passes) == ["cleanup", "fuse"]
    assert "cpu_nhwc_off" not in TARGETS.names()


def test_describe_explains_slow_dtypes() -> None:
    """D6: the CPU's bf16 peak showed as "0.00391 TFLOP/s" with no explanation."""
    import dataclasses

    cpu = dataclasses.replace(get_target("cpu"), slow_dtypes=("bf16",))
    text = cpu.describe()
    assert "bf16 " in text and "(no native support: emulated, slower than fp32)" in text
    assert "fp32 " in text and text.count("emulated") == 1
