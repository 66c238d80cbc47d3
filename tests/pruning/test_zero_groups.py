"""remove_zero_groups: OTO-style construction, exact for zero-invariant groups only."""

from __future__ import annotations

import torch
from torch import nn

import fxopt
from fxopt.pruning import remove_zero_groups
from fxopt.pruning.zero_groups import ZeroGroupsReport
from fxopt.testing import assert_equivalent


def _zero_conv1_channels(model: nn.Module, channels: list[int]) -> None:
    with torch.no_grad():
        model.conv1.weight[channels] = 0
        model.bn1.weight[channels] = 0
        model.bn1.bias[channels] = 0


def test_remove_zero_groups_removes_zeroed_units_and_keeps_outputs(convnet) -> None:  # type: ignore[no-untyped-def]
    model, x = convnet
    _zero_conv1_channels(model, [1, 5, 30])
    with torch.no_grad():  # zero a residual channel too: every producer of the stem group
        for name in ("stem.weight", "bn0.weight", "bn0.bias", "conv2.weight", "bn2.weight", "bn2.bias"):
            model.get_parameter(name)[7] = 0
    small = remove_zero_groups(model, x)
    assert small.conv1.weight.shape == (29, 15, 3, 3)
    assert small.stem.weight.shape == (15, 3, 3, 3)
    assert_equivalent(model, small, (x,))
    report = small.meta["fxopt"]["zero_groups"]
    assert isinstance(report, ZeroGroupsReport) and report.units == 4
    assert report.params_after < report.params_before


def test_remove_zero_groups_nonzero_bias_keeps_channel(convnet) -> None:  # type: ignore[no-untyped-def]
    model, x = convnet
    with torch.no_grad():
        model.conv1.weight[3] = 0
        model.bn1.weight[3] = 0  # beta stays: the channel is the constant relu(beta), not zero
    small = remove_zero_groups(model, x)
    assert small.conv1.weight.shape[0] == 32


def test_remove_zero_groups_all_zero_group_keeps_one_unit(convnet) -> None:  # type: ignore[no-untyped-def]
    model, x = convnet
    _zero_conv1_channels(model, list(range(32)))
    small = remove_zero_groups(model, x)
    assert small.conv1.weight.shape[0] == 1
    assert_equivalent(model, small, (x,))


def test_remove_zero_groups_leaves_approximate_groups_alone() -> None:
    class Normed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.ln, self.out = nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.ln(self.inp(x)))

    model = Normed().eval()
    with torch.no_grad():
        model.inp.weight[2] = 0
        model.inp.bias[2] = 0
        model.ln.weight[2] = 0
        model.ln.bias[2] = 0
    small = remove_zero_groups(model, torch.randn(3, 4))
    assert small.inp.weight.shape[0] == 8  # a zero channel still moves the LayerNorm's statistics


def test_remove_zero_groups_accepts_traced_graph_and_analysis(convnet) -> None:  # type: ignore[no-untyped-def]
    model, x = convnet
    _zero_conv1_channels(model, [0, 2])
    gm = fxopt.trace(model, x)
    from_gm = remove_zero_groups(gm)
    from_analysis = remove_zero_groups(fxopt.analyze(model, x))
    assert from_gm.conv1.weight.shape[0] == from_analysis.conv1.weight.shape[0] == 30
    assert_equivalent(model, from_gm, (x,))


def test_remove_zero_groups_tolerance_counts_tiny_slices_as_zero(convnet) -> None:  # type: ignore[no-untyped-def]
    model, x = convnet
    _zero_conv1_channels(model, [4])
    with torch.no_grad():
        model.conv1.weight[4] = 1e-9
    assert remove_zero_groups(model, x).conv1.weight.shape[0] == 32
    assert remove_zero_groups(model, x, atol=1e-6).conv1.weight.shape[0] == 31
