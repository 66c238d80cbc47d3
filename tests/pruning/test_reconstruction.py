"""Reconstruction without retraining: bias compensation and least squares, exact where the maths says so."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxopt
from fxopt.pruning import prune
from fxopt.testing import assert_equivalent


def _lowest(*units: int):  # type: ignore[no-untyped-def]
    """A criterion that scores ``units`` lowest in every group (so they are the ones pruned)."""

    def fn(ctx, group):  # type: ignore[no-untyped-def]
        s = np.ones(group.size)
        s[[u for u in units if u < group.size]] = 0.0
        return s

    return fn


class Two(nn.Module):
    """fc1 -> act -> fc2: one group (fc1's outputs) read by one reader (fc2)."""

    def __init__(self, act: bool = True, bias2: bool = True) -> None:
        super().__init__()
        self.act = act
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3, bias=bias2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(F.relu(h) if self.act else h)


def test_bias_compensation_of_constant_channels_is_exact() -> None:
    model = Two().eval()
    with torch.no_grad():
        model.fc1.weight[[1, 4]] = 0.0  # channels 1 and 4 output the constant relu(bias)
        model.fc1.bias[[1, 4]] = torch.tensor([0.7, 1.3])
    x = torch.randn(5, 6)
    cal = [torch.randn(16, 6) for _ in range(2)]
    plain, _ = prune(model, x, ratio={"fc1": 0.25}, criterion=_lowest(1, 4))
    fixed, report = prune(model, x, ratio={"fc1": 0.25}, criterion=_lowest(1, 4), reconstruct="bias", calibration=cal)
    assert_equivalent(model, fixed, (x,))
    with pytest.raises(AssertionError):
        assert_equivalent(model, plain, (x,))  # without compensation the constants are lost
    fix = report.reconstruction[0]
    assert fix.applied and fix.removed == 2 and fix.error_after == pytest.approx(0.0, abs=1e-6)
    assert fix.error_before > 0.05


def test_least_squares_recovers_linearly_dependent_channels_exactly() -> None:
    model = Two(act=False).eval()
    with torch.no_grad():  # channel 5 = 2 * channel 0 - channel 2 + 0.5: removable without loss
        model.fc1.weight[5] = 2 * model.fc1.weight[0] - model.fc1.weight[2]
        model.fc1.bias[5] = 2 * model.fc1.bias[0] - model.fc1.bias[2] + 0.5
    x = torch.randn(5, 6)
    cal = [torch.randn(32, 6) for _ in range(2)]
    fixed, report = prune(model, x, ratio={"fc1": 0.125}, criterion=_lowest(5), reconstruct="ls",
                          calibration=cal, ridge=1e-9)
    assert fixed.fc2.weight.shape == (3, 7)
    assert_equivalent(model, fixed, (x,), rtol=1e-4, atol=1e-5)
    assert report.reconstruction[0].error_after < 1e-4


def test_reconstruction_reduces_error_on_held_out_data(mlp) -> None:  # type: ignore[no-untyped-def]
    model, _ = mlp
    mix = torch.randn(12, 12) * 0.3 + torch.eye(12)  # correlated inputs make channels predictable
    data = [torch.randn(64, 12) @ mix for _ in range(4)]
    held = torch.randn(256, 12) @ mix
    errors = {}
    for rec in (None, "bias", "ls"):
        small, report = prune(model, data[0][:2], ratio=0.5, reconstruct=rec, calibration=data if rec else None)
        with torch.no_grad():
            errors[rec] = (small(held) - model(held)).pow(2).mean().item()
        if rec:
            fixes = [f for f in report.reconstruction if f.applied]
            assert len(fixes) == 2 and all(f.error_after < f.error_before for f in fixes)
    assert errors["ls"] < errors["bias"] < errors[None]


def test_reconstruction_needs_calibration(mlp) -> None:  # type: ignore[no-untyped-def]
    model, x = mlp
    with pytest.raises(ValueError, match="calibration"):
        prune(model, x, ratio=0.5, reconstruct="ls")


def test_conv_reader_without_bias_gets_one_and_output_shapes_hold(convnet) -> None:  # type: ignore[no-untyped-def]
    model, x = convnet
    cal = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    small, report = prune(model, x, ratio=0.5, reconstruct="bias", calibration=cal)
    assert model.conv1.bias is None and small.conv1.bias is not None
    assert small.conv1.bias.shape == (16,) and small.conv1.weight.shape == (16, 8, 3, 3)
    assert {f.reader for f in report.reconstruction if f.applied} == {"conv1", "conv2", "fc"}
    with torch.no_grad():
        assert small(x).shape == model(x).shape


def test_functional_reader_gets_a_bias_node_in_exported_graph() -> None:
    model = Two(bias2=False).eval()
    x = torch.randn(4, 6)
    a = fxopt.analyze(model, x, frontend="export")
    cal = [torch.randn(8, 6) for _ in range(2)]  # a multiple of the exported batch: run in pieces
    small, report = prune(a, ratio=0.5, reconstruct="bias", calibration=cal)
    assert any(n.op == "get_attr" and "bias" in str(n.target) for n in small.graph.nodes if "fc2" in str(n.target))
    assert report.reconstruction[0].applied
    with torch.no_grad():
        assert small(x).shape == (4, 3)


def test_calibration_batch_not_a_multiple_of_exported_batch_raises() -> None:
    model = Two().eval()
    a = fxopt.analyze(model, torch.randn(4, 6), frontend="export")
    with pytest.raises(ValueError, match="does not split"):
        prune(a, ratio=0.5, reconstruct="ls", calibration=[torch.randn(6, 6)])


def test_shared_reader_weight_is_not_reconstructed() -> None:
    class Reuse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up, self.down = nn.Linear(4, 8), nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.down(torch.relu(self.up(x))) + self.down(torch.relu(self.up(-x)))

    model = Reuse().eval()
    model.down = nn.Linear(8, 3)
    x = torch.randn(3, 4)
    a = fxopt.analyze(model, x)
    _, report = prune(a, ratio=0.5, reconstruct="ls", calibration=[torch.randn(8, 4)])
    assert len(report.reconstruction) == 2
    assert all(not f.applied and "shared" in f.reason for f in report.reconstruction)
