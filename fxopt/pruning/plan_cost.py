"""Parameters, MACs and predicted latency of a model as a function of how many elements each class keeps.

Budgets ("keep half the MACs") need the cost of many candidate plans, so the cost is evaluated analytically on
the analysis' atomic classes instead of rebuilding models: an axis made of atoms ``a1 x a2`` has size
``kept[a1] * kept[a2]`` and a parameter's size is the product of its axes. A node's MACs, FLOPs and bytes are
its op kind's registered cost (``REGISTRY.cost``, the formulas ``fxopt.cost`` uses too) read with these sizes:
polynomials in the kept counts, compiled once, so evaluating one plan costs a few thousand multiplications.

Latency is predicted per node with the roofline ``fxopt.cost`` uses (``fxopt.analysis.cost.roofline_time``:
``max(flops / (peak * efficiency), bytes / bandwidth) + overhead``), times a penalty for layers whose channel
counts miss the target's alignment (odd widths measured 4-23% slower on CPU).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy
import torch
import torch.fx as fx

from fxopt.analysis.analysis import Analysis
from fxopt.analysis.cost import DTYPE_NAMES, roofline_time, short_dtype
from fxopt.analysis.groups import Group
from fxopt.ops.cost import CATEGORIES, Sizes
from fxopt.ops.view import PARAM_PREFIX, TensorRef

AxisTerm = tuple[int, tuple[int, ...]]  # (original size, atoms); atoms empty: the axis never changes size
Polynomial = tuple[tuple[float, tuple[tuple[int, int], ...]], ...]  # sum of coef * prod(kept[atom] ** power)


@dataclass(frozen=True)
class LatencyModel:
    """The roofline latency is predicted with, plus the alignment penalty; a ``Roofline`` itself.

    ``from_target`` reads the numbers from a Target; without one, the defaults stand for a modest CPU.

    Attributes:
        peak_flops: dense fp32 FLOP/s, and the peak of every dtype ``peaks`` does not list.
        bandwidth: bytes/s of memory traffic.
        overhead: seconds per op launch.
        alignment: channel multiple the hardware prefers.
        misaligned_penalty: relative slowdown of a layer whose channel count misses ``alignment``.
        peaks: peak FLOP/s per dtype short name (``"bf16"``, ...).
        efficiency: achievable fraction of peak per op category; missing categories use 1.0.
        overheads: seconds per op launch of the categories whose overhead is not ``overhead``.
        launch_overlaps: the launch overlaps the work (GPU: ``max``) instead of adding to it (CPU).
        ramp_flops: per op category, the FLOPs at which an op reaches half its efficiency.
        tf32_categories: op categories whose fp32 ops run at the ``"tf32"`` peak.
        name: the target's name.
        device: the target's torch device type.
    """

    peak_flops: float = 2e11
    bandwidth: float = 2e10
    overhead: float = 2e-6
    alignment: int = 8
    misaligned_penalty: float = 0.15
    peaks: Mapping[str, float] = field(default_factory=dict, hash=False)
    efficiency: Mapping[str, float] = field(default_factory=dict, hash=False)
    overheads: Mapping[str, float] = field(default_factory=dict, hash=False)
    launch_overlaps: bool = False
    ramp_flops: Mapping[str, float] = field(default_factory=dict, hash=False)
    tf32_categories: tuple[str, ...] = ()
    name: str = "default"
    device: str = "cpu"

    @staticmethod
    def from_target(target: Any) -> LatencyModel:
        """Roofline numbers of a ``fxopt.targets`` Target (peaks per dtype, efficiency per op category,
        bandwidth, op overhead, channel alignment); defaults for None or a target name."""
        if target is None or isinstance(target, str):
            return LatencyModel()
        fields: dict[str, Any] = {}
        peak = getattr(target, "peak", None)
        if callable(peak):
            fields["peak_flops"] = float(peak("fp32"))
            fields["peaks"] = {d: float(peak(d)) for d in sorted({*DTYPE_NAMES.values(), "tf32"})}
        efficiency = getattr(target, "efficiency_of", None)
        if callable(efficiency):
            fields["efficiency"] = {c: float(efficiency(c)) for c in CATEGORIES}
        bandwidth = getattr(target, "memory_bandwidth", None)
        if isinstance(bandwidth, (int, float)) and bandwidth > 0:
            fields["bandwidth"] = float(bandwidth)
        overhead = getattr(target, "op_overhead_s", None)
        if isinstance(overhead, (int, float)) and overhead > 0:
            fields["overhead"] = float(overhead)
        for key in ("overheads", "ramp_flops"):
            if isinstance(getattr(target, key, None), Mapping):
                fields[key] = dict(getattr(target, key))
        fields["launch_overlaps"] = bool(getattr(target, "launch_overlaps", False))
        fields["tf32_categories"] = tuple(getattr(target, "tf32_categories", ()))
        alignment = getattr(target, "alignment", None)
        if callable(alignment):
            fields["alignment"] = max(int(alignment("fp32")), 1)
        for key in ("name", "device"):
            if isinstance(getattr(target, key, None), str):
                fields[key] = getattr(target, key)
        return LatencyModel(**fields)

    @property
    def memory_bandwidth(self) -> float:
        """``bandwidth``, under its ``Roofline`` name."""
        return self.bandwidth

    @property
    def op_overhead_s(self) -> float:
        """``overhead``, under its ``Roofline`` name."""
        return self.overhead

    def peak(self, dtype: str, sparse: bool = False) -> float:
        """Peak FLOP/s for a dtype short name (``sparse`` is ignored: pruned layers stay dense)."""
        return float(self.peaks.get(dtype, self.peak_flops))

    def efficiency_of(self, category: str) -> float:
        """Achievable fraction of peak compute for an op category."""
        return float(self.efficiency.get(category, 1.0))

    def overhead_of(self, category: str) -> float:
        """Seconds per launch of an op of ``category``."""
        return float(self.overheads.get(category, self.overhead))

    def ramp_of(self, category: str) -> float:
        """FLOPs at which an op of ``category`` reaches half its efficiency (0: no ramp)."""
        return float(self.ramp_flops.get(category, 0.0))

    def compute_dtype(self, dtype: str, category: str) -> str:
        """``"tf32"`` for fp32 ops of the TF32 categories when a TF32 peak is known, else ``dtype``."""
        if dtype == "fp32" and category in self.tf32_categories and "tf32" in self.peaks:
            return "tf32"
        return dtype


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
    category: str
    dtype: str
    macs: Polynomial
    flops: Polynomial
    bytes: Polynomial
    aligned: tuple[Polynomial, ...]  # channel counts checked against the alignment


class _KeptSizes(Sizes):
    """Axis sizes as products of one symbol per atomic class, so that a node's cost is a polynomial in kept counts."""

    def __init__(self, model: CostModel) -> None:
        super().__init__(model.analysis.gm)
        self.model = model

    def size(self, ref: TensorRef, dim: int) -> sympy.Expr:
        """The product of the symbols of the axis' atoms, or its fixed size if it has none."""
        size, atoms = self.model.term(ref.key, dim % ref.ndim, ref.shape[dim])
        return sympy.Mul(*[self.model.symbol(a) for a in atoms]) if atoms else sympy.Integer(size)


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
        self._symbols: dict[int, sympy.Symbol] = {}
        self._atoms: dict[sympy.Symbol, int] = {}
        self.params: list[tuple[AxisTerm, ...]] = []
        for name, p in analysis.gm.named_parameters():
            self.params.append(tuple(self.term(PARAM_PREFIX + name, d, s) for d, s in enumerate(p.shape)))
        sizes = _KeptSizes(self)
        self.nodes: list[_NodeTerm] = [t for n in analysis.gm.graph.nodes if (t := self._node(n, sizes)) is not None]

    def term(self, key: str, dim: int, size: int) -> AxisTerm:
        """Axis ``dim`` of tensor ``key`` (of ``size`` elements) as its size and the atomic classes it is made of."""
        dims = self.analysis.dims_of((key, dim))
        for d in dims:
            self.sizes.setdefault(d, self.analysis.size_of(d))
        return (int(size), dims)

    def symbol(self, atom: int) -> sympy.Symbol:
        """The symbol standing for the kept count of atomic class ``atom`` in node costs."""
        if atom not in self._symbols:
            self._symbols[atom] = sympy.Symbol(f"k{atom}", positive=True, integer=True)
            self._atoms[self._symbols[atom]] = atom
        return self._symbols[atom]

    def _node(self, node: fx.Node, sizes: _KeptSizes) -> _NodeTerm | None:
        if node.op not in ("call_module", "call_function", "call_method"):
            return None
        registry = self.analysis.registry
        view = registry.view(node, self.analysis.gm)
        if not view.outputs:
            return None
        c = registry.cost_of(view, sizes)
        return _NodeTerm(c.category, short_dtype(node.meta.get("val")), self._polynomial(node, c.macs),
                         self._polynomial(node, c.flops), self._polynomial(node, c.bytes),
                         tuple(self._polynomial(node, a) for a in c.aligned))

    def _polynomial(self, node: fx.Node, expr: sympy.Expr) -> Polynomial:
        """``expr`` as a sum of coefficients times products of kept counts (integer powers)."""
        terms = []
        for monomial, coef in sympy.expand(expr).as_coefficients_dict().items():
            powers = {b: e for b, e in monomial.as_powers_dict().items() if b != 1}
            if not all(b in self._atoms and e.is_Integer for b, e in powers.items()):
                raise ValueError(f"the cost of {node.name} is not a polynomial in its tensors' sizes: {expr}")
            terms.append((float(coef), tuple((self._atoms[b], int(e)) for b, e in powers.items())))
        return tuple(terms)

    @staticmethod
    def _value(poly: Polynomial, kept: Mapping[int, int]) -> float:
        total = 0.0
        for coef, atoms in poly:
            for atom, power in atoms:
                coef *= kept[atom] ** power
            total += coef
        return total

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
            node_macs = self._value(node.macs, k)
            t = roofline_time(lm, node.category, node.dtype, self._value(node.flops, k), self._value(node.bytes, k))
            if lm.alignment > 1 and any(round(self._value(c, k)) % lm.alignment for c in node.aligned):
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
