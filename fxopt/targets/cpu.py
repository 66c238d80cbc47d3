"""The host CPU as a target: cores and ISA detected, peaks estimated from them, optionally calibrated.

Estimates: fp32 peak = cores x clock x FLOPs/cycle of the widest vector FMA (64 for AVX-512, 32 for AVX2, 8
otherwise). bf16/fp16 are slow unless the CPU has AMX tiles: on AVX-512 machines without AMX, PyTorch's bf16 and
fp16 matmuls measured about 85x slower than fp32, so the cpu target lists them as slow and never picks them.
``calibrate_cpu`` replaces the estimates by measured matmul FLOP/s and copy bandwidth.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fxopt.targets.spec import LoweringRecipe, Target

log = logging.getLogger(__name__)

FLOPS_PER_CYCLE = {"AVX512": 64, "AVX2": 32}
SLOW_HALF_FACTOR = 1 / 85  # measured bf16/fp16 matmul speed relative to fp32 without AMX
CPU_EFFICIENCY = {"matmul": 0.6, "conv": 0.5, "grouped": 0.5, "depthwise": 0.08, "attention": 0.35}


def _cpuinfo() -> tuple[set[str], float]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set(), 2.5
    found = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    flags = set(found.group(1).split()) if found is not None else set()
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)]
    return flags, (max(mhz) / 1000 if mhz else 2.5)


def _cores() -> int:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count() or 1
    return max(1, min(affinity, torch.get_num_threads()))


@functools.cache
def detect_cpu() -> Target:
    """The host CPU: cores (affinity and torch threads), ISA (torch's CPU capability), estimated peaks."""
    flags, ghz = _cpuinfo()
    isa = torch.backends.cpu.get_cpu_capability()
    cores = _cores()
    fp32 = cores * ghz * 1e9 * FLOPS_PER_CYCLE.get(isa, 8)
    amx = "amx_bf16" in flags
    half = fp32 * (8 if amx else SLOW_HALF_FACTOR)
    int8 = fp32 * (4 if ("avx512_vnni" in flags or "avx_vnni" in flags) else 2)
    return Target(
        name="cpu", device="cpu",
        peak_flops={"fp64": fp32 / 2, "fp32": fp32, "bf16": half, "fp16": half, "int8": int8},
        memory_bandwidth=min(12e9 * cores, 100e9),
        lowering=LoweringRecipe(backend="inductor", mode=None, freezing=True, cuda_graphs=False, tf32=False),
        channel_alignment={"fp32": 1, "int8": 4},
        cores=cores, isa=isa, op_overhead_s=6e-6, efficiency=CPU_EFFICIENCY,
        channels_last=True, horizontal_fusion=False,
        slow_dtypes=() if amx else ("bf16", "fp16"), auto_precision=None,
    )


def calibrate_cpu(target: Target | None = None, seconds: float = 1.0) -> Target:
    """``target`` (the detected CPU by default) with fp32 peak and bandwidth replaced by measurements.

    Measures a 1024x1024 fp32 matmul and a 32 MiB copy for about ``seconds`` each.
    """
    target = target or detect_cpu()
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    flops = _rate(lambda: torch.mm(a, b), 2 * 1024**3, seconds)
    src = torch.empty(8 * 1024 * 1024)
    dst = torch.empty_like(src)
    bandwidth = _rate(lambda: dst.copy_(src), 2 * src.numel() * 4, seconds)
    scale = flops / target.peak_flops["fp32"]
    peaks = {k: v * scale for k, v in target.peak_flops.items()}
    log.info("calibrated %s: %.1f GFLOP/s fp32, %.1f GB/s", target.name, flops / 1e9, bandwidth / 1e9)
    return dataclasses.replace(target, peak_flops=peaks, memory_bandwidth=bandwidth)


def _rate(fn: Callable[[], object], work: float, seconds: float) -> float:
    fn()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return work / best
