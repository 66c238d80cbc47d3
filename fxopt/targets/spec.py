"""Targets as data: what a device can do (peak FLOP/s per dtype, bandwidth, alignment) and how to lower for it.

Adding hardware means adding a ``Target``; passes and the pipeline builder read its fields, never its name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fxopt.analysis.cost import DTYPE_NAMES


@dataclass(frozen=True)
class LoweringRecipe:
    """How ``torch.compile`` should be called for a target.

    Attributes:
        backend: the torch.compile backend.
        mode: the torch.compile mode of the first candidate (None: torch.compile's default).
        freezing: let inductor treat parameters as constants (folds weights, prepacks them; inference only).
        cuda_graphs: capture CUDA graphs.
        tf32: the device has TF32 matmuls; they are enabled only when the precision option allows it.
        alternatives: further torch.compile modes compiled as candidates (``"reduce-overhead"`` on GPUs); the
            lowering times every candidate and eager on the example inputs and keeps the fastest.
    """

    backend: str = "inductor"
    mode: str | None = None
    freezing: bool = False
    cuda_graphs: bool = False
    tf32: bool = False
    alternatives: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    """A hardware target.

    Attributes:
        name: registry name (``"cpu"``, ``"a100"``, ...).
        device: torch device type the model runs on.
        peak_flops: dense peak FLOP/s per dtype short name (``"fp32"``, ``"tf32"``, ``"bf16"``, ...).
        sparse_flops: peak FLOP/s with 2:4 semi-structured sparsity, per dtype (empty: no 2:4 support).
        memory_bandwidth: main-memory bandwidth in bytes/s.
        channel_alignment: channel multiple that runs at full speed, per dtype.
        lowering: the torch.compile recipe.
        cores: CPU cores used (0 for GPUs).
        isa: instruction set (``"AVX512"``) or architecture (``"sm_90"``).
        memory_bytes: device memory.
        op_overhead_s: fixed cost per op (dispatch or kernel launch) in the roofline model.
        overheads: the fixed cost per op of some op categories, where it differs from ``op_overhead_s`` (a
            cuDNN convolution launches more than an elementwise kernel).
        launch_overlaps: the fixed cost overlaps the work (GPUs: the host queues the next kernel while the
            device runs this one), so an op takes ``max(overhead, work)``; else (CPUs) ``overhead + work``.
        efficiency: achievable fraction of peak compute per op category (``"matmul"``, ``"conv"``,
            ``"depthwise"``, ``"grouped"``, ``"attention"``, ...); missing categories use 1.0.
        ramp_flops: per op category, the FLOPs of one op at which it reaches half its ``efficiency``: small
            GEMMs and convolutions cannot fill the device (an op of ``f`` FLOPs runs at
            ``efficiency * f / (f + ramp)``); missing categories have no ramp.
        tf32_categories: op categories whose fp32 ops run at the ``"tf32"`` peak (PyTorch's TF32 flags when the
            target was built: cuDNN convolutions use TF32 by default, matmuls do not; see
            ``fxopt.targets.gpus.tf32_allowed``).
        channels_last: conv nets run faster in channels_last memory format.
        horizontal_fusion: fusing sibling matmuls pays off.
        slow_dtypes: dtypes slower than fp32 here; the pipeline refuses them as precision.
        auto_precision: the precision ``precision="auto"`` picks (None: stay in fp32).
    """

    name: str
    device: str
    peak_flops: Mapping[str, float] = field(hash=False)
    memory_bandwidth: float
    lowering: LoweringRecipe
    sparse_flops: Mapping[str, float] = field(default_factory=dict, hash=False)
    channel_alignment: Mapping[str, int] = field(default_factory=dict, hash=False)
    cores: int = 0
    isa: str = ""
    memory_bytes: float = 0.0
    op_overhead_s: float = 5e-6
    overheads: Mapping[str, float] = field(default_factory=dict, hash=False)
    launch_overlaps: bool = False
    efficiency: Mapping[str, float] = field(default_factory=dict, hash=False)
    ramp_flops: Mapping[str, float] = field(default_factory=dict, hash=False)
    tf32_categories: tuple[str, ...] = ()
    channels_last: bool = True
    horizontal_fusion: bool = False
    slow_dtypes: tuple[str, ...] = ()
    auto_precision: str | None = None

    def peak(self, dtype: str, sparse: bool = False) -> float:
        """Peak FLOP/s for ``dtype`` (short name or torch dtype name); fp32's when the dtype is not listed."""
        key = DTYPE_NAMES.get(dtype, dtype)
        table = self.sparse_flops if sparse and self.sparse_flops else self.peak_flops
        return float(table.get(key, self.peak_flops.get(key, self.peak_flops["fp32"])))

    @property
    def supports_2_4(self) -> bool:
        """Whether 2:4 semi-structured sparsity runs faster here."""
        return bool(self.sparse_flops)

    def alignment(self, dtype: str = "fp32") -> int:
        """Channel multiple for full speed with ``dtype`` (1 when the target does not care)."""
        return int(self.channel_alignment.get(DTYPE_NAMES.get(dtype, dtype), 1))

    def efficiency_of(self, category: str) -> float:
        """Achievable fraction of peak compute for an op category."""
        return float(self.efficiency.get(category, 1.0))

    def overhead_of(self, category: str) -> float:
        """Fixed cost in seconds of one op of ``category`` (``op_overhead_s`` unless ``overheads`` lists it)."""
        return float(self.overheads.get(category, self.op_overhead_s))

    def ramp_of(self, category: str) -> float:
        """FLOPs at which one op of ``category`` reaches half its efficiency (0: no ramp)."""
        return float(self.ramp_flops.get(category, 0.0))

    def compute_dtype(self, dtype: str, category: str) -> str:
        """The dtype whose peak an op of ``category`` on ``dtype`` tensors runs at: fp32 runs as TF32 where
        ``tf32_categories`` says so and the target has a TF32 peak."""
        if dtype == "fp32" and category in self.tf32_categories and "tf32" in self.peak_flops:
            return "tf32"
        return dtype

    def describe(self) -> str:
        """A one-line human description."""
        flops = ", ".join(f"{k} {v / 1e12:.3g}" + (" (no native support: emulated, slower than fp32)"
                                                    if k in self.slow_dtypes else "")
                          for k, v in self.peak_flops.items())
        where = f"{self.cores} cores {self.isa}" if self.cores else self.isa
        return (f"{self.name} ({self.device}{', ' + where if where else ''}): peak TFLOP/s {flops}; "
                f"{self.memory_bandwidth / 1e9:.0f} GB/s")

    def options(self) -> dict[str, Any]:
        """The target's fields as plain values (for reports)."""
        return {"name": self.name, "device": self.device, "cores": self.cores, "isa": self.isa,
                "peak_flops": dict(self.peak_flops), "memory_bandwidth": self.memory_bandwidth}
