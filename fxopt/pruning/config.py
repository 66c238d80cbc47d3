"""PruneConfig: every option of structured pruning as a plain value.

Ratio semantics (the same as Torch-Pruning's ``pruning_ratio`` with ``global_pruning=False``):

- ``ratio=0.5`` with ``scope="uniform"`` (default) removes half of the units of *every* eligible group, the
  least important ones; each group's kept count is then rounded to the alignment.
- ``ratio=0.5`` with ``scope="global"`` removes half of all eligible channels in total, ranked across groups
  by normalized importance; each group keeps at least ``floor`` of its units.
- ``ratio={"layer4": 0.7, "re:.*fc.*": 0.2, "*": 0.3}``: per group (group id), per module (name or dotted
  prefix of a producer's module) or per regex (``re:`` prefix); ``"*"`` is the default for groups no key
  matches (absent: those groups are left alone).
- ``budget=0.5, metric="macs"``: the smallest pruning (uniform ratio, or global threshold with
  ``scope="global"``) whose pruned model keeps at most half the MACs (``"params"``, ``"macs"``/``"flops"``
  or ``"latency"`` predicted on the target).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GRANULARITIES = ("channel", "head", "head_dim", "repeat", "block")
DEFAULT_GRANULARITY = ("channel", "head", "block")
SCOPES = ("uniform", "global")
METRICS = ("params", "macs", "flops", "latency")
RECONSTRUCTIONS = (None, "bias", "ls")

RatioPairs = tuple[tuple[str, float], ...]
"""A per-key ratio written as ``(key, fraction)`` pairs: the hashable form pipeline specs print."""


@dataclass(frozen=True)
class PruneConfig:
    """Options of structured pruning (see the module docstring for ratio semantics).

    Attributes:
        ratio: fraction of units to remove (float), or per group/module/regex fractions (a mapping, or
            ``(key, fraction)`` pairs, which are read as a mapping).
        budget: keep at most this fraction of ``metric`` (instead of ``ratio``).
        metric: the budget's metric: ``"params"``, ``"macs"`` (``"flops"``) or ``"latency"``.
        scope: ``"uniform"`` (same fraction per group) or ``"global"`` (ranked across groups).
        criterion: registered importance criterion name (``l1``, ``l2``, ``bn_scale``, ``taylor``, ``variance``,
            ``activation``, ``random``).
        normalize: per-group score normalization for global ranking (``mean``, ``max``, ``sum``, ``minmax``,
            ``none``); ``None`` keeps the criterion's own.
        round_to: kept channel counts are multiples of this (``None``: the target's alignment, or 1).
        floor: every pruned group keeps at least this fraction of its units (guards against layer collapse).
        ignore: module names, dotted prefixes, ``re:`` regexes, group ids or module type names whose output
            channels are not pruned.
        granularity: which kinds of group to prune.
        approximate: also prune groups that are not exactly zero-invariant (LayerNorm'd hidden dims, ...).
        reconstruct: ``None``, ``"bias"`` (fold removed channels' means into reader biases) or ``"ls"``
            (least-squares reconstruction of removed channels from kept ones, plus the bias term).
        ridge: relative ridge regularization of the least-squares reconstruction.
    """

    ratio: float | Mapping[str, float] | RatioPairs | None = None
    budget: float | None = None
    metric: str = "params"
    scope: str = "uniform"
    criterion: str = "l2"
    normalize: str | None = None
    round_to: int | None = None
    floor: float = 0.1
    ignore: tuple[Any, ...] = ()
    granularity: tuple[str, ...] = DEFAULT_GRANULARITY
    approximate: bool = False
    reconstruct: str | None = None
    ridge: float = 1e-3

    def __post_init__(self) -> None:
        if isinstance(self.ratio, (tuple, list)):
            object.__setattr__(self, "ratio", dict(self.ratio))
        if isinstance(self.ignore, (str, type)):
            object.__setattr__(self, "ignore", (self.ignore,))
        if isinstance(self.granularity, str):
            object.__setattr__(self, "granularity", (self.granularity,))
        object.__setattr__(self, "ignore", tuple(self.ignore))
        object.__setattr__(self, "granularity", tuple(self.granularity))
        self.validate()

    def ratio_map(self) -> float | Mapping[str, float] | None:
        """``ratio`` with ``(key, fraction)`` pairs read as a mapping."""
        return dict(self.ratio) if isinstance(self.ratio, tuple) else self.ratio

    def validate(self) -> None:
        """Raise ValueError naming the first invalid option."""
        if self.ratio is None and self.budget is None:
            raise ValueError("give a ratio (fraction of units to remove) or a budget (fraction of a metric to keep)")
        if self.ratio is not None and self.budget is not None:
            raise ValueError("give either ratio or budget, not both")
        ratio = self.ratio_map()
        ratios = ratio.values() if isinstance(ratio, Mapping) else [ratio] if ratio is not None else []
        for r in ratios:
            if not 0.0 <= float(r) < 1.0:
                raise ValueError(f"ratio {r} must be in [0, 1): it is the fraction of units removed")
        if self.budget is not None and not 0.0 < self.budget <= 1.0:
            raise ValueError(f"budget {self.budget} must be in (0, 1]: the fraction of {self.metric} kept")
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; use one of {METRICS}")
        if self.scope not in SCOPES:
            raise ValueError(f"unknown scope {self.scope!r}; use one of {SCOPES}")
        if self.reconstruct not in RECONSTRUCTIONS:
            raise ValueError(f"unknown reconstruct {self.reconstruct!r}; use one of {RECONSTRUCTIONS}")
        unknown = [g for g in self.granularity if g not in GRANULARITIES]
        if unknown:
            raise ValueError(f"unknown granularity {unknown}; use some of {GRANULARITIES}")
        if not 0.0 <= self.floor < 1.0:
            raise ValueError(f"floor {self.floor} must be in [0, 1)")
        if self.round_to is not None and self.round_to < 1:
            raise ValueError(f"round_to {self.round_to} must be a positive integer")
