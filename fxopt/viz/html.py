"""The HTML report of an ``optimize`` run: one self-contained page (inline CSS and SVG, no scripts, no network).

It shows the before/after totals, one row per pass (what changed, what was skipped and why), per-layer
parameters and FLOPs before and after (matplotlib charts), predicted against measured latency, the graph picture
with what the pipeline changed, and the plain-text summary. ``collect_extras`` computes what the Report alone does
not hold (per-layer numbers, timings, the picture) from the modules; ``render_html`` only formats data.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx

from fxopt.timing import Measurement
from fxopt.timing import measure as time_side_by_side
from fxopt.viz.charts import latency_chart, layer_chart, matplotlib_available
from fxopt.viz.labels import cell_text, count_text
from fxopt.viz.layers import LayerRow, layer_table

log = logging.getLogger(__name__)

MAX_ROWS = 200
"""Edits and skips listed per pass at most (the counts are always complete)."""


@dataclass(frozen=True)
class ReportExtras:
    """What the page shows beyond the Report: per-layer rows, measured latency, the graph picture.

    Attributes:
        layers: per-layer parameters and FLOPs (before and after).
        measured: the original and the optimized module timed side by side (``fxopt.timing``), or None.
        graph_svg: the before/after picture as SVG text.
        notes: why a part is missing (no Graphviz, no original model, ...).
    """

    layers: tuple[LayerRow, ...] = ()
    measured: Measurement | None = None
    graph_svg: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def collect_extras(report: Any, optimized: torch.nn.Module | None = None, original: torch.nn.Module | None = None,
                   inputs: Sequence[Any] = (), *, analysis: Any = None, measure: bool = True,
                   graph: bool = True, rounds: int = 10) -> ReportExtras:
    """Per-layer numbers, timings and the before/after picture for ``report``.

    Args:
        report: the Report (``fxopt.report(optimized)``).
        optimized: the module ``optimize`` returned.
        original: the model that was optimized (its graph is re-traced for the before view).
        inputs: the example inputs.
        analysis: ``fxopt.analyze(original, inputs)`` if already computed (colours the picture's groups).
        measure: time both modules side by side, unless the report already carries a measurement
            (``fxopt.measure``), which is then shown as it is.
        graph: draw the before/after picture (needs Graphviz).
        rounds: timing rounds.
    """
    from fxopt.analysis.analysis import analyze
    from fxopt.viz.api import optimized_parts, visualize
    from fxopt.viz.render import dot_executable
    notes: list[str] = []
    parts = optimized_parts(optimized) if optimized is not None else None
    after = parts[0] if parts is not None else None
    inputs = tuple(inputs) or (parts[2] if parts is not None else ())
    before: fx.GraphModule | None = None
    if original is not None and inputs:
        if analysis is None:
            analysis = analyze(original, inputs)
        before = analysis.gm
    else:
        notes.append("the original model was not given: no per-layer comparison, timing or before/after picture")
    layers: list[LayerRow] = []
    if before is not None:
        layers = layer_table(before, inputs, after)
    elif after is not None and inputs:
        layers = layer_table(after, inputs)
    measured = getattr(report, "measured", None)
    if measured is None and measure and original is not None and optimized is not None and inputs:
        measured = time_side_by_side({"original": original, "optimized": optimized}, inputs, rounds=rounds)
    svg = None
    if graph and after is not None:
        if dot_executable() is None:
            notes.append("Graphviz is not installed (apt-get install graphviz): no graph picture")
        else:
            picture = visualize(after, before=before, analysis=analysis, report=report, fmt="svg",
                                title=f"{getattr(report, 'model', 'model')}: before → after")
            svg = _render_svg(picture.dot)
    return ReportExtras(tuple(layers), measured, svg, tuple(notes))


def _render_svg(dot_text: str) -> str | None:
    import subprocess

    from fxopt.viz.render import dot_executable

    exe = dot_executable()
    if exe is None:
        return None
    proc = subprocess.run([exe, "-Tsvg"], input=dot_text.encode(), capture_output=True, timeout=300, check=False)
    if proc.returncode != 0:
        log.warning("dot failed: %s", proc.stderr.decode(errors="replace")[:300])
        return None
    return _strip_svg(proc.stdout.decode())


def _strip_svg(text: str) -> str:
    """An SVG document as an element to inline: without XML prolog, doctype and comments."""
    text = re.sub(r"<\?xml[^>]*\?>\s*", "", text)
    text = re.sub(r"<!DOCTYPE[^>]*>\s*", "", text)
    return re.sub(r"<!--.*?-->\s*", "", text, flags=re.S).strip()


# ----------------------------------------------------------------------------------------------- rendering

_CSS = """
body{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif;margin:24px 32px;color:#212121;max-width:1400px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #e0e0e0}
.sub{color:#616161;font-size:13px} code{background:#f5f5f5;padding:1px 4px;border-radius:3px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-top:14px}
.card{border:1px solid #e0e0e0;border-radius:8px;padding:10px 14px;min-width:150px}
.card .k{font-size:12px;color:#757575} .card .v{font-size:18px;font-weight:bold} .card .r{font-size:12px}
.good{color:#2e7d32} .bad{color:#c62828}
table{border-collapse:collapse;font-size:13px;margin:6px 0} th,td{border:1px solid #e0e0e0;padding:4px 8px;
text-align:left;vertical-align:top} th{background:#fafafa} td.n{text-align:right;font-variant-numeric:tabular-nums}
.charts{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start} .chart svg{max-width:100%;height:auto}
.graph{border:1px solid #e0e0e0;max-height:1000px;overflow:auto} .graph svg{display:block;max-width:100%;height:auto}
.warn{background:#fff8e1;border-left:4px solid #ffa000;padding:6px 10px;margin:4px 0;font-size:13px}
details{margin:4px 0} summary{cursor:pointer;font-size:13px} pre{font-size:12px;background:#fafafa;padding:10px}
"""


def _fmt_num(value: float, unit: str = "") -> str:
    return count_text(value) + unit if abs(value) >= 1e3 else f"{value:.3g}{unit}"


def _card(label: str, before: float | None, after: float | None, unit: str = "", ratio: float | None = None,
          note: str = "") -> str:
    if before is None or after is None:
        shown = _fmt_num(before if before is not None else after or 0.0, unit)
        return f'<div class="card"><div class="k">{escape(label)}</div><div class="v">{shown}</div></div>'
    if ratio is None:
        ratio = after / before if before else 1.0
    cls = "good" if ratio < 0.999 else "bad" if ratio > 1.001 else ""
    sub = f'<div class="k">{escape(note)}</div>' if note else ""
    return (f'<div class="card"><div class="k">{escape(label)}</div><div class="v">{_fmt_num(before, unit)} → '
            f'{_fmt_num(after, unit)}</div><div class="r {cls}">{ratio:.3f}×</div>{sub}</div>')


def _measured_card(m: Measurement | None) -> str:
    """The measured-latency card: medians, the median per-round ratio and the spread (as in the text report)."""
    if m is None:
        return ('<div class="card"><div class="k">measured latency</div><div class="v">not timed</div>'
                '<div class="k">predicted figures only</div></div>')
    before, after = m["original"], m["optimized"]
    note = f"±{50 * before.spread:.1f}% / ±{50 * after.spread:.1f}%" + (" · unreliable" if m.warnings else "")
    return _card("measured latency", before.median_ms, after.median_ms, " ms", m.ratio("original", "optimized"),
                 note)


def _metrics(result: Any) -> str:
    tables = result.tables()
    shown = {k: v for k, v in dict(getattr(result, "metrics", {})).items() if k not in ("nodes", "params", *tables)}
    return escape(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))


def _pass_rows(results: Sequence[Any]) -> list[str]:
    rows = []
    for i, r in enumerate(results, 1):
        counts = Counter(e.action for e in r.edits)
        changed = ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items())) or "nothing"
        reasons = Counter(f"{s.rule}: {s.reason}" for s in r.skips)
        skipped = "<br>".join(f"×{n} {escape(k)}" for k, n in reasons.most_common(5)) or "-"
        nodes = dict(r.metrics).get("nodes")
        node_text = f"{nodes[0]} → {nodes[1]}" if isinstance(nodes, tuple) and len(nodes) == 2 else ""
        status = '<b class="good">changed</b>' if r.changed else "unchanged"
        rows.append(f"<tr><td class=n>{i}</td><td><code>{escape(r.pass_name)}</code></td><td>{status}</td>"
                    f"<td>{escape(changed)}</td><td>{skipped}</td><td>{escape(node_text)}</td>"
                    f"<td>{_metrics(r)}{''.join('<br><i>' + escape(n) + '</i>' for n in r.notes[:3])}</td>"
                    f"<td class=n>{r.duration_s:.2f}</td></tr>")
    return rows


def _pass_details(results: Sequence[Any]) -> list[str]:
    out = []
    for r in results:
        tables = r.tables()
        if not r.edits and not r.skips and not tables:
            continue
        body = [f"<table><tr>{''.join(f'<th>{escape(k)}</th>' for k in rows[0])}</tr>" + "".join(
            "<tr>" + "".join(f"<td>{escape(cell_text(v))}</td>" for v in row.values()) + "</tr>" for row in rows)
            + "</table>" for rows in tables.values()]
        if r.skips:
            body.append("<table><tr><th>rule</th><th>node</th><th>why it did not fire</th></tr>" + "".join(
                f"<tr><td>{escape(s.rule)}</td><td><code>{escape(s.node)}</code></td><td>{escape(s.reason)}</td></tr>"
                for s in r.skips[:MAX_ROWS]) + "</table>")
        if r.edits:
            body.append("<table><tr><th>edit</th><th>target</th><th>detail</th></tr>" + "".join(
                f"<tr><td>{escape(e.action)}</td><td><code>{escape(e.target)}</code></td><td>{escape(e.detail)}</td>"
                "</tr>" for e in r.edits[:MAX_ROWS]) + "</table>")
        more = max(len(r.edits), len(r.skips)) - MAX_ROWS
        tail = f"<p class=sub>… {more} more rows</p>" if more > 0 else ""
        out.append(f"<details><summary><code>{escape(r.pass_name)}</code>: {len(r.edits)} edits, "
                   f"{len(r.skips)} skipped</summary>{''.join(body)}{tail}</details>")
    return out


def _layer_table(rows: Sequence[LayerRow]) -> str:
    body = "".join(
        f"<tr><td><code>{escape(r.name)}</code></td><td class=n>{r.params_before:,}</td>"
        f"<td class=n>{'' if r.params_after is None else f'{r.params_after:,}'}</td>"
        f"<td class=n>{_fmt_num(r.flops_before)}</td>"
        f"<td class=n>{'' if r.flops_after is None else _fmt_num(r.flops_after)}</td></tr>" for r in rows)
    return ("<table><tr><th>layer</th><th>params before</th><th>params after</th><th>FLOPs before</th>"
            f"<th>FLOPs after</th></tr>{body}</table>")


def render_html(report: Any, extras: ReportExtras | None = None, title: str | None = None) -> str:
    """The report page as one HTML string.

    Args:
        report: a ``fxopt.report.Report``.
        extras: per-layer rows, timings and the picture (``collect_extras``); without them the page shows the
            Report's own data.
        title: the page title (default: ``"fxopt report: <model>"``).
    """
    extras = extras or ReportExtras()
    if extras.measured is not None and getattr(report, "measured", None) is None:
        report = report.with_measurement(extras.measured)  # the text summary shows the card's figures
    measured = getattr(report, "measured", None)
    b, a = report.before, report.after
    title = title or f"fxopt report: {report.model}"
    pm, am = (measured["original"].median_ms, measured["optimized"].median_ms) if measured else (None, None)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<div class="sub">{escape(report.model)} on <b>{escape(report.target_description)}</b> · pipeline '
        f"<code>{escape(report.pipeline)}</code> · captured with {escape(report.frontend)} · "
        f"{'compiled' if report.lowered else 'eager'}"
        + (f" ({escape(report.lowering_note)})" if report.lowering_note else "") + "</div>",
        '<div class="cards">',
        _card("parameters", b.params, a.params),
        _card("FLOPs per forward", b.flops, a.flops),
        _card("predicted latency", b.predicted_s * 1e3, a.predicted_s * 1e3, " ms"),
    ]
    parts.append(_measured_card(measured))
    parts += [_card("graph nodes", b.nodes, a.nodes), "</div>"]
    timing_warnings = tuple(f"timing: {w}" for w in (measured.warnings if measured else ()))
    parts += [f'<div class="warn">{escape(w)}</div>' for w in (*report.warnings, *timing_warnings, *extras.notes)]
    parts += ["<h2>Passes</h2>",
              "<table><tr><th>#</th><th>pass</th><th>result</th><th>what changed</th><th>skipped (why)</th>"
              "<th>nodes</th><th>metrics and notes</th><th>s</th></tr>", *_pass_rows(report.results), "</table>",
              *_pass_details(report.results)]
    parts.append("<h2>Per layer</h2>")
    if extras.layers:
        charts = [layer_chart(extras.layers, "params", "parameters per layer"),
                  layer_chart(extras.layers, "flops", "FLOPs per layer")]
        if any(charts):
            parts.append('<div class="charts">' + "".join(f'<div class="chart">{c}</div>' for c in charts if c)
                         + "</div>")
        elif not matplotlib_available():
            parts.append('<div class="warn">install matplotlib for charts (pip install matplotlib)</div>')
        parts.append(f"<details><summary>table</summary>{_layer_table(extras.layers)}</details>")
    else:
        parts.append('<p class="sub">no per-layer data (the original model was not given)</p>')
    parts.append("<h2>Latency: predicted and measured</h2>")
    chart = latency_chart((b.predicted_s * 1e3, a.predicted_s * 1e3), (pm, am))
    if chart:
        parts.append(f'<div class="chart">{chart}</div>')
    how = f"measured: {escape(measured.method())}" if measured else "measured: not timed"
    parts.append(f'<p class="sub">predicted: roofline of {escape(report.target)} in eager mode; {how}.</p>')
    parts.append("<h2>Graph</h2>")
    if extras.graph_svg:
        parts.append('<p class="sub">colours: channel groups; grey dashed: removed; green: new; orange: resized; '
                     "purple double border: fused.</p>")
        parts.append(f'<div class="graph">{extras.graph_svg}</div>')
    else:
        parts.append('<p class="sub">no picture (see the notes above)</p>')
    parts.append(f"<h2>Text summary</h2><pre>{escape(report.to_text())}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(source: Any, path: str | Path, *, original: torch.nn.Module | None = None,
                 inputs: Sequence[Any] = (), analysis: Any = None, title: str | None = None, graph: bool = True,
                 measure: bool = True, rounds: int = 10) -> Path:
    """Write the HTML report of an ``optimize`` run.

    Args:
        source: the module ``fxopt.optimize`` returned, or its Report (then only the Report's data is shown).
        path: the .html file to write.
        original: the model that was optimized: enables per-layer before/after, timing and the picture.
        inputs: example inputs (default: those ``optimize`` stored).
        analysis: ``fxopt.analyze(original, inputs)``, if computed already.
        title: the page title.
        graph: include the before/after graph picture.
        measure: time the original and the optimized module side by side, unless the report carries a
            measurement already (``fxopt.measure``).
        rounds: timing rounds.

    Returns:
        The path written.

    Example:
        >>> fast = fxopt.optimize(model, x, prune=0.5)
        >>> write_report(fast, "report.html", original=model)
    """
    from fxopt.viz.api import optimized_parts

    parts = optimized_parts(source)
    report = parts[1] if parts is not None else source
    optimized = source if parts is not None else None
    extras = collect_extras(report, optimized, original, inputs, analysis=analysis, measure=measure, graph=graph,
                            rounds=rounds)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(report, extras, title))
    log.info("wrote %s", out)
    return out
