"""PruneReport: the record of one pruning run (data only; ``to_text`` renders it)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from fxopt.pruning.config import PruneConfig
from fxopt.pruning.planner import GroupDecision
from fxopt.pruning.reconstruction import ReaderFix
from fxopt.trace import StaticDim


@dataclass(frozen=True)
class PruneReport:
    """What a pruning run did.

    Attributes:
        config: the options used.
        criterion: the criterion's description.
        round_to: the channel alignment applied.
        decisions: one per group of the analysis, with status and reason.
        ignored: ignore entry -> ids of the groups it froze.
        params_before: parameter elements before.
        params_after: parameter elements after.
        macs_before: multiply-accumulates per forward before (analytic, at the example inputs).
        macs_after: the same after.
        latency_ratio: predicted latency after / before on the target's roofline.
        budget_achieved: for budgets, the kept fraction of the metric the plan predicts.
        reconstruction: one record per repaired reader.
        notes: per group, remarks from the criterion (fallbacks).
        seconds: wall time of the run.
        path: ``"graph"`` (a GraphModule was returned), ``"in place"`` (the user's model was pruned in place) or
            ``"graph (reason)"`` (in place was asked for and could not express the plan).
        static_dims: batch, sequence and image dims the captured graph runs at the example's size only, each
            with the node that fixes it (``fxopt.trace.static_dims``).
    """

    config: PruneConfig
    criterion: str
    round_to: int
    decisions: tuple[GroupDecision, ...]
    ignored: Mapping[str, tuple[str, ...]]
    params_before: int
    params_after: int
    macs_before: float
    macs_after: float
    latency_ratio: float
    budget_achieved: float | None = None
    reconstruction: tuple[ReaderFix, ...] = ()
    notes: Mapping[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    path: str = "graph"
    static_dims: tuple[StaticDim, ...] = ()

    @property
    def pruned(self) -> list[GroupDecision]:
        """Decisions of the groups that lost units."""
        return [d for d in self.decisions if d.status == "pruned"]

    @property
    def failed(self) -> list[GroupDecision]:
        """Groups whose removal raised and were left alone."""
        return [d for d in self.decisions if d.status == "failed"]

    @property
    def param_ratio(self) -> float:
        """Parameters after / before."""
        return self.params_after / max(self.params_before, 1)

    @property
    def mac_ratio(self) -> float:
        """MACs after / before."""
        return self.macs_after / max(self.macs_before, 1.0)

    def to_text(self) -> str:
        """A few lines: totals, then groups by status, ignores, reconstruction errors."""
        by_status = Counter(d.status for d in self.decisions)
        lines = [
            f"prune: criterion {self.criterion}, round_to {self.round_to}, "
            + (f"ratio {self.config.ratio} ({self.config.scope})" if self.config.budget is None
               else f"budget {self.config.budget} of {self.config.metric} ({self.config.scope})"),
            (f"  params {self.params_before:,} -> {self.params_after:,} ({self.param_ratio:.3f}x), "
             f"MACs {self.macs_before:,.0f} -> {self.macs_after:,.0f} ({self.mac_ratio:.3f}x), "
             f"predicted latency {self.latency_ratio:.3f}x"),
            "  groups: " + ", ".join(f"{k} {v}" for k, v in sorted(by_status.items())),
            f"  path: {self.path}",
        ]
        if self.static_dims:
            lines.append(f"  dims kept static: {'; '.join(str(s) for s in self.static_dims)}")
        if self.budget_achieved is not None:
            lines.append(f"  budget: plan keeps {self.budget_achieved:.3f} of {self.config.metric}")
        for entry, ids in self.ignored.items():
            lines.append(f"  ignore {entry!r} froze {len(ids)} groups: {', '.join(ids[:6])}"
                         + (" ..." if len(ids) > 6 else ""))
        for d in self.failed:
            lines.append(f"  failed {d.group}: {d.reason}")
        fixed = [f for f in self.reconstruction if f.applied]
        if fixed:
            errs = [(f.error_before, f.error_after) for f in fixed if f.error_before is not None
                    and f.error_after is not None]
            if errs:
                b = sum(e[0] for e in errs) / len(errs)
                a = sum(e[1] for e in errs) / len(errs)
                lines.append(f"  reconstruction ({self.config.reconstruct}): {len(fixed)} readers, mean predicted "
                             f"relative error {b:.3f} -> {a:.3f}")
            else:
                lines.append(f"  reconstruction ({self.config.reconstruct}): {len(fixed)} readers")
        return "\n".join(lines)
