"""What ``fxopt.optimize`` did: the data (``Report``) and its text rendering, kept apart.

The Report holds each pass's PassResult and the model's parameters, FLOPs and predicted time before and after;
``render_text`` (and ``Report.to_text``) print it. Other renderings (HTML) read the same data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fxopt.errors import FxoptError
from fxopt.passes.base import PassResult
from fxopt.timing import Measurement
from fxopt.trace import StaticDim
from fxopt.viz.labels import cell_text


@dataclass(frozen=True)
class ModelStats:
    """Size and cost of a model at its example inputs.

    Attributes:
        params: number of parameter elements.
        flops: FLOPs of one forward pass.
        predicted_s: predicted time of one forward pass on the report's target (roofline, eager).
        nodes: graph nodes.
    """

    params: int
    flops: float
    predicted_s: float
    nodes: int


@dataclass(frozen=True)
class Report:
    """The record of one ``optimize`` run.

    Attributes:
        model: the model's class name.
        target: the target's name.
        target_description: a one-line description of the target.
        pipeline: the pipeline's spec text.
        frontend: the capture front-end (``fx`` or ``export``) and, for a fallback, why.
        before: the traced model's stats.
        after: the optimized model's stats.
        results: one PassResult per pass, in order.
        lowered: whether the returned module is compiled.
        lowering_note: what lowering did or why it fell back to eager.
        warnings: anything the user should know (folded parameters no longer train, ...).
        measured: the original and the optimized module timed side by side on this machine (labels
            ``"original"`` and ``"optimized"``), or None where they were not timed.
        static_dims: batch, sequence and image dims the graph runs at the example's size only, each with the
            node that fixes it.
    """

    model: str
    target: str
    target_description: str
    pipeline: str
    frontend: str
    before: ModelStats
    after: ModelStats
    results: tuple[PassResult, ...] = ()
    lowered: bool = False
    lowering_note: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)
    measured: Measurement | None = None
    static_dims: tuple[StaticDim, ...] = ()

    def with_measurement(self, measured: Measurement) -> Report:
        """This report with ``measured`` (labels ``"original"`` and ``"optimized"``) attached."""
        return dataclasses.replace(self, measured=measured)

    @property
    def speedup_predicted(self) -> float:
        """Predicted time before divided by predicted time after."""
        return self.before.predicted_s / self.after.predicted_s if self.after.predicted_s > 0 else 1.0

    def result(self, pass_name: str) -> PassResult:
        """The result of the first pass whose spec starts with ``pass_name``.

        Raises:
            FxoptError: when no such pass ran; the message lists the passes that did.
        """
        for r in self.results:
            if r.pass_name.split("(")[0] == pass_name:
                return r
        raise FxoptError(f"no pass {pass_name!r} ran; passes that ran: "
                         f"{', '.join(r.pass_name for r in self.results) or '(none)'}")

    def to_text(self) -> str:
        """A plain-text rendering."""
        return render_text(self)

    def to_html(self, path: str, **options: Any) -> Any:
        """Write the HTML report page; pass ``original=model`` (and the optimized module as ``module=``) for
        per-layer charts, measured timings and the graph picture (see ``fxopt.viz.html.write_report``)."""
        from fxopt.viz.html import write_report

        return write_report(options.pop("module", self), path, **options)


def _ratio(before: float, after: float) -> str:
    return f"{after / before:.3f}x" if before else "-"


def render_text(report: Report) -> str:
    """Render a Report as plain text: header, before/after table, one block per pass."""
    b, a = report.before, report.after
    lines = [
        f"fxopt report: {report.model} for {report.target_description}",
        f"  pipeline: {report.pipeline}",
        f"  captured with: {report.frontend}",
        *([f"  dims kept static: {'; '.join(str(s) for s in report.static_dims)}"] if report.static_dims else []),
        f"  lowered: {'yes' if report.lowered else 'no'}"
        + (f" ({report.lowering_note})" if report.lowering_note else ""),
        "",
        f"  {'':24} {'before':>14} {'after':>14} {'ratio':>8}",
        f"  {'parameters':24} {b.params:>14,} {a.params:>14,} {_ratio(b.params, a.params):>8}",
        f"  {'GFLOPs':24} {b.flops / 1e9:>14.4f} {a.flops / 1e9:>14.4f} {_ratio(b.flops, a.flops):>8}",
        f"  {'predicted ms (eager)':24} {b.predicted_s * 1e3:>14.3f} {a.predicted_s * 1e3:>14.3f} "
        f"{_ratio(b.predicted_s, a.predicted_s):>8}",
        f"  {'graph nodes':24} {b.nodes:>14,} {a.nodes:>14,} {_ratio(b.nodes, a.nodes):>8}",
        "",
        "  passes:",
    ]
    for r in report.results:
        lines.append(f"    {r.summary()}  [{r.duration_s:.2f}s]")
        tables = r.tables()
        shown = {k: v for k, v in r.metrics.items() if k not in ("nodes", "params", *tables)}
        if shown:
            lines.append("      " + ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()))
        for key, rows in tables.items():
            lines.append(f"      {key}:")
            lines += ["        " + ", ".join(f"{k} {cell_text(v)}" for k, v in row.items()) for row in rows]
        for note in r.notes[:5]:
            lines.append(f"      note: {note}")
        reasons: dict[str, int] = {}
        for s in r.skips:
            key = f"{s.rule}: {s.reason}"
            reasons[key] = reasons.get(key, 0) + 1
        for key, count in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]:
            lines.append(f"      skipped x{count}: {key}")
    lines.append("")
    lines += ["  " + line for line in measured_lines(report)]
    for w in report.warnings:
        lines.append(f"  warning: {w}")
    return "\n".join(lines)


def measured_lines(report: Report) -> list[str]:
    """The measured latency in plain text (the same figures the HTML report's card shows), or why there is none."""
    m = report.measured
    if m is None:
        return ["measured: not timed on this machine (predicted figures only; `fxopt bench` or "
                "`fxopt.measure(model, optimized)` time them)"]
    before, after = m["original"], m["optimized"]
    lines = [f"measured: {before.to_text()} -> {after.to_text()}, "
             f"{m.ratio('original', 'optimized'):.3f}x ({m.method()})"]
    return lines + [f"warning: {w}" for w in m.warnings]


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
