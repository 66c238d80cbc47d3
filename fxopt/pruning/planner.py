"""Planning: turn a ratio, a per-module mapping or a budget into ``{group: unit indices to remove}``.

Steps: decide which groups may be pruned (granularity, exactness, ignores) and say why the others are not;
decide how many units each eligible group loses (uniform fraction, global ranking, or the smallest pruning that
meets a budget); clamp to the floor that prevents layer collapse; round each group's kept channels to the
alignment; finally pick the lowest-scoring units.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fxopt.analysis.analysis import Analysis
from fxopt.analysis.groups import Group
from fxopt.ops.view import PARAM_PREFIX
from fxopt.pruning.config import PruneConfig
from fxopt.pruning.plan_cost import CostModel
from fxopt.pruning.units import owner_module

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupDecision:
    """What the planner decided for one group, and why.

    Attributes:
        group: the group id.
        granularity: the group's granularity.
        size: units before pruning.
        removed: units removed.
        exact: whether the group is zero-invariant.
        status: ``"pruned"``, ``"unchanged"`` (eligible, nothing removed after rounding), ``"ignored"``,
            ``"approximate"``, ``"granularity"``, ``"too_small"``, ``"factor"`` (another factor of the same
            channels is pruned instead) or ``"failed"`` (removal raised).
        reason: a sentence for the report.
    """

    group: str
    granularity: str
    size: int
    removed: int
    exact: bool
    status: str
    reason: str = ""

    @property
    def kept(self) -> int:
        """Units left."""
        return self.size - self.removed


@dataclass
class Plan:
    """Unit indices to remove per group, and a decision for every group of the analysis."""

    removals: dict[Group, list[int]]
    decisions: dict[str, GroupDecision]
    ignored: dict[str, list[str]]
    achieved: float | None = None  # for budgets: the metric's kept fraction the plan predicts


def module_types(model: Any) -> dict[str, type]:
    """Module path -> class for ``model`` (the original module; traced graphs lose classes under export)."""
    if model is None or not hasattr(model, "named_modules"):
        return {}
    return {name: type(m) for name, m in model.named_modules()}


class IgnoreMatcher:
    """Matches a group against ignore entries: names, prefixes, ``re:`` regexes, group ids and types."""

    def __init__(self, entries: Sequence[Any], types: Mapping[str, type]) -> None:
        self.entries = list(entries)
        self.types = types
        self.patterns: dict[int, re.Pattern[str] | None] = {}
        for i, e in enumerate(self.entries):
            if isinstance(e, str):
                text = e.removeprefix("re:")
                try:
                    self.patterns[i] = re.compile(text)
                except re.error:
                    self.patterns[i] = None

    def _label(self, entry: Any) -> str:
        return entry if isinstance(entry, str) else getattr(entry, "__name__", repr(entry))

    def _type_names(self, path: str) -> set[str]:
        cls = self.types.get(path)
        if cls is None:
            return set()
        names = set()
        for c in cls.__mro__:
            names.update({c.__name__, f"{c.__module__}.{c.__qualname__}", f"nn.{c.__name__}"})
        return names

    def match(self, group: Group) -> str | None:
        """The first entry that freezes ``group`` (as text), or ``None``."""
        paths = {owner_module(m.qualname) for m in group.members if m.role == "producer"}
        for i, entry in enumerate(self.entries):
            if isinstance(entry, type):
                if any(issubclass(self.types[p], entry) for p in paths if p in self.types):
                    return self._label(entry)
                continue
            if entry == group.id:
                return entry
            if entry.startswith("re:"):
                pat = self.patterns.get(i)
                if pat is not None and any(pat.fullmatch(p) for p in paths):
                    return entry
                continue
            for p in paths:
                if p == entry or p.startswith(entry + "."):
                    return entry
                if entry in self._type_names(p):
                    return entry
                pat = self.patterns.get(i)
                if pat is not None and pat.fullmatch(p):
                    return entry
        return None


def ratio_for(group: Group, ratio: float | Mapping[str, float], matcher_types: Mapping[str, type]) -> float:
    """The fraction of ``group`` to remove under a float or per-key ratio (see PruneConfig)."""
    if not isinstance(ratio, Mapping):
        return float(ratio)
    for key, value in ratio.items():
        if key == "*":
            continue
        if IgnoreMatcher([key], matcher_types).match(group) is not None:
            return float(value)
    return float(ratio.get("*", 0.0))


def alignment_step(group: Group, round_to: int) -> int:
    """Units per alignment step: kept units must be a multiple of this for channel counts to align."""
    if round_to <= 1:
        return 1
    if group.granularity == "head_dim":
        return round_to  # head_dim itself should be a multiple of the alignment, whatever the head count
    return round_to // math.gcd(round_to, max(group.width, 1))


def min_keep(group: Group, floor: float, step: int) -> int:
    """The fewest units a group may keep: the floor, at least one, rounded up to the step when possible."""
    keep = max(1, math.ceil(floor * group.size - 1e-9))
    if step > 1 and group.size >= step:
        keep = max(step, math.ceil(keep / step) * step)
    return min(keep, group.size)


def round_kept(group: Group, target_keep: float, step: int, lowest: int) -> int:
    """Kept units: ``target_keep`` rounded down to a multiple of ``step``, within [lowest, size].

    Rounding down means at least the requested fraction goes (Torch-Pruning keeps ``floor(size * (1 - ratio))``
    as well, so equal ratios give equal widths).
    """
    if target_keep >= group.size:
        return group.size
    keep = math.floor(target_keep / step + 1e-9) * step
    keep = max(keep, lowest)
    return min(keep, group.size)


def select_groups(analysis: Analysis, config: PruneConfig, types: Mapping[str, type]) \
        -> tuple[list[Group], dict[str, GroupDecision], dict[str, list[str]]]:
    """Split the analysis' groups into eligible ones and decisions (with reasons) for the others."""
    matcher = IgnoreMatcher(config.ignore, types)
    eligible, decisions = [], {}
    ignored: dict[str, list[str]] = {}
    for g in analysis.groups:
        hit = matcher.match(g) if config.ignore else None
        status, reason = "", ""
        if hit is not None:
            status, reason = "ignored", f"ignore entry {hit!r}"
            ignored.setdefault(hit, []).append(g.id)
        elif g.granularity not in config.granularity:
            status, reason = "granularity", f"granularity {g.granularity!r} not in {list(config.granularity)}"
        elif not g.exact and not config.approximate:
            status, reason = "approximate", f"not zero-invariant ({g.reason}); pass approximate=True to prune"
        elif g.size < 2:
            status, reason = "too_small", "a single unit cannot be pruned"
        if status:
            decisions[g.id] = GroupDecision(g.id, g.granularity, g.size, 0, g.exact, status, reason)
        else:
            eligible.append(g)
    eligible, shadowed = one_factor_per_dim(analysis, eligible)
    for g, finer in shadowed.items():
        decisions[g.id] = GroupDecision(g.id, g.granularity, g.size, 0, g.exact, "factor",
                                        f"another factor of the same channels ({finer.id}) is pruned instead")
    return eligible, decisions, ignored


def one_factor_per_dim(analysis: Analysis, groups: Sequence[Group]) -> tuple[list[Group], dict[Group, Group]]:
    """Keep at most one group of a granularity per parameter dim that is a product of several groups' factors.

    A grouped conv's channels are ``groups x width`` and both factors are groups of granularity ``"block"``:
    removing half of each would remove three quarters of the channels where the ratio asked for half. The finest
    factor (most units) is kept; the others map to the group that shadows them. Parts of a dim (concat, split)
    live in the same factor and are not affected; factors of different granularities (heads and head_dim) are
    both kept, since the user asked for both.

    Returns:
        The groups to prune, and ``{shadowed group: the group pruned in its place}``.
    """
    claimed: dict[tuple[str, int, str], Group] = {}  # (param, dim, granularity) -> the factor pruned there
    kept: list[Group] = []
    shadowed: dict[Group, Group] = {}
    for g in sorted(groups, key=lambda g: -g.size):  # stable: ties keep analysis order
        dims = {(m.qualname, m.dim, g.granularity) for m in g.members}
        blocking = next((claimed[d] for d in dims if d in claimed and claimed[d] is not g
                         and not _same_factor(analysis, claimed[d], g, d)), None)
        if blocking is not None:
            shadowed[g] = blocking
            continue
        kept.append(g)
        for d in dims:
            claimed.setdefault(d, g)
    order = {g: i for i, g in enumerate(groups)}
    return sorted(kept, key=order.__getitem__), shadowed


def _same_factor(analysis: Analysis, a: Group, b: Group, dim: tuple[str, int, str]) -> bool:
    """Whether ``a`` and ``b`` live on the same atom of a parameter dim (parts of it), not on different factors."""
    atoms = analysis.dims_of((PARAM_PREFIX + dim[0], dim[1]))
    return any(c in atoms for c in set(a.classes) & set(b.classes)) or not (
        set(a.classes) & set(atoms) and set(b.classes) & set(atoms))


class Allocator:
    """Unit counts per group for a uniform fraction or a global ranking, with floors and rounding."""

    def __init__(self, groups: Sequence[Group], scores: Mapping[Group, np.ndarray], config: PruneConfig,
                 round_to: int) -> None:
        self.groups = list(groups)
        self.scores = scores
        self.config = config
        self.steps = {g: alignment_step(g, round_to) for g in self.groups}
        self.lowest = {g: min_keep(g, config.floor, self.steps[g]) for g in self.groups}
        entries = [(float(s), gi, u) for gi, g in enumerate(self.groups)
                   for u, s in enumerate(self.scores[g])]
        entries.sort()
        self.order = entries

    def uniform(self, fractions: Mapping[Group, float]) -> dict[Group, int]:
        """Units to remove when group ``g`` loses ``fractions[g]`` of its units."""
        out = {}
        for g in self.groups:
            keep = round_kept(g, g.size * (1.0 - fractions[g]), self.steps[g], self.lowest[g])
            out[g] = g.size - keep if fractions[g] > 0 else 0
        return out

    def global_prefix(self, k: int) -> dict[Group, int]:
        """Units to remove when the ``k`` lowest-scoring units overall go (capped by floors, then rounded)."""
        return self._lowest_first(k, lambda g: 1)

    def global_fraction(self, ratio: float) -> dict[Group, int]:
        """Remove ``ratio`` of all eligible channels (units weighted by width), lowest scores first."""
        return self._lowest_first(ratio * sum(g.size * g.width for g in self.groups), lambda g: g.width)

    def _lowest_first(self, goal: float, weight: Callable[[Group], int]) -> dict[Group, int]:
        """Units to remove, lowest scores first, until their total ``weight`` reaches ``goal`` (capped by floors,
        then rounded)."""
        raw = [0] * len(self.groups)
        caps = [g.size - self.lowest[g] for g in self.groups]
        removed = 0
        for _, gi, _ in self.order:
            if removed >= goal:
                break
            if raw[gi] < caps[gi]:
                raw[gi] += 1
                removed += weight(self.groups[gi])
        return {g: g.size - round_kept(g, g.size - raw[i], self.steps[g], self.lowest[g])
                for i, g in enumerate(self.groups)}


def _bisect(counts_for: Callable[[float], dict[Group, int]], lo: float, hi: float, fits: Callable[[dict], bool],
            integer: bool, iterations: int = 40) -> dict[Group, int]:
    """The least pruning in [lo, hi] whose counts fit; the most pruning when nothing fits."""
    best = counts_for(hi)
    if not fits(best):
        return best
    for _ in range(iterations):
        if (hi - lo) <= (1 if integer else 1e-4):
            break
        mid = (lo + hi) // 2 if integer else (lo + hi) / 2
        counts = counts_for(mid)
        if fits(counts):
            hi, best = mid, counts
        else:
            lo = mid
    return best


def allocate(groups: Sequence[Group], scores: Mapping[Group, np.ndarray], config: PruneConfig, round_to: int,
             types: Mapping[str, type], cost: CostModel | None) -> tuple[dict[Group, int], float | None]:
    """Units to remove per eligible group, and for budgets the kept fraction of the metric."""
    alloc = Allocator(groups, scores, config, round_to)
    if config.budget is None:
        ratio = config.ratio_map()
        assert ratio is not None
        if config.scope == "global":
            if isinstance(ratio, Mapping):
                raise ValueError("a per-module ratio mapping is uniform by nature; use scope='uniform'")
            return alloc.global_fraction(float(ratio)), None
        return alloc.uniform({g: ratio_for(g, ratio, types) for g in groups}), None
    if cost is None:
        raise ValueError("a budget needs a cost model")
    dense = cost.evaluate().metric(config.metric)
    budget: float = config.budget

    def fits(counts: dict[Group, int]) -> bool:
        return cost.evaluate(cost.kept_after(counts)).metric(config.metric) <= budget * dense * (1 + 1e-9)

    if config.scope == "global":
        counts = _bisect(lambda k: alloc.global_prefix(int(k)), 0, len(alloc.order), fits, integer=True)
    else:
        counts = _bisect(lambda r: alloc.uniform({g: r for g in groups}), 0.0, 1.0 - config.floor, fits,
                         integer=False)
    achieved = cost.evaluate(cost.kept_after(counts)).metric(config.metric) / max(dense, 1e-30)
    if achieved > config.budget * (1 + 1e-6):
        log.warning("budget %.3f of %s not reachable with floor %.2f: the plan keeps %.3f", config.budget,
                    config.metric, config.floor, achieved)
    return counts, achieved


def make_plan(analysis: Analysis, groups: Sequence[Group], scores: Mapping[Group, np.ndarray],
              config: PruneConfig, round_to: int, types: Mapping[str, type] | None = None,
              cost: CostModel | None = None) -> tuple[dict[Group, list[int]], dict[str, GroupDecision], float | None]:
    """Unit indices to remove per group (the lowest-scoring ones) and a decision per eligible group.

    Example:
        >>> groups, decisions, ignored = select_groups(analysis, config, {})
        >>> removals, more, _ = make_plan(analysis, groups, scores, config, round_to=8)
    """
    counts, achieved = allocate(groups, scores, config, round_to, types or {}, cost)
    removals: dict[Group, list[int]] = {}
    decisions: dict[str, GroupDecision] = {}
    for g in groups:
        n = counts.get(g, 0)
        if n <= 0:
            reason = "rounding to the alignment or the floor left nothing to remove"
            decisions[g.id] = GroupDecision(g.id, g.granularity, g.size, 0, g.exact, "unchanged", reason)
            continue
        order = np.argsort(scores[g], kind="stable")
        removals[g] = sorted(int(u) for u in order[:n])
        decisions[g.id] = GroupDecision(g.id, g.granularity, g.size, n, g.exact, "pruned")
    return removals, decisions, achieved
