"""The ``fxopt`` command line: end to end through the installed console script, and every error path.

Subprocess runs pay torch's import (several seconds each), so the success paths and one error per exit code run
as real processes, and the remaining error paths call ``fxopt.cli.main`` in-process with the same arguments.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import fxopt
from fxopt.cli import main

FXOPT = shutil.which("fxopt")
UNTRACEABLE = '''
import torch
from torch import nn

class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -x

def data_dependent():
    return DataDependent(), torch.randn(2, 4)

def mlp():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

def marked_mlp():
    open("factory-was-called", "w").close()
    return mlp(), torch.randn(2, 8)

def not_a_model():
    return 42
'''
needs_optimize = pytest.mark.skipif(importlib.util.find_spec("fxopt.api") is None,
                                    reason="fxopt.api (optimize, report) is not available in this build")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [FXOPT] if FXOPT else [sys.executable, "-m", "fxopt.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                          check=False)


def _inproc(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def models_file(tmp_path: Path) -> Path:
    path = tmp_path / "usermodels.py"
    path.write_text(UNTRACEABLE)
    return path


def test_cli_analyze_zoo_model_prints_groups(tmp_path: Path) -> None:
    proc = _cli("analyze", "torchvision:resnet18", "--json", "groups.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "torchvision:resnet18: captured with fx" in proc.stdout
    assert "layer1.0.conv1.weight/0" in proc.stdout and "fc.weight/0" in proc.stdout
    import json

    data = json.loads((tmp_path / "groups.json").read_text())
    assert len(data["groups"]) == 12 and all(g["exact"] for g in data["groups"])


def test_cli_viz_writes_valid_svg_naming_every_group(tmp_path: Path) -> None:
    if shutil.which("dot") is None:
        pytest.skip("Graphviz `dot` is not installed")
    proc = _cli("viz", "torchvision:resnet18", "-o", "graph.svg", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["torchvision:resnet18: example input 1x3x224x224 (--input SHAPE to change)",
                                        "wrote graph.svg (71 nodes, 12 groups)"]
    text = " ".join(ET.parse(tmp_path / "graph.svg").getroot().itertext())
    analysis = fxopt.analyze(*_zoo("torchvision:resnet18"))
    for g in analysis.groups:
        assert g.id in text


def _zoo(name: str) -> tuple[object, tuple[object, ...]]:
    from fxopt.testing.zoo import get_entry

    entry = get_entry(name)
    return entry.build(), entry.inputs()


def test_cli_unknown_model_one_line_exit_2(tmp_path: Path) -> None:
    proc = _cli("viz", "torchvision:resnet5", "-o", "g.svg", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("fxopt viz: error: unknown model")
    assert "torchvision:resnet50" in proc.stderr  # close names are suggested
    assert not (tmp_path / "g.svg").exists()


def test_cli_untraceable_model_one_line_exit_1(tmp_path: Path, models_file: Path) -> None:
    proc = _cli("analyze", "usermodels:data_dependent", cwd=tmp_path)  # module found in the working directory
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("fxopt analyze: error: could not capture DataDependent")


@pytest.mark.parametrize("args, message", [
    (["optimize", "torchvision:resnet18", "--prune", "1.5"], "--prune: pruning ratio must be in [0, 1), got 1.5"),
    (["bench", "torchvision:resnet18", "--prune", "half"], "pruning ratio must be a number in [0, 1)"),
    (["optimize", "torchvision:resnet18", "--target", "tpu9"], "unknown target 'tpu9'; registered targets: a100"),
    (["analyze", "resnet18"], "unknown model 'resnet18'"),
    (["analyze", "hf:gpt3"], "unknown model 'hf:gpt3'"),
    (["analyze", "no_such_package.models:build"], "cannot import module 'no_such_package.models'"),
    (["viz", "torchvision:resnet18", "-o", "graph.jpg"], "unsupported picture format 'jpg'"),
    (["viz", "torchvision:resnet18", "--input", "1x3xAx4"], "bad input shape '1x3xAx4'"),
    (["analyze", "torchvision:resnet18", "--limit", "0"], "expected a positive integer, got 0"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: COMMAND"),
])
def test_cli_bad_arguments_one_line_exit_2(args: list[str], message: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = _inproc(*args)
    err += capsys.readouterr().err  # argparse writes usage errors to sys.stderr
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert not list(tmp_path.iterdir())


def test_cli_factory_paths(models_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = _inproc("analyze", f"{models_file}:mlp")
    assert code == 2 and err.count("\n") == 1 and "gives no example inputs" in err and "--input" in err
    code, _, err = _inproc("analyze", f"{models_file}:not_a_model")
    assert code == 2 and "returned int, not an nn.Module" in err
    code, _, err = _inproc("analyze", f"{models_file}:missing")
    assert code == 2 and "has no attribute 'missing'" in err
    code, out, err = _inproc("analyze", f"{models_file}:mlp", "--input", "2x8")
    assert code == 0, err
    assert "1 groups (1 exact" in out and "0.weight/0" in out


def test_cli_help_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("analyze", "optimize", "viz", "bench", "list"):
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        assert text.startswith(f"usage: fxopt {command}") and "--quiet" in text
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(c in text for c in ("analyze", "optimize", "viz", "bench", "package.module:factory"))


def test_cli_list_names_builtin_models() -> None:
    code, out, _ = _inproc("list", "--family", "hf")
    assert code == 0 and "hf:gpt2" in out.split() and all(n.startswith("hf:") for n in out.split())


def test_cli_viz_without_graphviz_writes_dot_and_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fxopt.viz import render

    monkeypatch.setattr(render, "dot_executable", lambda: None)
    code, out, err = _inproc("viz", "torchvision:resnet18", "-o", str(tmp_path / "graph.svg"))
    assert code == 0 and "wrote" not in out
    assert err.count("\n") == 1 and "apt-get install graphviz" in err
    assert (tmp_path / "graph.dot").read_text().startswith("digraph fxopt {")


@needs_optimize
def test_cli_optimize_writes_model_and_report(tmp_path: Path) -> None:
    proc = _cli("optimize", "torchvision:resnet18", "--target", "cpu", "--prune", "0.5", "--out", "model.pt2",
                "--report", "report.html", "--no-compile", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "model.pt2").stat().st_size > 0
    html = (tmp_path / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html
    assert "wrote report.html" in proc.stdout


@needs_optimize
def test_cli_bench_prints_medians_spread_and_method() -> None:
    code, out, err = _inproc("bench", "torchvision:resnet18", "--input", "1x3x32x32", "--rounds", "3",
                             "--no-compile")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "torchvision:resnet18: example input 1x3x32x32"
    assert lines[2].startswith("measured: median of 3 interleaved rounds of ")
    table = {line.split()[0]: line.split() for line in lines[3:] if line.startswith(("original", "optimized"))}
    assert set(table) == {"original", "optimized"} and table["original"][-1] == "1.000x"
    assert all(row[2].startswith("±") and row[2].endswith("%") for row in table.values())


def _card_figures(html: str) -> tuple[str, str, str]:
    import re

    card = html[html.index('<div class="k">measured latency</div>'):]
    found = re.search(r'class="v">([\d.]+) ms → ([\d.]+) ms</div><div class="r[^"]*">([\d.]+)×', card)
    assert found, card[:400]
    return found.group(1), found.group(2), found.group(3)


@needs_optimize
def test_cli_optimize_text_and_html_report_show_the_same_measurement(models_file: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """D4: the HTML card said 13.6x slower while `fxopt bench` said 2.3x faster; now both come from one run."""
    import re

    monkeypatch.chdir(tmp_path)
    code, out, err = _inproc("optimize", f"{models_file}:mlp", "--input", "2x8", "--no-compile", "--no-graph",
                             "--rounds", "3", "--report", "r.html")
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.strip().startswith("measured:"))
    pattern = r"measured: ([\d.]+) ms ±[\d.]+% -> ([\d.]+) ms ±[\d.]+%, ([\d.]+)x \(median of 3 interleaved"
    text = re.search(pattern, line)
    assert text, line
    before, after, ratio = _card_figures((tmp_path / "r.html").read_text())
    assert float(before) == pytest.approx(float(text.group(1)), rel=5e-3, abs=5e-3)
    assert float(after) == pytest.approx(float(text.group(2)), rel=5e-3, abs=5e-3)
    assert ratio == text.group(3)


@needs_optimize
def test_cli_optimize_without_timing_says_so_in_text_and_html(models_file: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = _inproc("optimize", f"{models_file}:mlp", "--input", "2x8", "--no-compile", "--no-graph",
                             "--no-measure", "--report", "r.html")
    assert code == 0, err
    assert "measured: not timed on this machine" in out
    html = (tmp_path / "r.html").read_text()
    assert '<div class="k">measured latency</div><div class="v">not timed</div>' in html


@needs_optimize
def test_cli_optimize_creates_missing_directories_and_says_how_to_load(models_file: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = _inproc("optimize", f"{models_file}:mlp", "--input", "2x8", "--no-compile", "--no-measure",
                             "--out", "new/dir/m.pt2", "--report", "other/r.html", "--no-graph")
    assert code == 0, err
    assert (tmp_path / "new/dir/m.pt2").is_file() and (tmp_path / "other/r.html").is_file()
    assert "wrote new/dir/m.pt2: load it with fxopt.load('new/dir/m.pt2'); it accepts input: Nx8 float32 (N >= 1)" \
        in out


@pytest.mark.parametrize("args", [
    ["optimize", "--out", "blocker/m.pt2"],
    ["optimize", "--report", "blocker/r.html"],
    ["viz", "-o", "blocker/g.svg"],
    ["analyze", "--json", "blocker/g.json"],
])
def test_cli_unwritable_output_fails_before_any_work(args: list[str], models_file: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """D10: --out into a bad place failed only after the whole pipeline, with a "RuntimeError:" prefix."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blocker").write_text("a file where a directory should be")
    command, *rest = args
    code, out, err = _inproc(command, f"{models_file}:marked_mlp", *rest)
    assert code == 2 and out == "", out
    assert err.count("\n") == 1 and err.startswith(f"fxopt {command}: error: cannot create the directory of "
                                                    f"{rest[0]} '{rest[1]}'"), err
    assert not (tmp_path / "factory-was-called").exists()


def test_cli_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    """D9: `fxopt list | head` printed a BrokenPipeError traceback."""
    command = [FXOPT] if FXOPT else [sys.executable, "-m", "fxopt.cli"]
    proc = subprocess.Popen([*command, "list"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes away before fxopt writes a line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 1
    assert err == ""


def test_cli_builtin_models_use_their_natural_input_size() -> None:
    """D5: built-in models were traced at 1x3x64x64 and nothing said so."""
    from fxopt.models import describe_inputs, resolve

    assert describe_inputs(resolve("torchvision:resnet18").inputs) == "1x3x224x224"
    assert describe_inputs(resolve("torchvision:inception_v3").inputs) == "1x3x299x299"
    assert describe_inputs(resolve("timm:mobilevit_s").inputs) == "1x3x256x256"  # timm's config says 256
    assert describe_inputs(resolve("hf:gpt2").inputs) == "1x16:int64"
    assert describe_inputs(resolve("torchvision:resnet18", ["2x3x160x160"]).inputs) == "2x3x160x160"


def test_cli_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    """D8: reStructuredText markup showed raw in --help."""
    for command in ([], ["analyze"], ["optimize"], ["viz"], ["bench"], ["list"]):
        assert main([*command, "--help"]) == 0
        assert "``" not in capsys.readouterr().out
