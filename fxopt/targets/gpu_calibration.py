"""``calibrate_gpu()``: a GPU target from measurements on the CUDA device at hand.

Measures matmul FLOP/s per dtype (fp32 with TF32 off, TF32, bf16, fp16), copy bandwidth and the host time of one
small op, then builds the target from them (``target_from_measurements``, the pure half, testable anywhere). The
peaks are set so that a large matmul is predicted at the measured rate: each measured rate is divided by the
matmul efficiency the GPU targets assume.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from fxopt.errors import FxoptError
from fxopt.targets.gpus import GPU_EFFICIENCY, gpu_target
from fxopt.targets.spec import Target

log = logging.getLogger(__name__)

MATMUL_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""The dtypes ``calibrate_gpu`` times a matmul in (``"tf32"``: fp32 tensors with TF32 matmuls enabled)."""


@dataclass(frozen=True)
class GpuMeasurements:
    """What ``calibrate_gpu`` measured on one device.

    Attributes:
        device_name: the device's name (``torch.cuda.get_device_name``).
        matmul_flops: achieved FLOP/s of a large square matmul per dtype short name.
        bandwidth: achieved bytes/s of a large device-to-device copy (bytes read plus written).
        launch_s: host seconds per small op issued back to back (dispatch and kernel launch).
        memory_bytes: device memory.
        arch: compute capability as ``"sm_90"``.
    """

    device_name: str
    matmul_flops: Mapping[str, float] = field(hash=False)
    bandwidth: float
    launch_s: float
    memory_bytes: float = 0.0
    arch: str = ""


def target_from_measurements(m: GpuMeasurements, name: str = "cuda") -> Target:
    """A GPU target whose peaks, bandwidth and launch cost come from ``m``.

    The peak of a dtype is its measured matmul rate over the matmul efficiency, so the cost model predicts a large
    matmul at the measured rate; the other dtypes of the datasheet targets are not guessed.

    Raises:
        FxoptError: ``m`` has no fp32 matmul rate, or a rate, the bandwidth or the launch time is not positive.

    Example:
        >>> target_from_measurements(GpuMeasurements("H200", {"fp32": 50e12}, 4e12, 8e-6)).peak("fp32")
        71428571428571.43
    """
    if "fp32" not in m.matmul_flops:
        raise FxoptError(f"measurements of {m.device_name} lack the fp32 matmul rate; measured: "
                         f"{', '.join(m.matmul_flops) or 'none'}")
    bad = [f"{k}={v}" for k, v in {**m.matmul_flops, "bandwidth": m.bandwidth, "launch_s": m.launch_s}.items()
           if not v > 0]
    if bad:
        raise FxoptError(f"measurements of {m.device_name} must be positive: {', '.join(bad)} (measure again)")
    peaks = {k: float(v) / GPU_EFFICIENCY["matmul"] for k, v in m.matmul_flops.items()}
    return gpu_target(name, peaks, float(m.bandwidth), float(m.memory_bytes), m.arch, launch_s=float(m.launch_s))


def calibrate_gpu(name: str = "cuda", seconds: float = 0.5, device: int | None = None) -> Target:
    """A target measured on the current (or ``device``) CUDA GPU: matmul FLOP/s per dtype, bandwidth, launch cost.

    Takes a few seconds (``seconds`` per measurement). The TF32 flags are restored afterwards.

    Raises:
        FxoptError: no CUDA device is available.

    Example:
        >>> fxopt.optimize(model.cuda(), x.cuda(), target=calibrate_gpu())
    """
    return target_from_measurements(measure_gpu(seconds, device), name)


def measure_gpu(seconds: float = 0.5, device: int | None = None) -> GpuMeasurements:
    """Measure the current (or ``device``) CUDA GPU; see ``calibrate_gpu``.

    Raises:
        FxoptError: no CUDA device is available.
    """
    if not torch.cuda.is_available():
        raise FxoptError("calibrate_gpu needs a CUDA device and torch.cuda.is_available() is False here: run it on "
                         "the GPU machine, or use a datasheet target (get_target('h100'))")
    dev = torch.device("cuda", torch.cuda.current_device() if device is None else device)
    props = torch.cuda.get_device_properties(dev)
    flops = {}
    for short, dtype in MATMUL_DTYPES.items():
        flops[short] = _matmul_rate(dev, dtype, tf32=short == "tf32", seconds=seconds)
    src = torch.empty(64 * 1024 * 1024, device=dev)  # 256 MiB of fp32
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * 4 / _best_seconds(lambda: dst.copy_(src), seconds)
    tiny = torch.zeros(1, device=dev)
    calls = 200
    launch = _best_seconds(lambda: [tiny.add_(1) for _ in range(calls)], seconds) / calls
    log.info("calibrated %s: fp32 %.1f TFLOP/s, %.0f GB/s, %.1f us per op", props.name, flops["fp32"] / 1e12,
             bandwidth / 1e9, launch * 1e6)
    return GpuMeasurements(props.name, flops, bandwidth, launch, float(props.total_memory),
                           f"sm_{props.major}{props.minor}")


def _matmul_rate(dev: torch.device, dtype: torch.dtype, tf32: bool, seconds: float) -> float:
    n = 4096
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        return 2 * n**3 / _best_seconds(lambda: torch.mm(a, b), seconds)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _best_seconds(fn: Callable[[], object], seconds: float) -> float:
    """Fastest of repeated synchronized runs of ``fn`` over about ``seconds`` (after one warm-up run)."""
    fn()
    torch.cuda.synchronize()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best
