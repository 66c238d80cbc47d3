"""Report charts as inline SVG text, drawn with matplotlib's object API (no pyplot, no global state).

Each function takes plain data and returns an ``<svg>`` element ready to embed in HTML, or ``None`` when
matplotlib is not installed (the report then shows the same numbers as tables only).
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fxopt.viz.layers import LayerRow

if TYPE_CHECKING:  # matplotlib is optional: imported where a chart is drawn
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

BEFORE = "#b0bec5"
AFTER = "#1e88e5"
PREDICTED = "#8e24aa"
MEASURED = "#43a047"
ROW_INCHES = 0.26


def matplotlib_available() -> bool:
    """Whether charts can be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _svg(fig: Figure) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "fxopt"}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    text = re.sub(r"<\?xml[^>]*\?>\s*", "", text)
    text = re.sub(r"<!DOCTYPE[^>]*>\s*", "", text)
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)  # creation date: keep output stable
    return text.strip()


def _scale(values: Sequence[float]) -> tuple[float, str]:
    top = max(values, default=0.0)
    for factor, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if top >= factor:
            return factor, unit
    return 1.0, ""


def layer_chart(rows: Sequence[LayerRow], metric: str, title: str) -> str | None:
    """Horizontal bars per layer: ``metric`` (``"params"`` or ``"flops"``) before (grey) and after (blue).

    Args:
        rows: from ``fxopt.viz.layers.layer_table``.
        metric: which numbers to draw.
        title: the chart title.

    Returns:
        SVG text, or ``None`` without matplotlib or without rows.
    """
    if not rows or not matplotlib_available():
        return None
    from matplotlib.figure import Figure

    before = [float(getattr(r, f"{metric}_before")) for r in rows]
    after_raw = [getattr(r, f"{metric}_after") for r in rows]
    has_after = any(a is not None for a in after_raw)
    after = [float(a or 0.0) for a in after_raw]
    factor, unit = _scale(before + after)
    n = len(rows)
    fig = Figure(figsize=(6.2, max(2.0, 0.8 + ROW_INCHES * n)))
    ax = fig.add_subplot()
    ys = list(range(n))[::-1]
    height = 0.4 if has_after else 0.7
    ax.barh([y + (height / 2 if has_after else 0) for y in ys], [b / factor for b in before], height=height,
            color=BEFORE, label="before")
    if has_after:
        ax.barh([y - height / 2 for y in ys], [a / factor for a in after], height=height, color=AFTER,
                label="after")
    ax.set_yticks(ys, [r.name for r in rows], fontsize=8)
    ax.set_xlabel(f"{'parameters' if metric == 'params' else 'FLOPs'} ({unit})" if unit else metric)
    ax.set_title(title, fontsize=11, loc="left")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if has_after:
        ax.legend(loc="lower right", fontsize=8, frameon=False)
    return _svg(fig)


def latency_chart(predicted: tuple[float | None, float | None], measured: tuple[float | None, float | None],
                  title: str = "latency per forward pass") -> str | None:
    """Grouped bars: predicted and measured milliseconds, before and after.

    Args:
        predicted: ``(before, after)`` predicted milliseconds (``None`` where unknown).
        measured: ``(before, after)`` measured milliseconds (``None`` where not measured).
        title: the chart title.

    Returns:
        SVG text, or ``None`` without matplotlib or without any number.
    """
    if all(v is None for v in (*predicted, *measured)) or not matplotlib_available():
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 2.8))
    ax = fig.add_subplot()
    xs = [0.0, 1.0]
    width = 0.36
    for offset, values, colour, label in ((-width / 2, predicted, PREDICTED, "predicted"),
                                          (width / 2, measured, MEASURED, "measured")):
        points = [(x + offset, v) for x, v in zip(xs, values, strict=True) if v is not None]
        if not points:
            continue
        bars = ax.bar([p[0] for p in points], [p[1] for p in points], width=width, color=colour, label=label)
        ax.bar_label(bars, labels=[f"{p[1]:.3g}" for p in points], fontsize=8, padding=2)
    ax.set_xticks(xs, ["before", "after"])
    ax.set_ylabel("ms")
    ax.set_title(title, fontsize=11, loc="left")
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(fontsize=8, frameon=False)
    return _svg(fig)
