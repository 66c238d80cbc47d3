"""Optimized models save and load without the original model's class."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

from fxopt.api import optimize, report
from fxopt.errors import FxoptError
from fxopt.serialization import load, save


class PrivateNet(nn.Module):
    """Defined only in this test module: the loading process never sees this class."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _fast(rig):  # type: ignore[no-untyped-def]
    model, x = rig.randomize(PrivateNet()), torch.randn(1, 3, 8, 8)
    return model, x, optimize(model, x, compile=False)


def test_save_load_round_trip_in_a_fresh_process(rig, tmp_path) -> None:
    model, x, fast = _fast(rig)
    paths = [save(fast, tmp_path / "model.pt2"), save(fast, tmp_path / "model.fx")]
    torch.save({"x": x, "y": model(x).detach()}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import torch
        from fxopt.serialization import load
        io = torch.load({str(tmp_path / 'io.pt')!r})
        for path in {[str(p) for p in paths]!r}:
            m = load(path)
            torch.testing.assert_close(m(io["x"]), io["y"], rtol=1e-4, atol=1e-5)
            assert "PrivateNet" not in repr(type(m))
            print("ok", path)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("ok ") == 2


def test_load_fx_format_keeps_the_report_and_trains(rig, tmp_path) -> None:
    _, x, fast = _fast(rig)
    again = load(save(fast, tmp_path / "m.fx"))
    assert report(again).pipeline == report(fast).pipeline
    again(x).sum().backward()
    assert all(p.grad is not None for p in again.parameters())


def test_save_pt2_of_compiled_wrapper_unwraps_it(rig, tmp_path) -> None:
    model, x, fast = _fast(rig)

    class Wrapper(nn.Module):  # what torch.compile returns: the graph module under _orig_mod
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self._orig_mod = inner

    again = load(save(Wrapper(fast), tmp_path / "w.pt2"))
    torch.testing.assert_close(again(x), model(x), rtol=1e-4, atol=1e-5)


def test_save_pt2_without_example_inputs_raises(tmp_path) -> None:
    gm = torch.fx.symbolic_trace(nn.Linear(2, 2))
    with pytest.raises(FxoptError, match="needs example inputs"):
        save(gm, tmp_path / "m.pt2")


def test_save_unknown_format_raises(tmp_path) -> None:
    with pytest.raises(FxoptError, match="unknown format"):
        save(nn.Linear(2, 2), tmp_path / "m.bin", format="onnx")


class TypeCheckNet(nn.Module):
    """Symbolic tracing cannot pass ``isinstance(x, torch.Tensor)`` (a proxy is no tensor): optimize captures it
    with torch.export."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError("a tensor is expected")
        return self.fc(x)


@pytest.mark.parametrize("suffix", [".pt2", ".fx"])
def test_save_load_round_trip_of_an_exported_graph(tmp_path, suffix: str) -> None:
    model, x = TypeCheckNet().eval(), torch.randn(3, 4)
    fast = optimize(model, x, compile=False)
    assert report(fast).frontend.startswith("export")
    again = load(save(fast, tmp_path / f"m{suffix}"))
    torch.testing.assert_close(again(x), model(x), rtol=1e-4, atol=1e-5)


def test_saved_pt2_accepts_any_batch_and_says_so(rig, tmp_path) -> None:
    """D5: the saved model rejected every batch but the traced one ("Guard failed: x.size()[0] == 1")."""
    import fxopt
    from fxopt.serialization import accepted_inputs

    model, x, fast = _fast(rig)
    path = fxopt.save(fast, tmp_path / "model.pt2")
    assert accepted_inputs(path) == ["x: Nx3x8x8 float32 (N >= 1)"]
    again = fxopt.load(path)
    for batch in (1, 4):
        xb = torch.randn(batch, 3, 8, 8)
        torch.testing.assert_close(again(xb), model(xb), rtol=1e-4, atol=1e-5)


def test_saved_pt2_with_the_batch_baked_in_keeps_the_example_shape(tmp_path) -> None:
    from fxopt.serialization import accepted_inputs

    class Flat(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(1, 12) * 2  # the batch of 1 is written into the graph

    x = torch.randn(1, 3, 4)
    path = save(optimize(Flat(), x, compile=False), tmp_path / "flat.pt2")
    assert accepted_inputs(path) == ["x: 1x3x4 float32"]
    assert accepted_inputs(tmp_path / "flat.fx") == [
        "any shape the graph's code can compute with (the fx format checks no shapes)"]
