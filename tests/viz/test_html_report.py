"""The HTML report: its content from a Report, the charts, and how headless Chromium renders it."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from fxopt.passes.base import Edit, PassResult, Skip
from fxopt.report import ModelStats, Report
from fxopt.timing import Measurement, Timing
from fxopt.viz.charts import AFTER, BEFORE, MEASURED, latency_chart, layer_chart, matplotlib_available
from fxopt.viz.html import ReportExtras, render_html, write_report
from fxopt.viz.layers import OTHER, LayerRow, layer_table

needs_matplotlib = pytest.mark.skipif(not matplotlib_available(), reason="matplotlib is not installed")
needs_api = pytest.mark.skipif(importlib.util.find_spec("fxopt.api") is None, reason="fxopt.api is not available")
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def _report() -> Report:
    fuse = PassResult("fuse", True, edits=(Edit("replace", "bn1", "bn1 folded into conv1"), Edit("erase", "bn1")),
                      skips=(Skip("conv_bn", "bn2", "bn2 is in training mode"),), metrics={"fired": 1, "nodes": (9, 8)},
                      duration_s=0.12)
    cleanup = PassResult("cleanup", False, metrics={"dead": 0}, notes=("nothing to clean",))
    return Report(model="Net", target="cpu", target_description="cpu (test)", pipeline="fuse,cleanup",
                  frontend="fx", before=ModelStats(1000, 2e6, 1e-3, 9), after=ModelStats(500, 1e6, 5e-4, 8),
                  results=(fuse, cleanup), warnings=("the model is in training mode",))


def test_render_html_lists_passes_changes_and_skip_reasons() -> None:
    html = render_html(_report(), title="my <report>")
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert "<title>my &lt;report&gt;</title>" in html
    assert "<code>fuse</code>" in html and "<code>cleanup</code>" in html
    assert "erase ×1, replace ×1" in html and "×1 conv_bn: bn2 is in training mode" in html
    assert "bn1 folded into conv1" in html and "9 → 8" in html and "<i>nothing to clean</i>" in html
    assert "1k → 500" in html and "0.500×" in html  # the parameters card
    assert "the model is in training mode" in html
    assert "fxopt report: Net for cpu (test)" in html  # the plain-text summary
    assert "no per-layer data" in html and "no picture" in html


@needs_matplotlib
def test_render_html_embeds_layer_and_latency_charts() -> None:
    rows = (LayerRow("conv1", 100, 50, 1e6, 5e5), LayerRow("fc", 40, 40, 1e3, 1e3))
    timed = Measurement((Timing("original", (2.0, 2.0, 2.0), 5), Timing("optimized", (1.0, 1.0, 1.0), 10)),
                        threads=1, cores=2, load=0.0)
    html = render_html(_report(), ReportExtras(rows, timed, "<svg id='g'></svg>", ("a note",)))
    assert html.count("<svg") == 4  # two layer charts, the latency chart, the graph
    assert AFTER in html and BEFORE in html and MEASURED in html
    assert "measured latency" in html and "a note" in html and "<svg id='g'></svg>" in html
    assert "<?xml" not in html and "<!DOCTYPE svg" not in html


@needs_matplotlib
def test_charts_are_stable_svg_and_skip_missing_data() -> None:
    rows = [LayerRow("a", 10, 5, 100.0, 50.0)]
    assert layer_chart(rows, "params", "t") == layer_chart(rows, "params", "t")
    assert layer_chart([], "params", "t") is None
    assert latency_chart((None, None), (None, None)) is None
    only_predicted = latency_chart((2.0, 1.0), (None, None))
    assert only_predicted is not None and MEASURED not in only_predicted


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(y)).mean((2, 3)))


def test_layer_table_counts_params_and_flops_per_layer() -> None:
    import fxopt

    analysis = fxopt.analyze(Net().eval(), torch.randn(1, 3, 8, 8))
    group = next(g for g in analysis.groups if g.id.startswith("conv1."))
    small = fxopt.prune_groups(analysis, {group: range(8)})
    rows = {r.name: r for r in layer_table(analysis.gm, analysis.example_inputs, small)}
    assert list(rows)[-1] == OTHER
    assert rows["conv1"].params_before == 16 * 3 * 9 + 16 and rows["conv1"].params_after == 8 * 3 * 9 + 8
    assert rows["conv1"].flops_before == pytest.approx(2 * 16 * 3 * 9 * 64 + 16 * 64)  # multiply-adds + bias
    assert rows["conv1"].flops_after == pytest.approx(rows["conv1"].flops_before / 2)
    assert rows["fc"].params_after == rows["fc"].params_before
    merged = layer_table(analysis.gm, analysis.example_inputs, small, limit=2)
    assert len(merged) == 2 and merged[-1].name == "(smaller layers)"
    assert sum(r.params_before for r in merged) == sum(r.params_before for r in rows.values())


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fxopt.api import optimize

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(1, 3, 16, 16)
    fast = optimize(model, x, target="cpu", prune=0.5, compile=False)
    return write_report(fast, tmp_path_factory.mktemp("report") / "report.html", original=model, rounds=3)


@needs_api
@needs_matplotlib
def test_write_report_of_optimized_model(report_file: Path) -> None:
    html = report_file.read_text()
    assert "fxopt report: Net" in html and "<h2>Passes</h2>" in html
    for name in ("conv1", "conv2", "fc"):
        assert f"<code>{name}</code>" in html  # per-layer table
    assert "measured latency" in html
    if shutil.which("dot"):
        assert 'class="graph"><svg' in html and "before → after" in html


@needs_api
@needs_matplotlib
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium_with_charts(report_file: Path, tmp_path: Path) -> None:
    pil = pytest.importorskip("PIL.Image")
    shot = tmp_path / "report.png"
    assert CHROMIUM is not None
    proc = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                           "--window-size=1280,2400", f"--screenshot={shot}", report_file.as_uri()],
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    image = pil.open(shot).convert("RGB")
    assert image.size == (1280, 2400)
    colours = {c for _, c in image.getcolors(maxcolors=1 << 20)}

    def rgb(hex_colour: str) -> tuple[int, int, int]:
        return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]

    assert rgb(BEFORE) in colours and rgb(AFTER) in colours, "the per-layer charts were not drawn"
    assert rgb(MEASURED) in colours, "the latency chart was not drawn"
    assert len(colours) > 50  # text, tables and charts, not a blank page
