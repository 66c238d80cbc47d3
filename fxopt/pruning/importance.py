"""Importance criteria: one score per unit of a group, aggregated over the group's members and normalized.

A criterion scores whole groups, never single layers: a residual channel's score combines every convolution that
writes it and every layer that reads it. Built-in criteria (METHODS.md section 3):

- ``l1`` / ``l2``: magnitude of the unit's slices over all member parameters (producers and consumers).
- ``bn_scale``: ``|gamma|`` of the BatchNorm layers in the group (Network Slimming); groups without a
  BatchNorm fall back to ``l2``.
- ``taylor``: first-order Taylor, ``|sum over the unit's slices of w * dL/dw|`` averaged over calibration batches.
- ``variance``: variance of the channel at the layers that read it, over calibration batches; with
  ``reconstruct="bias"`` the channel's mean is folded into the reader's bias (variance-based pruning).
- ``activation``: mean squared activation at the readers.
- ``random``: a seeded random baseline.

Users add criteria by subclassing ``Criterion`` and registering it, or pass any callable
``fn(ctx, group) -> array of group.size scores``:

    >>> @CRITERIA.register("l3")
    ... @dataclass(frozen=True)
    ... class L3(Criterion):
    ...     def member_scores(self, ctx, group):
    ...         return [v for _, v in member_sums(ctx.analysis, group, lambda t: t.abs() ** 3)]
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from fxopt.analysis.analysis import Analysis
from fxopt.analysis.groups import Group
from fxopt.errors import PruneError
from fxopt.pruning.calibration import CalibrationCache, Watch, batch_gradients
from fxopt.pruning.readers import Reader, find_readers, readers_of
from fxopt.pruning.units import dim_sums, get_tensor, member_sums, unit_slices
from fxopt.registry import FactoryRegistry, Registry

log = logging.getLogger(__name__)

AGGREGATES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sum": lambda m: m.sum(0),
    "mean": lambda m: m.mean(0),
    "max": lambda m: m.max(0),
}


def normalize_scores(scores: np.ndarray, how: str) -> np.ndarray:
    """Normalize one group's unit scores so groups of different scale can be ranked together.

    ``"mean"`` divides by the mean, ``"max"`` by the largest, ``"sum"`` by the total, ``"minmax"`` maps to [0, 1],
    ``"none"`` leaves the scores as they are. A group of all-zero scores stays zero.
    """
    s = np.asarray(scores, dtype=np.float64)
    if how == "none" or s.size == 0:
        return s
    if how == "minmax":
        span = s.max() - s.min()
        return (s - s.min()) / span if span > 0 else np.zeros_like(s)
    denom = {"mean": s.mean(), "max": s.max(), "sum": s.sum()}.get(how)
    if denom is None:
        raise ValueError(f"unknown normalization {how!r}: use mean, max, sum, minmax or none")
    return s / denom if denom > 0 else np.zeros_like(s)


@dataclass
class ImportanceContext:
    """What criteria may read: the analysis, calibration statistics, and a scratch space for one run.

    Attributes:
        analysis: the analysis whose groups are scored (weights from ``analysis.gm``).
        cache: calibration statistics shared with reconstruction.
        notes: per group id, a remark a criterion wants in the report (e.g. a fallback it used).
        scratch: per criterion, state computed once for all groups (gradients, for instance).
    """

    analysis: Analysis
    cache: CalibrationCache
    notes: dict[str, str] = field(default_factory=dict)
    scratch: dict[str, Any] = field(default_factory=dict)
    _readers: list[Reader] | None = None

    @property
    def readers(self) -> list[Reader]:
        """Every weighted layer of the graph (computed on first use)."""
        if self._readers is None:
            self._readers = find_readers(self.analysis)
        return self._readers


@dataclass(frozen=True)
class Criterion:
    """Base class: subclasses return raw per-unit scores per member (or per reader) in ``member_scores``.

    Attributes:
        aggregate: how member scores combine into the group's: ``"sum"``, ``"mean"`` or ``"max"``.
        normalize: how a group's scores are normalized (see ``normalize_scores``).
    """

    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False
    aggregate: str = "sum"
    normalize: str = "mean"

    def prepare(self, ctx: ImportanceContext, groups: Sequence[Group]) -> None:
        """Compute shared state for ``groups`` once (gradients, statistics); default: nothing."""

    def member_scores(self, ctx: ImportanceContext, group: Group) -> list[np.ndarray]:
        """Raw scores of each unit, one array of ``group.size`` per member/source."""
        raise NotImplementedError

    def finish(self, raw: np.ndarray) -> np.ndarray:
        """Turn the aggregated raw scores into the criterion's value (e.g. a square root for L2)."""
        return raw

    def group_scores(self, ctx: ImportanceContext, group: Group) -> np.ndarray:
        """Aggregated, not yet normalized, scores of ``group``'s units."""
        parts = [np.asarray(p, dtype=np.float64) for p in self.member_scores(ctx, group)]
        if not parts:
            ctx.notes.setdefault(group.id, f"{self.name or type(self).__name__}: no member to score, kept order")
            return np.zeros(group.size)
        return self.finish(AGGREGATES[self.aggregate](np.stack(parts)))


@dataclass(frozen=True)
class Magnitude(Criterion):
    """Lp norm of each unit over every member parameter (buffers excluded); ``p`` is 1 or 2."""

    p: int = 2
    producers_only: bool = False

    def member_scores(self, ctx: ImportanceContext, group: Group) -> list[np.ndarray]:
        roles = ("producer",) if self.producers_only else ("producer", "consumer")
        cache = ctx.scratch.setdefault(f"magnitude{self.p}", {})
        return [v for _, v in member_sums(ctx.analysis, group, float(self.p), roles=roles, cache=cache)]

    def finish(self, raw: np.ndarray) -> np.ndarray:
        return raw ** (1.0 / self.p)


@dataclass(frozen=True)
class L1(Magnitude):
    """L1 magnitude."""

    name: ClassVar[str] = "l1"
    p: int = 1


@dataclass(frozen=True)
class L2(Magnitude):
    """L2 magnitude."""

    name: ClassVar[str] = "l2"
    p: int = 2


@dataclass(frozen=True)
class BNScale(Criterion):
    """``|gamma|`` of the group's BatchNorm weights; groups without a BatchNorm use the L2 magnitude."""

    name: ClassVar[str] = "bn_scale"

    def prepare(self, ctx: ImportanceContext, groups: Sequence[Group]) -> None:
        weights = set()
        gm = ctx.analysis.gm
        for node in gm.graph.nodes:
            if node.op in ("call_module", "call_function"):
                view = ctx.analysis.registry.view(node, gm)
                w = view.params.get("weight") if view.kind == "batch_norm" else None
                if w is not None and w.qualname is not None:
                    weights.add(w.qualname)
        ctx.scratch[self.name] = weights

    def member_scores(self, ctx: ImportanceContext, group: Group) -> list[np.ndarray]:
        bn = ctx.scratch.get(self.name, set())
        out = [v for m, v in member_sums(ctx.analysis, group, torch.abs, roles=("producer",)) if m.qualname in bn]
        if not out:
            ctx.notes[group.id] = "bn_scale: no BatchNorm in the group, used l2"
            return [L2().group_scores(ctx, group)]
        return out


@dataclass(frozen=True)
class Taylor(Criterion):
    """First-order Taylor: ``|sum_unit w * dL/dw|`` per batch, averaged (Molchanov et al., 2019)."""

    name: ClassVar[str] = "taylor"
    needs_data: ClassVar[bool] = True

    def prepare(self, ctx: ImportanceContext, groups: Sequence[Group]) -> None:
        analysis = ctx.analysis
        slices = {g.id: list(unit_slices(analysis, g).items()) for g in groups}
        names = [m.qualname for pairs in slices.values() for m, _ in pairs]
        totals = {g.id: np.zeros(g.size) for g in groups}
        cal = ctx.cache.calibration
        if cal is None:
            raise ValueError("the taylor criterion needs calibration data: pass calibration=batches")
        batches = 0
        for grads in batch_gradients(analysis, cal, names):
            batches += 1
            reduced: dict[tuple[str, int], np.ndarray] = {}
            for g in groups:
                s = np.zeros(g.size)
                for m, idx in slices[g.id]:
                    key = (m.qualname, m.dim)
                    if key not in reduced:
                        t = get_tensor(analysis.gm, m.qualname)
                        if t is None or m.qualname not in grads:
                            continue
                        reduced[key] = dim_sums(t.detach() * grads[m.qualname], m.dim)
                    s += reduced[key][idx].sum(1)
                totals[g.id] += np.abs(s)
        ctx.scratch[self.name] = {k: v / max(batches, 1) for k, v in totals.items()}

    def member_scores(self, ctx: ImportanceContext, group: Group) -> list[np.ndarray]:
        return [ctx.scratch[self.name][group.id]]


@dataclass(frozen=True)
class ActivationStatistic(Criterion):
    """Base for criteria on the activations that the group's readers see."""

    needs_data: ClassVar[bool] = True
    aggregate: str = "mean"

    def statistic(self, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
        """Per-channel score from the channel's mean and variance."""
        raise NotImplementedError

    def prepare(self, ctx: ImportanceContext, groups: Sequence[Group]) -> None:
        watches = {}
        for g in groups:
            for r in readers_of(ctx.analysis, g, ctx.readers):
                watches[r.input_key] = Watch(r.input_key, r.channel_dim)
        ctx.cache.ensure(list(watches.values()))

    def member_scores(self, ctx: ImportanceContext, group: Group) -> list[np.ndarray]:
        out = []
        for r in readers_of(ctx.analysis, group, ctx.readers):
            st = ctx.cache.stats.get(r.input_key)
            idx = ctx.analysis.unit_indices(group, r.input_key, r.channel_dim)
            if st is None or idx is None:
                continue
            per_channel = self.statistic(st.mean.numpy(), st.var.numpy())
            out.append(per_channel[idx].mean(1))
        if not out:
            ctx.notes[group.id] = f"{self.name}: no layer reads the group's channels, used l2"
            return [L2().group_scores(ctx, group)]
        return out


@dataclass(frozen=True)
class Variance(ActivationStatistic):
    """Activation variance at the readers (variance-based pruning)."""

    name: ClassVar[str] = "variance"

    def statistic(self, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
        return var


@dataclass(frozen=True)
class Activation(ActivationStatistic):
    """Mean squared activation at the readers."""

    name: ClassVar[str] = "activation"

    def statistic(self, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
        return var + mean ** 2


@dataclass(frozen=True)
class Random(Criterion):
    """Seeded random scores: the baseline every criterion should beat."""

    name: ClassVar[str] = "random"
    seed: int = 0

    def member_scores(self, ctx: ImportanceContext, group: Group) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed + sum(map(ord, group.id)))
        return [rng.random(group.size)]


ScoreFn = Callable[[ImportanceContext, Group], np.ndarray]


@dataclass(frozen=True)
class FunctionCriterion(Criterion):
    """Adapter for a plain function ``fn(ctx, group) -> scores``."""

    fn: ScoreFn | None = None

    def member_scores(self, ctx: ImportanceContext, group: Group) -> list[np.ndarray]:
        assert self.fn is not None
        return [np.asarray(self.fn(ctx, group), dtype=np.float64)]


class CriterionRegistry(FactoryRegistry[Callable[..., Criterion]]):
    """Criteria by name: a ``Registry`` of Criterion classes whose ``create`` also takes instances and functions."""

    def __init__(self) -> None:
        super().__init__(Registry("criterion", PruneError, plural="criteria"))

    def register(self, name: str) -> Callable[[type[Criterion]], type[Criterion]]:
        """Class decorator: make ``Criterion`` subclass available as ``name``."""

        def deco(cls: type[Criterion]) -> type[Criterion]:
            self.factories.register(name, cls)
            return cls

        return deco

    def create(self, spec: str | Criterion | ScoreFn, **options: Any) -> Criterion:
        """A criterion from a registered name (with options), an instance, or a scoring function.

        Raises:
            PruneError: for an unknown name, listing the registered criteria.
            TypeError: for a spec that is neither a name, a Criterion nor a function.
        """
        if isinstance(spec, Criterion):
            return spec
        if isinstance(spec, str):
            return self.factories.get(spec)(**options)
        if callable(spec):
            return FunctionCriterion(fn=spec, **options)
        raise TypeError(f"a criterion is a name, a Criterion or a function, not {type(spec).__name__}")



CRITERIA = CriterionRegistry()
for _cls in (L1, L2, BNScale, Taylor, Variance, Activation, Random):
    CRITERIA.register(_cls.name)(_cls)


def score_groups(ctx: ImportanceContext, groups: Sequence[Group], criterion: Criterion) -> dict[Group, np.ndarray]:
    """Normalized per-unit scores of every group in ``groups`` under ``criterion``.

    Example:
        >>> ctx = ImportanceContext(analysis, CalibrationCache(analysis, None))
        >>> scores = score_groups(ctx, analysis.groups, CRITERIA.create("l2"))
    """
    if not groups:
        return {}
    criterion.prepare(ctx, groups)
    out = {}
    for g in groups:
        raw = criterion.group_scores(ctx, g)
        if raw.shape != (g.size,):
            raise ValueError(f"criterion {criterion!r} returned shape {raw.shape} for group {g.id} of {g.size} units")
        out[g] = normalize_scores(np.nan_to_num(raw, nan=0.0), criterion.normalize)
    return out
