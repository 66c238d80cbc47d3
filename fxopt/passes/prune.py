"""The ``prune`` pass: structured pruning on zero-invariant groups (lossy, opt-in).

``prune(ratio=0.5,round_to=8)`` removes half of the units of every exact group (the least important under
``criterion``) and rounds each group's kept channels to a multiple of 8. Ratio, budget and ignore semantics are
those of ``fxopt.pruning.PruneConfig``; data-aware criteria and reconstruction read calibration batches from
``ctx.calibration`` (and a ``loss_fn`` from ``ctx.options`` for the Taylor criterion).

The pass prunes the graph module it was given in place with ``fxopt.pruning.prune_graph``, the same editor-based
removal ``fxopt.pruning.prune`` runs on a copy: every resized tensor, every changed module attribute and every
rewritten node argument is an edit of the pass's GraphEditor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import fx

from fxopt.analysis.analysis import analyze_graph
from fxopt.passes.base import Pass, PassContext, PassResult, register_pass
from fxopt.passes.editor import GraphEditor
from fxopt.passes.verify import shape_inputs
from fxopt.pruning.config import DEFAULT_GRANULARITY, PruneConfig
from fxopt.pruning.pruner import prune_graph
from fxopt.pruning.report import PruneReport

Ratio = float | tuple[tuple[str, float], ...] | None


@register_pass
@dataclass(frozen=True)
class PrunePass(Pass):
    """Structured pruning: remove the least important units of every eligible group (see PruneConfig).

    Attributes:
        ratio: fraction of units removed per group (``scope="uniform"``) or overall (``"global"``); or
            ``(("layer4", 0.7), ("*", 0.3))`` pairs per group id, module name/prefix or ``re:`` regex.
        budget: keep at most this fraction of ``metric`` (instead of a ratio).
        metric: ``"params"``, ``"macs"``/``"flops"`` or ``"latency"`` (predicted on the target).
        scope: ``"uniform"`` or ``"global"``.
        criterion: importance criterion name (``l1``, ``l2``, ``bn_scale``, ``taylor``, ``variance``, ...).
        normalize: score normalization override for global ranking.
        round_to: kept channels are multiples of this (None: the target's alignment).
        floor: every group keeps at least this fraction of its units.
        ignore: module names, prefixes, ``re:`` regexes, group ids or module type names not to prune.
        granularity: kinds of group to prune (``channel``, ``head``, ``head_dim``, ``repeat``, ``block``).
        approximate: also prune groups that are not exactly zero-invariant.
        reconstruct: None, ``"bias"`` or ``"ls"`` (needs calibration data in the context).
        ridge: ridge strength of the least-squares reconstruction.

    Example:
        >>> run = PassManager("prune(ratio=0.5,round_to=8)").run(fxopt.trace(model, x), (x,))
    """

    name: ClassVar[str] = "prune"
    lossless: ClassVar[bool] = False

    ratio: Ratio = None
    budget: float | None = None
    metric: str = "params"
    scope: str = "uniform"
    criterion: str = "l2"
    normalize: str | None = None
    round_to: int | None = None
    floor: float = 0.1
    ignore: tuple[str, ...] = ()
    granularity: tuple[str, ...] = DEFAULT_GRANULARITY
    approximate: bool = False
    reconstruct: str | None = None
    ridge: float = 1e-3

    def __post_init__(self) -> None:
        if isinstance(self.ratio, Mapping):
            object.__setattr__(self, "ratio", tuple((str(k), float(v)) for k, v in self.ratio.items()))
        elif isinstance(self.ratio, list):
            object.__setattr__(self, "ratio", tuple(tuple(p) for p in self.ratio))
        for name in ("ignore", "granularity"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        self.config()  # validates: invalid options fail when the pass is built, not when it runs

    def config(self) -> PruneConfig:
        """The equivalent PruneConfig."""
        options = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if isinstance(options["ratio"], tuple):
            options["ratio"] = dict(options["ratio"])
        return PruneConfig(**options)

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        """Prune ``gm`` in place; the result carries the PruneReport's figures and each skipped group's reason."""
        editor = GraphEditor(gm, ctx, str(self))
        analysis = analyze_graph(gm, shape_inputs(gm, ctx.example_inputs))
        report, _ = prune_graph(editor, analysis, self.config(), calibration=ctx.calibration,
                                loss_fn=ctx.options.get("loss_fn"), target=ctx.target)
        for d in report.decisions:
            if d.status not in ("pruned", "unchanged"):
                editor.skip(f"prune:{d.status}", d.group, d.reason)
        for line in report.to_text().splitlines():
            editor.note(line.strip())
        return editor.finish(metrics=report_metrics(report))


def report_metrics(report: PruneReport) -> dict[str, Any]:
    """The PassResult metrics of a pruning run: (before, after) pairs and ratios."""
    return {
        "prune_params": (report.params_before, report.params_after),
        "prune_macs": (report.macs_before, report.macs_after),
        "predicted_latency_ratio": report.latency_ratio,
        "groups_pruned": len(report.pruned),
        "groups_failed": len(report.failed),
        "ignored": {k: list(v) for k, v in report.ignored.items()},
    }
