"""Parameters, MACs and predicted latency of a model as a function of how many elements each class keeps.

Budgets ("keep half the MACs") need the cost of many candidate plans, so the cost is evaluated analytically on
the analysis' atomic classes instead of rebuilding models: an axis made of atoms ``a1 x a2`` has size
``kept[a1] * kept[a2]``, a parameter's size is the product of its axes, and a layer's MACs are the product of
the axes it multiplies over. Evaluating one plan costs a few thousand dictionary lookups.

Latency is predicted per node with a roofline (``max(flops / peak, bytes / bandwidth)``), plus a penalty for
weighted layers whose channel counts miss the target's alignment (odd widths measured 4-23% slower on CPU).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fxopt.analysis.analysis import Analysis
from fxopt.analysis.groups import Group
from fxopt.ops.view import PARAM_PREFIX, TensorRef

AxisTerm = tuple[int, tuple[int, ...]]  # (original size, atoms); atoms empty: the axis never changes size


@dataclass(frozen=True)
class LatencyModel:
    """Roofline numbers for latency prediction; ``from_target`` reads them from a Target when one is given.

    Attributes:
        peak_flops: sustained FLOP/s of dense matmuls.
        bandwidth: bytes/s of memory traffic.
        overhead: seconds per op launch.
        alignment: channel multiple the hardware prefers.
        misaligned_penalty: relative slowdown of a weighted layer whose channel count misses ``alignment``.
        itemsize: bytes per element.
    """

    peak_flops: float = 2e11
    bandwidth: float = 2e10
    overhead: float = 2e-6
    alignment: int = 8
    misaligned_penalty: float = 0.15
    itemsize: int = 4

    @staticmethod
    def from_target(target: Any) -> LatencyModel:
        """Roofline numbers of a ``fxopt.targets`` Target (fp32 peak and efficiency on matmuls, bandwidth, op
        overhead, channel alignment); defaults for None or a target name."""
        if target is None or isinstance(target, str):
            return LatencyModel()
        fields: dict[str, Any] = {}
        peak = getattr(target, "peak", None)
        if callable(peak):
            eff = getattr(target, "efficiency_of", None)
            fields["peak_flops"] = float(peak("fp32")) * (float(eff("matmul")) if callable(eff) else 1.0)
        bandwidth = getattr(target, "memory_bandwidth", None)
        if isinstance(bandwidth, (int, float)) and bandwidth > 0:
            fields["bandwidth"] = float(bandwidth)
        overhead = getattr(target, "op_overhead_s", None)
        if isinstance(overhead, (int, float)) and overhead > 0:
            fields["overhead"] = float(overhead)
        alignment = getattr(target, "alignment", None)
        if callable(alignment):
            fields["alignment"] = max(int(alignment("fp32")), 1)
        return LatencyModel(**fields)


@dataclass(frozen=True)
class Cost:
    """Cost of a model: parameter elements, multiply-accumulates, predicted seconds."""

    params: float
    macs: float
    latency: float

    def metric(self, name: str) -> float:
        """``params``, ``macs`` (``flops`` is the same ranking) or ``latency``."""
        key = "macs" if name == "flops" else name
        if key not in ("params", "macs", "latency"):
            raise ValueError(f"unknown budget metric {name!r}: use params, macs, flops or latency")
        return float(getattr(self, key))


@dataclass(frozen=True)
class _NodeTerm:
    macs: tuple[tuple[float, tuple[AxisTerm, ...]], ...]  # sum of coefficient * product of axes
    tensors: tuple[tuple[AxisTerm, ...], ...]  # every tensor read or written, for memory traffic
    channels: tuple[AxisTerm, ...]  # weight channel axes checked for alignment


class CostModel:
    """Analytic cost of ``analysis.gm`` for any number of kept elements per atomic class.

    Example:
        >>> cm = CostModel(analysis)
        >>> cm.evaluate(cm.kept_after({g: [0, 1, 2] for g in analysis.groups[:1]})).params
    """

    def __init__(self, analysis: Analysis, latency: LatencyModel | None = None) -> None:
        self.analysis = analysis
        self.latency_model = latency or LatencyModel()
        self.sizes: dict[int, int] = {}  # elements per atomic dim the terms below refer to
        self.params: list[tuple[AxisTerm, ...]] = []
        for name, p in analysis.gm.named_parameters():
            self.params.append(tuple(self._term(PARAM_PREFIX + name, d, s) for d, s in enumerate(p.shape)))
        self.nodes: list[_NodeTerm] = [t for n in analysis.gm.graph.nodes if (t := self._node(n)) is not None]

    def _term(self, key: str, dim: int, size: int) -> AxisTerm:
        dims = self.analysis.dims_of((key, dim))
        for d in dims:
            self.sizes.setdefault(d, self.analysis.size_of(d))
        return (int(size), dims)

    def _axes(self, ref: TensorRef | None, dims: Sequence[int] | None = None) -> tuple[AxisTerm, ...]:
        if ref is None:
            return ()
        ds = range(ref.ndim) if dims is None else [d % ref.ndim for d in dims]
        return tuple(self._term(ref.key, d, ref.shape[d]) for d in ds)

    def _node(self, node: Any) -> _NodeTerm | None:
        if node.op not in ("call_module", "call_function", "call_method"):
            return None
        view = self.analysis.registry.view(node, self.analysis.gm)
        outs = [self._axes(o) for o in view.outputs]
        ins = [self._axes(i) for i in view.inputs if i is not None]
        params = [self._axes(p) for p in view.params.values() if p is not None]
        if not outs:
            return None
        macs: list[tuple[float, tuple[AxisTerm, ...]]] = []
        channels: tuple[AxisTerm, ...] = ()
        w = view.params.get("weight")
        x = view.inputs[0] if view.inputs else None
        out = view.outputs[0]
        if view.kind == "linear" and w is not None:
            macs.append((1.0, self._axes(out) + self._axes(w, [1])))
            channels = self._axes(w)
        elif view.kind == "addmm" and w is not None:
            macs.append((1.0, self._axes(out) + self._axes(w, [0])))
            channels = self._axes(w)
        elif view.kind == "conv" and w is not None and x is not None:
            lead = x if view.attrs.get("transposed", False) else out
            macs.append((1.0, self._axes(lead) + self._axes(w, range(1, w.ndim))))
            channels = self._axes(w, [0, 1])
        elif view.kind == "matmul" and x is not None:
            macs.append((1.0, self._axes(out) + self._axes(x, [-1])))
        elif view.kind == "sdpa" and x is not None and view.inputs[1] is not None and view.inputs[2] is not None:
            k, v = view.inputs[1], view.inputs[2]
            macs.append((1.0, self._axes(x) + self._axes(k, [-2])))
            macs.append((1.0, self._axes(x, range(x.ndim - 1)) + self._axes(k, [-2]) + self._axes(v, [-1])))
        elif view.kind == "einsum":
            macs.extend(self._einsum(view))
        elif view.kind == "mha" and x is not None:
            tokens = self._axes(x, range(x.ndim - 1))
            for p in params:
                macs.append((1.0, tokens + p))
        tensors = tuple(outs + ins + params)
        return _NodeTerm(tuple(macs), tensors, channels)

    def _einsum(self, view: Any) -> list[tuple[float, tuple[AxisTerm, ...]]]:
        eq = str(view.attrs.get("equation", "")).replace(" ", "")
        if "->" not in eq or "..." in eq:
            return []
        specs = eq.split("->")[0].split(",")
        seen: dict[str, AxisTerm] = {}
        for spec, t in zip(specs, view.inputs):
            if t is None or len(spec) != t.ndim:
                return []
            for d, letter in enumerate(spec):
                if letter not in seen or seen[letter][0] == 1:
                    seen[letter] = self._term(t.key, d, t.shape[d])
        return [(1.0, tuple(seen.values()))]

    @staticmethod
    def _size(term: AxisTerm, kept: Mapping[int, int]) -> int:
        size, atoms = term
        if not atoms:
            return size
        out = 1
        for a in atoms:
            out *= kept[a]
        return out

    def _prod(self, terms: Sequence[AxisTerm], kept: Mapping[int, int]) -> float:
        out = 1.0
        for t in terms:
            out *= self._size(t, kept)
        return out

    def kept_after(self, removals: Mapping[Group, Sequence[int] | int]) -> dict[int, int]:
        """Kept elements per class after removing units (a list of indices, or a count) of each group."""
        kept = dict(self.sizes)
        for g, units in removals.items():
            n = units if isinstance(units, (int, np.integer)) else len(units)
            if not n:
                continue
            for c, index in g.index.items():
                kept[c] = kept.get(c, self.sizes.get(c, 0)) - int(n) * index.shape[1]
        return kept

    def evaluate(self, kept: Mapping[int, int] | None = None) -> Cost:
        """The cost with ``kept`` elements per class (default: nothing removed)."""
        k = self.sizes if kept is None else kept
        params = sum(self._prod(p, k) for p in self.params)
        lm = self.latency_model
        macs = 0.0
        seconds = 0.0
        for node in self.nodes:
            node_macs = sum(coef * self._prod(terms, k) for coef, terms in node.macs)
            moved = sum(self._prod(t, k) for t in node.tensors) * lm.itemsize
            t = max(2.0 * node_macs / lm.peak_flops, moved / lm.bandwidth) + lm.overhead
            if node.channels and lm.alignment > 1 and any(self._size(c, k) % lm.alignment for c in node.channels):
                t *= 1.0 + lm.misaligned_penalty
            macs += node_macs
            seconds += t
        return Cost(params, macs, seconds)


def count_macs(module: torch.nn.Module, inputs: Sequence[Any]) -> float:
    """Measured multiply-accumulates of one forward pass (torch's FLOP counter, halved)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(*inputs)
    return counter.get_total_flops() / 2.0


def ceil_div(a: int, b: int) -> int:
    """Integer ceiling of ``a / b``."""
    return -(-a // b)


def lcm(a: int, b: int) -> int:
    """Least common multiple."""
    return a * b // math.gcd(a, b)


__all__ = ["Cost", "CostModel", "LatencyModel", "ceil_div", "count_macs", "lcm"]
