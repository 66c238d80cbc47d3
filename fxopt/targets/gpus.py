"""NVIDIA data-center GPUs from their public spec sheets (SXM parts; dense and 2:4-sparse tensor-core peaks)."""

from __future__ import annotations

from fxopt.targets.spec import LoweringRecipe, Target

_GPU_LOWERING = LoweringRecipe(backend="inductor", mode="max-autotune", freezing=True, cuda_graphs=True, tf32=True)
_GPU_ALIGNMENT = {"fp32": 4, "tf32": 4, "bf16": 8, "fp16": 8, "fp8": 16, "int8": 16}
_GPU_EFFICIENCY = {"matmul": 0.7, "conv": 0.6, "depthwise": 0.1, "attention": 0.5}


def _gpu(name: str, dense: dict[str, float], bandwidth: float, memory: float, arch: str) -> Target:
    sparse = {k: 2 * v for k, v in dense.items() if k in ("tf32", "bf16", "fp16", "fp8", "int8")}
    return Target(name=name, device="cuda", peak_flops=dense, sparse_flops=sparse, memory_bandwidth=bandwidth,
                  lowering=_GPU_LOWERING, channel_alignment=_GPU_ALIGNMENT, isa=arch, memory_bytes=memory,
                  op_overhead_s=4e-6, efficiency=_GPU_EFFICIENCY, channels_last=True, horizontal_fusion=True,
                  auto_precision="bf16")


def a100() -> Target:
    """A100 SXM 80GB: 312 TFLOP/s bf16 dense, 2.0 TB/s."""
    return _gpu("a100", {"fp64": 19.5e12, "fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12,
                         "int8": 624e12}, 2.039e12, 80e9, "sm_80")


def h100() -> Target:
    """H100 SXM 80GB: 989 TFLOP/s bf16 dense, 3.35 TB/s."""
    return _gpu("h100", {"fp64": 67e12, "fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12,
                         "fp8": 1978.9e12, "int8": 1978.9e12}, 3.35e12, 80e9, "sm_90")


def h200() -> Target:
    """H200 SXM 141GB: H100's compute with 4.8 TB/s of HBM3e."""
    return _gpu("h200", {"fp64": 67e12, "fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12,
                         "fp8": 1978.9e12, "int8": 1978.9e12}, 4.8e12, 141e9, "sm_90")
