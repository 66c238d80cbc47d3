"""NVIDIA data-center GPUs from their public spec sheets (SXM parts; dense and 2:4-sparse tensor-core peaks).

Beyond the datasheet peaks, a GPU target says how eager PyTorch runs on it:

- fp32 convolutions run at the TF32 peak, because cuDNN's TF32 flag is on by default; fp32 matmuls run at the
  fp32 peak unless the user enabled TF32 for them (``tf32_allowed`` reads the flags when the target is built).
- each op is at least one kernel launch (``overheads``); launches queue while the previous kernel runs, so an
  op takes ``max(launch, work)`` (``launch_overlaps``). Small models are launch-bound.
- small GEMMs and convolutions cannot fill the device: an op of ``f`` FLOPs runs at ``f / (f + ramp_flops)`` of
  its category's efficiency.
- depthwise and grouped convolutions use no tensor cores and reuse little: they run at a small fraction of the
  fp32 peak and are mostly memory-bound, like elementwise and normalisation ops.

The efficiencies, launch costs and ramps are set so that the ranking of eager times measured on an H200 (fp32,
batch 32: wide_resnet50_2 7.9 ms, regnet_y_1_6gf 16.5 ms, swin_t 13.7 ms, mobilenet_v3_large 3.4 ms) comes out
right; ``calibrate_gpu`` measures the peaks, bandwidth and launch cost of the GPU at hand instead.
"""

from __future__ import annotations

import torch

from fxopt.targets.spec import LoweringRecipe, Target

GPU_LOWERING = LoweringRecipe(backend="inductor", mode=None, freezing=True, cuda_graphs=False, tf32=True,
                              alternatives=("reduce-overhead",))
"""torch.compile's default and ``reduce-overhead`` (CUDA graphs) are compiled and timed; the fastest is kept."""

GPU_ALIGNMENT = {"fp32": 4, "tf32": 4, "bf16": 8, "fp16": 8, "fp8": 16, "int8": 16}
GPU_EFFICIENCY = {"matmul": 0.6, "conv": 0.3, "depthwise": 0.06, "grouped": 0.04, "attention": 0.5}
"""Achievable fraction of the peak per op category (the tensor-core peak for matmul, conv and attention)."""
GPU_RAMP_FLOPS = {"matmul": 2e9, "conv": 2e9, "attention": 2e9, "grouped": 2e8, "depthwise": 2e8}
"""FLOPs at which one op reaches half its category's efficiency."""
GPU_LAUNCH_S = 10e-6
"""Host time of one elementwise op in eager PyTorch (Python module call, dispatch, kernel launch)."""
GPU_OVERHEADS = {"conv": 25e-6, "depthwise": 25e-6, "grouped": 25e-6, "matmul": 15e-6, "attention": 20e-6,
                 "norm": 15e-6}
"""Host time per op where it exceeds one plain launch (cuDNN and cuBLAS calls, several kernels per op)."""


def tf32_categories(conv_tf32: bool, matmul_tf32: bool) -> tuple[str, ...]:
    """The op categories whose fp32 ops run in TF32, given PyTorch's two TF32 switches."""
    return (("conv",) if conv_tf32 else ()) + (("matmul", "attention") if matmul_tf32 else ())


def tf32_allowed() -> tuple[str, ...]:
    """The op categories PyTorch runs in TF32 for fp32 tensors under the current flags.

    cuDNN convolutions use TF32 unless ``torch.backends.cudnn.allow_tf32`` (or its ``conv.fp32_precision``) is
    turned off, which is PyTorch's default; matmuls use it only when ``torch.backends.cuda.matmul.allow_tf32`` is
    set or ``torch.set_float32_matmul_precision`` is ``"high"`` or ``"medium"``.

    Example:
        >>> tf32_allowed()   # PyTorch's defaults
        ('conv',)
    """
    conv = _precision(getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None),
                      bool(torch.backends.cudnn.allow_tf32))
    matmul = _precision(getattr(torch.backends.cuda.matmul, "fp32_precision", None),
                        bool(torch.backends.cuda.matmul.allow_tf32)
                        or torch.get_float32_matmul_precision() != "highest")
    return tf32_categories(conv, matmul)


def _precision(setting: object, legacy: bool) -> bool:
    """TF32 on from a ``fp32_precision`` setting (``"tf32"``/``"ieee"``), else from the legacy flag."""
    if isinstance(setting, str) and setting in ("tf32", "ieee"):
        return setting == "tf32"
    return legacy


def gpu_target(name: str, dense: dict[str, float], bandwidth: float, memory: float, arch: str,
               launch_s: float = GPU_LAUNCH_S) -> Target:
    """A GPU target from its dense peaks per dtype, bandwidth (bytes/s), memory (bytes) and architecture.

    The 2:4-sparse peaks are twice the dense tensor-core ones; TF32 use follows ``tf32_allowed()`` now; the
    launch cost of every op category scales with ``launch_s`` (``calibrate_gpu`` measures it).
    """
    sparse = {k: 2 * v for k, v in dense.items() if k in ("tf32", "bf16", "fp16", "fp8", "int8")}
    scale = launch_s / GPU_LAUNCH_S
    return Target(name=name, device="cuda", peak_flops=dense, sparse_flops=sparse, memory_bandwidth=bandwidth,
                  lowering=GPU_LOWERING, channel_alignment=GPU_ALIGNMENT, isa=arch, memory_bytes=memory,
                  op_overhead_s=launch_s, overheads={k: v * scale for k, v in GPU_OVERHEADS.items()},
                  launch_overlaps=True, efficiency=GPU_EFFICIENCY, ramp_flops=GPU_RAMP_FLOPS,
                  tf32_categories=tf32_allowed(), channels_last=True, horizontal_fusion=True,
                  auto_precision="bf16")


def a100() -> Target:
    """A100 SXM 80GB: 312 TFLOP/s bf16 dense, 2.0 TB/s."""
    return gpu_target("a100", {"fp64": 19.5e12, "fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12,
                               "int8": 624e12}, 2.039e12, 80e9, "sm_80")


def h100() -> Target:
    """H100 SXM 80GB: 989 TFLOP/s bf16 dense, 3.35 TB/s."""
    return gpu_target("h100", {"fp64": 67e12, "fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12,
                               "fp16": 989.4e12, "fp8": 1978.9e12, "int8": 1978.9e12}, 3.35e12, 80e9, "sm_90")


def h200() -> Target:
    """H200 SXM 141GB: H100's compute with 4.8 TB/s of HBM3e."""
    return gpu_target("h200", {"fp64": 67e12, "fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12,
                               "fp16": 989.4e12, "fp8": 1978.9e12, "int8": 1978.9e12}, 4.8e12, 141e9, "sm_90")
