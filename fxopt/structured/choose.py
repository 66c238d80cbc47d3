"""Choosing a structure and rank for one dense layer: the error budget, the size caps and the speed gate.

For each structure considered (a family at each block count), the rank is settled first, without fitting where a
closed form allows it:

- a ranked block-low-rank structure (low-rank, Monarch, BTT) takes the smallest rank whose error is within
  ``max_error``, read from one batched SVD (``error_by_rank``); without an error budget, the largest rank the size
  caps allow;
- BLAST takes the smallest rank within the budget by bisection over fits, between the smallest rank a singular-value
  bound does not rule out (``bounds``) and b times the Monarch rank within the budget (BLAST starts from that
  Monarch fit, so that rank is enough);
- block-diagonal has no rank.

Before any SVD or fit, a ranked structure that is not predicted faster than the dense layer even at rank 1 is
refused (time grows with rank), and a BLAST structure whose error bound exceeds the budget at its largest admissible
rank is refused without fitting. Error curves and predicted times are computed once per layer and shared between
the structures that need them (BLAST's search reads the Monarch curve of its block count).

A structure is refused when its rank exceeds what the caps (``params``, ``flops``: fractions of the dense layer's)
allow, or when it would not be smaller than the dense layer. Each remaining candidate is timed against the dense
layer, by the target's roofline over the ATen ops its forward runs (``fxopt.structured.speed``), or on this
machine (``fxopt.timing.measure``, interleaved rounds, medians). The speed gate keeps the candidates faster than
dense; the fastest is fitted and its error checked (with calibration data, the error budget bounds the layer's
output error on them, which block-whitened grid fits only approximate: the rank then grows until it holds). The
result is a ``Choice`` or a ``Refusal`` whose reason says why the layer stays dense.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from fxopt.analysis.cost import Roofline
from fxopt.structured.base import Structure, StructuredLinear
from fxopt.structured.blast import Blast
from fxopt.structured.blockdiag import BlockDiagonal
from fxopt.structured.bounds import blast_error_floor
from fxopt.structured.btt import BTT
from fxopt.structured.calibration import InputStats, Scaling
from fxopt.structured.conv import ChannelLinear
from fxopt.structured.errors import StructureError
from fxopt.structured.fit import FitReport, error_by_rank, fit
from fxopt.structured.grid import GridStructure
from fxopt.structured.lowrank import LowRank
from fxopt.structured.monarch import Monarch
from fxopt.structured.speed import layer_time
from fxopt.timing import measure

FAMILIES: dict[str, Callable[[int], Structure]] = {
    "lowrank": lambda b: LowRank(rank=1),
    "blockdiag": lambda b: BlockDiagonal(blocks=b),
    "monarch": lambda b: Monarch(blocks=b, rank=1),
    "btt": lambda b: BTT(rank=1),
    "blast": lambda b: Blast(blocks=b, rank=1),
}
"""Each structure family, built at a block count (low-rank and BTT take none: their grid is fixed)."""
BLOCKED = frozenset({"blockdiag", "monarch", "blast"})
"""The families that are built at each of the block counts asked for."""

SEARCH_ITERATIONS = 10
"""BLAST iterations of each fit in the rank search (the chosen rank is then fitted with the structure's own)."""

FLOOR_SLACK = 1e-4
"""A rank is ruled out by BLAST's error bound only when the bound exceeds the budget by this relative margin (the
fits measure their errors in the weight's precision, the bound comes from float32 singular values at least)."""

Refusals = list[tuple[str, str]]


@dataclass(frozen=True)
class Site:
    """The dense layer to replace, as the chooser sees it.

    Attributes:
        dense: the layer itself (an ``nn.Linear``, or a 1x1 convolution when ``channels``).
        weight: its (out_features, in_features) weight.
        bias: its bias, or ``None``.
        input_shape: the shape of its input at the example inputs.
        channels: the features are dim 1 of (N, C, *spatial) inputs (a 1x1 convolution; wrapped in ChannelLinear).
    """

    dense: nn.Module
    weight: torch.Tensor
    bias: torch.Tensor | None
    input_shape: tuple[int, ...]
    channels: bool = False

    def wrap(self, layer: StructuredLinear) -> nn.Module:
        """The module that replaces the dense layer: the structured layer, over dim 1 for a convolution."""
        return ChannelLinear(layer) if self.channels else layer

    def build(self, structure: Structure, device: torch.device | str) -> nn.Module:
        """An unfitted replacement with ``structure`` (random factors; ``device="meta"`` allocates nothing)."""
        m, n = self.weight.shape
        return self.wrap(structure.build(m, n, bias=self.bias is not None, device=device, dtype=self.weight.dtype))

    @property
    def tokens(self) -> int:
        """Rows one call applies the weight to (the product of the input's dims other than the features)."""
        return math.prod(self.input_shape) // self.weight.shape[1]


@dataclass(frozen=True)
class Options:
    """What the chooser is asked for (the ``substitute`` pass's options).

    Attributes:
        structure: a family name (``lowrank``, ``blockdiag``, ``monarch``, ``btt``, ``blast``) or ``auto`` (all).
        max_error: the largest relative error of a layer (output error on calibration data when there is any,
            else weight error); ``None``: no error budget (then a size cap sets the rank).
        params: the largest fraction of the dense weight's parameters the structure's factors may keep (the bias
            is copied unchanged and not counted).
        flops: the largest fraction of the dense layer's FLOPs (bias additions included) the structure may cost.
        blocks: the block counts tried for block-diagonal, Monarch and BLAST.
        scaling: the activation scaling of fits with calibration data (``"whiten"`` or ``"rms"``).
        speed_gate: keep a structure only where it is faster than the dense layer.
        measure: time candidates on this machine instead of predicting their time on the target.
    """

    structure: str = "auto"
    max_error: float | None = 0.1
    params: float | None = None
    flops: float | None = None
    blocks: tuple[int, ...] = (2, 4, 8)
    scaling: Scaling = "whiten"
    speed_gate: bool = True
    measure: bool = False

    def families(self) -> list[str]:
        """The families considered."""
        return list(FAMILIES) if self.structure == "auto" else [self.structure]


@dataclass(frozen=True)
class Candidate:
    """A structure with its rank settled, and what it costs.

    Attributes:
        structure: the structure, every option explicit.
        params: its parameters (factors and bias).
        flops: its FLOPs per token.
        predicted_s: its predicted time on the target at the example shapes (``nan`` without a target).
        measured_ms: its measured median time on this machine (``None`` unless measured).
    """

    structure: Structure
    params: int
    flops: int
    predicted_s: float
    measured_ms: float | None = None

    @property
    def label(self) -> str:
        """The structure without its fitting options (``Monarch(blocks=4, rank=12)``)."""
        return label(self.structure)


@dataclass(frozen=True)
class Choice:
    """The structured layer chosen for a site.

    Attributes:
        layer: the fitted replacement (a structured layer, or a ChannelLinear for a convolution).
        report: its fit report (errors, parameters and FLOPs per token before and after).
        candidate: the candidate it was fitted from.
        dense_s: the dense layer's predicted time (``nan`` without a target).
        dense_ms: the dense layer's measured time (``None`` unless measured).
    """

    layer: nn.Module
    report: FitReport
    candidate: Candidate
    dense_s: float
    dense_ms: float | None = None


@dataclass(frozen=True)
class Refusal:
    """Why a site stays dense.

    Attributes:
        category: ``"over budget"``, ``"no saving"``, ``"not faster"`` or ``"unsupported"``.
        reason: the details, naming the structures tried.
    """

    category: str
    reason: str

    def __str__(self) -> str:
        return f"{self.category}: {self.reason}"


@dataclass
class _Memo:
    """What one ``choose`` call computes at most once per structure: predicted candidates, error curves, and
    BLAST's error bounds."""

    site: Site
    target: Roofline | None
    options: Options
    stats: InputStats | None
    dense_s: float
    candidates: dict[Structure, Candidate] = field(default_factory=dict)
    curves: dict[Structure, torch.Tensor] = field(default_factory=dict)
    floors: dict[int, torch.Tensor] = field(default_factory=dict)

    def candidate(self, structure: Structure) -> Candidate:
        """``structure`` with its parameters, FLOPs and predicted time."""
        if structure not in self.candidates:
            self.candidates[structure] = _candidate(self.site, structure, self.target)
        return self.candidates[structure]

    def curve(self, structure: Structure) -> torch.Tensor:
        """The error of ``structure``'s family at every rank (``error_by_rank``)."""
        key = structure.with_rank(1)
        if key not in self.curves:
            self.curves[key] = error_by_rank(self.site.weight, key, activations=self.stats,
                                             scaling=self.options.scaling)
        return self.curves[key]

    def floor(self, blast: Blast) -> torch.Tensor:
        """The lower bound on every BLAST fit's error at each rank, for ``blast``'s block count."""
        if blast.blocks not in self.floors:
            grid = None if self.stats is not None else self.curve(Monarch(blast.blocks, 1))
            self.floors[blast.blocks] = blast_error_floor(self.site.weight, blast.blocks, self.stats, grid)
        return self.floors[blast.blocks]


def budget_error(report: FitReport) -> float:
    """The error the budget bounds: the output error on calibration data when there was any, else the weight
    error."""
    return report.output_error if report.output_error is not None else report.weight_error


def choose(site: Site, options: Options, target: Roofline | None, stats: InputStats | None = None) -> Choice | Refusal:
    """The fastest structure for ``site`` within the budget and caps that beats the dense layer, fitted.

    Args:
        site: the dense layer.
        options: the budget, caps, families and gate.
        target: the target whose roofline predicts times (``None``: the gate compares FLOPs, unless measuring).
        stats: the layer's calibration input statistics, for activation-aware fits and output errors.

    Returns:
        The fitted choice, or the refusal with its reason.

    Example:
        >>> layer = nn.Linear(256, 256)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.randn(256, 8) @ torch.randn(8, 256))
        >>> site = Site(layer, layer.weight.detach(), layer.bias.detach(), (64, 256))
        >>> choice = choose(site, Options(structure="lowrank", max_error=0.01, speed_gate=False), None)
        >>> choice.candidate.label, type(choice.layer).__name__
        ('LowRank(rank=8)', 'LowRankLinear')
        >>> choose(site, Options(structure="blockdiag", max_error=0.01, speed_gate=False), None).category
        'over budget'
    """
    refused: Refusals = []
    dense_s = layer_time(site.dense, site.input_shape, target, site.weight.dtype) if target else math.nan
    # the predicted dense time a candidate must beat (not when measuring: measured times are taken once, below)
    bound = _dense_time(site, dense_s) if options.speed_gate and not options.measure else math.inf
    memo = _Memo(site, target, options, stats, dense_s)
    candidates = _candidates(memo, bound, refused)
    if not candidates:
        return _refusal(refused, "unsupported", "no structure fits the shape")
    dense_ms = None
    if options.measure:
        candidates, dense_ms = _measured(site, candidates)
    if options.speed_gate:
        dense = dense_ms if dense_ms is not None else _dense_time(site, dense_s)
        faster = [c for c in candidates if _time(c) < dense]
        if not faster:
            best = min(candidates, key=_time)
            return Refusal("not faster", f"{label(best.structure)} {_show_time(best)} vs dense "
                                         f"{_show_dense(site, dense_s, dense_ms)}{_where(target, options)}")
        candidates = faster
    for candidate in sorted(candidates, key=_time):
        done = _fit(memo, candidate, bound, refused)
        if done is not None:
            layer, report, fitted = done
            return Choice(layer, report, fitted, dense_s, dense_ms)
    return _refusal(refused, "over budget", "no candidate held its error after fitting")


def _candidates(memo: _Memo, bound: float, refused: Refusals) -> list[Candidate]:
    """Every structure with its rank settled.

    When gating on predictions, a ranked structure not faster than ``bound`` (the dense time) at rank 1 is refused
    before its SVD. BLAST comes last and its rank search fits: it is refused without fitting when its error bound
    exceeds the budget, and only searches ranks fast enough to beat both ``bound`` and the candidates found before
    it.
    """
    site, options = memo.site, memo.options
    m, n = site.weight.shape
    found: list[Candidate] = []
    for family in options.families():
        for blocks in options.blocks if family in BLOCKED else (0,):
            base = FAMILIES[family](blocks)
            try:
                base.check(m, n)
            except StructureError as exc:
                refused.append(("unsupported", str(exc)))
                continue
            if isinstance(base, GridStructure) and _time(memo.candidate(base)) >= bound:
                refused.append(("not faster", f"{_family(base, m, n)} is not faster than the dense layer even at "
                                              f"rank 1: {_show_time(memo.candidate(base))} vs dense "
                                              f"{_show_dense(site, memo.dense_s, None)}{_where(memo.target, options)}"))
                continue
            fastest = None
            if isinstance(base, Blast) and not options.measure:
                limit = min([bound, *map(_time, found)])
                if _time(memo.candidate(base)) >= limit:  # base has rank 1
                    refused.append(("not faster", f"{_family(base, m, n)} is not faster than the dense layer or "
                                                  f"the other candidates at any rank"))
                    continue
                if _blast_out_of_reach(memo, base, refused):
                    continue
                fastest = _fastest_rank(memo, base, limit)
            structure = _settle_rank(memo, base, refused, fastest)
            if structure is not None:
                found.append(memo.candidate(structure))
    return found


def _candidate(site: Site, structure: Structure, target: Roofline | None) -> Candidate:
    layer = site.build(structure, "meta")
    core = layer.linear if isinstance(layer, ChannelLinear) else layer
    assert isinstance(core, StructuredLinear)
    predicted = layer_time(layer, site.input_shape, target, site.weight.dtype) if target else math.nan
    m, n = site.weight.shape
    return Candidate(structure.resolved(m, n), core.num_parameters, core.flops(1), predicted)


def _fastest_rank(memo: _Memo, base: Blast, limit: float) -> int:
    """The largest rank at which ``base`` is predicted faster than ``limit`` (0: none; time grows with rank)."""
    m, n = memo.site.weight.shape
    low, high = 0, _max_rank(base, m, n) + 1  # faster at low (rank 0: vacuous), not at high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if _time(memo.candidate(base.with_rank(mid))) < limit else (low, mid)
    return low


def _rank_cap(site: Site, base: Structure, options: Options) -> int:
    """The largest rank of ``base`` within the caps and smaller than the dense layer (below 1: none)."""
    m, n = site.weight.shape
    bias = m if site.bias is not None else 0
    unit = base.build(m, n, bias=False, device="meta").structure_parameters  # params per unit of rank
    cap = min(_max_rank(base, m, n), (m * n - 1) // unit)  # a structure must be smaller than the dense layer
    if options.params is not None:
        cap = min(cap, math.floor(options.params * m * n / unit))
    if options.flops is not None:
        cap = min(cap, math.floor((options.flops * (2 * m * n + bias) - bias) / (2 * unit)))
    return cap


def _blast_out_of_reach(memo: _Memo, base: Blast, refused: Refusals) -> bool:
    """Whether no BLAST fit of ``base``'s block count can meet the error budget within the caps, by the
    singular-value bound (``bounds``), before any fit; the reason is appended to ``refused``."""
    site, options = memo.site, memo.options
    m, n = site.weight.shape
    cap = _rank_cap(site, base, options)
    if options.max_error is None or cap < 1:
        return False  # nothing to rule out: the caps set the rank, or _settle_rank refuses with its reason
    high = _blast_high(memo, base, cap)
    floor = float(memo.floor(base)[high])
    if floor <= options.max_error * (1 + FLOOR_SLACK):
        return False
    refused.append(("over budget", f"{_family(base, m, n)} at rank {high} has error at least {floor:.3g} > "
                                   f"{options.max_error:g} (singular-value bound, no fit){_caps(options)}"))
    return True


def _blast_high(memo: _Memo, base: Blast, cap: int) -> int:
    """The highest rank BLAST's search tries: b times the Monarch rank within the budget (BLAST starts from that
    Monarch fit), at most ``cap``."""
    assert memo.options.max_error is not None
    monarch = memo.curve(Monarch(base.blocks, 1))
    within = (monarch[1:] <= memo.options.max_error).nonzero()
    return min(cap, base.blocks * (int(within[0]) + 1)) if len(within) else cap


def _settle_rank(memo: _Memo, base: Structure, refused: Refusals, limit: int | None = None) -> Structure | None:
    """``base`` with the rank the budget and caps call for, at most ``limit`` (a BLAST search's), or ``None``
    (the reason appended to ``refused``)."""
    site, options = memo.site, memo.options
    m, n = site.weight.shape
    bias = m if site.bias is not None else 0
    if isinstance(base, BlockDiagonal):  # no rank, one size
        weights = m * n // base.blocks
        over = _over_cap(site, weights, 2 * weights + bias, options)
        if over:
            refused.append((over[0], f"{_family(base, m, n)} keeps {over[1]}"))
            return None
        return base
    unit = base.build(m, n, bias=False, device="meta").structure_parameters  # params per unit of rank
    most = _max_rank(base, m, n)
    cap = _rank_cap(site, base, options)
    if cap < 1:
        category = "no saving" if (m * n - 1) // unit < 1 else "over budget"
        refused.append((category, f"{_family(base, m, n)} at rank 1 keeps {unit / (m * n):.2f}x the dense parameters"
                                  + ("" if category == "no saving" else _caps(options))))
        return None
    if options.max_error is None:
        return base.with_rank(cap)
    if isinstance(base, Blast):
        return _blast_rank(memo, base, cap if limit is None else min(cap, limit), refused)
    errors = memo.curve(base)
    within = (errors[1:] <= options.max_error).nonzero()
    need = int(within[0]) + 1 if len(within) else most
    if need > cap:
        refused.append(("over budget", f"{_family(base, m, n)} needs rank {need} for error <= {options.max_error:g} "
                                       f"({need * unit / (m * n):.2f}x the dense parameters); rank {cap} gives error "
                                       f"{float(errors[cap]):.3g}{_caps(options)}"))
        return None
    return base.with_rank(need)


def _blast_rank(memo: _Memo, base: Blast, cap: int, refused: Refusals) -> Blast | None:
    """The smallest BLAST rank within the budget, by bisection over fits, between the singular-value bound and
    Monarch's rank."""
    site, options, stats = memo.site, memo.options, memo.stats
    assert options.max_error is not None
    max_error: float = options.max_error
    m, n = site.weight.shape
    high = _blast_high(memo, base, cap)
    floor = memo.floor(base)
    reachable = options.max_error * (1 + FLOOR_SLACK)

    def ok(rank: int) -> bool:  # refinement never raises the error: a short search fit bounds the full one
        if float(floor[rank]) > reachable:
            return False  # no fit of this rank can meet the budget
        search = dataclasses.replace(base, rank=rank, max_iter=min(base.max_iter, SEARCH_ITERATIONS))
        report = fit(site.weight, search, activations=stats, scaling=options.scaling).report
        return budget_error(report) <= max_error

    if not ok(high):
        refused.append(("over budget", f"{_family(base, m, n)} at rank {high} has error above {options.max_error:g}"
                                       f"{_caps(options)}"))
        return None
    # ok(low) is false (rank 0 keeps nothing, nor does a rank the bound rules out), ok(high) is true
    ruled_out = (floor[: high + 1] > reachable).nonzero()
    low = int(ruled_out.max()) if len(ruled_out) else 0
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if ok(mid) else (mid, high)
    return dataclasses.replace(base, rank=high)


def _fit(memo: _Memo, candidate: Candidate, bound: float,
         refused: Refusals) -> tuple[nn.Module, FitReport, Candidate] | None:
    """Fit the candidate; grow a grid's rank while the output error on the data exceeds the budget, as long as the
    larger layer stays within the caps and (predicted) faster than ``bound``."""
    site, options, stats = memo.site, memo.options, memo.stats
    m, n = site.weight.shape
    while True:
        result = fit(site.weight, candidate.structure, site.bias, activations=stats, scaling=options.scaling)
        error = budget_error(result.report)
        if options.max_error is None or error <= options.max_error:
            return site.wrap(result.layer), result.report, candidate
        failed = f"{candidate.label} has error {error:.3g} > {options.max_error:g} after fitting"
        structure = candidate.structure
        if not isinstance(structure, GridStructure) or structure.rank >= _max_rank(structure, m, n):
            refused.append(("over budget", failed))
            return None
        bigger = structure.with_rank(min(_max_rank(structure, m, n), structure.rank + max(1, structure.rank // 4)))
        candidate = memo.candidate(bigger)
        if _over_cap(site, candidate.params - (m if site.bias is not None else 0), candidate.flops, options):
            refused.append(("over budget", f"{failed}; a larger rank breaks the caps or saves nothing"))
            return None
        if _time(candidate) >= bound:
            refused.append(("not faster", f"{failed}; {candidate.label} is not faster than the dense layer"))
            return None


def _measured(site: Site, candidates: Sequence[Candidate]) -> tuple[list[Candidate], float]:
    """The candidates with their measured times (random factors: the time does not depend on the values)."""
    device = site.weight.device
    x = torch.randn(site.input_shape, dtype=site.weight.dtype, device=device)
    modules = {"dense": site.dense, **{f"c{i}": site.build(c.structure, device) for i, c in enumerate(candidates)}}
    timed = measure(modules, (x,), rounds=5, round_ms=5.0)
    out = [dataclasses.replace(c, measured_ms=timed[f"c{i}"].median_ms) for i, c in enumerate(candidates)]
    return out, timed["dense"].median_ms


def _max_rank(structure: Structure, m: int, n: int) -> int:
    if isinstance(structure, Blast):
        return structure.blocks * min(m // structure.blocks, n // structure.blocks)
    assert isinstance(structure, GridStructure)
    rows, cols = structure.grid(m, n)
    return min(m // rows, n // cols)


def _over_cap(site: Site, weights: int, flops: int, options: Options) -> tuple[str, str] | None:
    """What a structure with ``weights`` factor parameters and ``flops`` per token breaks, as (category,
    details), or ``None`` when it is smaller than the dense layer and within the caps."""
    m, n = site.weight.shape
    ratio, flop_ratio = weights / (m * n), flops / (2 * m * n + (m if site.bias is not None else 0))
    if ratio >= 1:
        return "no saving", f"{ratio:.2f}x the dense parameters"
    if options.params is not None and ratio > options.params:
        return "over budget", f"{ratio:.2f}x the dense parameters > params={options.params:g}"
    if options.flops is not None and flop_ratio > options.flops:
        return "over budget", f"{flop_ratio:.2f}x the dense FLOPs > flops={options.flops:g}"
    return None


def _time(c: Candidate) -> float:
    if c.measured_ms is not None:
        return c.measured_ms
    return c.predicted_s if not math.isnan(c.predicted_s) else float(c.flops)


def _dense_time(site: Site, dense_s: float) -> float:
    m, n = site.weight.shape
    return dense_s if not math.isnan(dense_s) else float(2 * m * n + (m if site.bias is not None else 0))


def _show_time(c: Candidate) -> str:
    if c.measured_ms is not None:
        return f"measured {c.measured_ms * 1e3:.1f} us"
    if math.isnan(c.predicted_s):
        return f"{c.flops:,} FLOPs per token"
    return f"predicted {c.predicted_s * 1e6:.1f} us"


def _show_dense(site: Site, dense_s: float, dense_ms: float | None) -> str:
    if dense_ms is not None:
        return f"{dense_ms * 1e3:.1f} us"
    if math.isnan(dense_s):
        return f"{int(_dense_time(site, dense_s)):,} FLOPs per token"
    return f"{dense_s * 1e6:.1f} us"


def _where(target: Roofline | None, options: Options) -> str:
    if options.measure:
        return " on this machine"
    return f" on {target.name}" if target is not None else " (no target: FLOPs compared)"


def label(structure: Structure) -> str:
    """The structure without its fitting options or defaults (``Blast(blocks=4, rank=96)``)."""
    fields = dataclasses.fields(structure)
    options = ", ".join(f"{f.name}={getattr(structure, f.name)!r}" for f in fields if f.name == "rank" or (
        f.name not in structure.fit_options and getattr(structure, f.name) != f.default))
    return f"{type(structure).__name__}({options})"


def _family(structure: Structure, m: int, n: int) -> str:
    """The structure without its rank, shape options explicit (``Monarch(blocks=4)``, ``BTT(m1=16, n0=16)``)."""
    resolved = structure.resolved(m, n)
    fields = dataclasses.fields(resolved)
    options = ", ".join(f"{f.name}={getattr(resolved, f.name)!r}" for f in fields
                        if f.name not in ("rank", "shuffle", *resolved.fit_options))
    return f"{type(resolved).__name__}({options})" if options else type(resolved).__name__


def _caps(options: Options) -> str:
    caps = [f"{k}={v:g}" for k, v in (("params", options.params), ("flops", options.flops)) if v is not None]
    return f" (caps: {', '.join(caps)})" if caps else ""


def _refusal(refused: Refusals, category: str, fallback: str) -> Refusal:
    """One refusal from the reasons collected, by the first category found of: over budget, no saving, not
    faster, unsupported (at most two reasons shown)."""
    for wanted in ("over budget", "no saving", "not faster", "unsupported"):
        reasons = [r for c, r in refused if c == wanted]
        if reasons:
            more = f" (and {len(reasons) - 2} more)" if len(reasons) > 2 else ""
            return Refusal(wanted, "; ".join(reasons[:2]) + more)
    return Refusal(category, fallback)
