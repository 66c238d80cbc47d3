"""The ``prune`` pass: structured pruning on zero-invariant groups (lossy, opt-in).

``prune(ratio=0.5,round_to=8)`` removes half of the units of every exact group (the least important under
``criterion``) and rounds each group's kept channels to a multiple of 8. Ratio, budget and ignore semantics are
those of ``fxopt.pruning.PruneConfig``; data-aware criteria and reconstruction read calibration batches from
``ctx.calibration`` (and ``ctx.loss_fn`` for the Taylor criterion).

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
from fxopt.pruning.config import PruneConfig
from fxopt.pruning.prune_report import PruneReport
from fxopt.pruning.pruner import prune_graph


@register_pass
@dataclass(frozen=True)
class PrunePass(PruneConfig, Pass):
    """Structured pruning: remove the least important units of every eligible group (see PruneConfig).

    The options are ``PruneConfig``'s fields (ratio, budget, metric, scope, criterion, normalize, round_to, floor,
    ignore, granularity, approximate, reconstruct, ridge), inherited so that they are declared once. A per-key
    ratio is held as ``(key, fraction)`` pairs, the hashable form the spec text prints:
    ``prune(ratio=(('layer4', 0.7), ('*', 0.3)))``.

    Example:
        >>> run = PassManager("prune(ratio=0.5,round_to=8)").run(fxopt.trace(model, x), (x,))
    """

    name: ClassVar[str] = "prune"
    lossless: ClassVar[bool] = False

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
        """The equivalent PruneConfig (a per-key ratio as a mapping)."""
        return PruneConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(PruneConfig)})

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        """Prune ``gm`` in place; the result carries the PruneReport's figures and each skipped group's reason."""
        editor = GraphEditor(gm, ctx, str(self))
        analysis = analyze_graph(gm, shape_inputs(gm, ctx.example_inputs))
        report, _ = prune_graph(editor, analysis, self.config(), calibration=ctx.calibration,
                                loss_fn=ctx.loss_fn, target=ctx.target)
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
