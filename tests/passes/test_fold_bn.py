"""Batch-norm folding into producers (conv, conv-transpose, linear) and, where exact, into consumers."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fxopt.passes import fold_bn
from fxopt.testing import assert_equivalent

FRONTENDS = ["fx", "export"]


class ConvBN(nn.Module):
    def __init__(self, bias: bool = True, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1, bias=bias, groups=groups)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("bias", [True, False])
def test_fold_bn_conv_bn_folds_into_conv(passes, rig, frontend: str, bias: bool) -> None:
    model, x = rig.randomize(ConvBN(bias=bias, groups=2)), torch.randn(2, 4, 8, 8)
    gm, result = passes.run("fold_bn", model, x, frontend=frontend)
    assert passes.kinds(gm) == ["conv", "unary_zero"]
    assert result.changed and result.metrics["fired"] == 1
    assert_equivalent(model, gm, (x,))
    assert sum(1 for _ in gm.parameters()) == 2  # the conv's weight and its (new or updated) bias


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_fold_bn_grouped_conv_transpose_folds_per_group(passes, rig, frontend: str) -> None:
    model = nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), nn.BatchNorm2d(6))
    model, x = rig.randomize(model), torch.randn(2, 4, 5, 5)
    gm, result = passes.run("fold_bn", model, x, frontend=frontend)
    assert passes.kinds(gm) == ["conv"] and result.metrics["fired"] == 1
    assert_equivalent(model, gm, (x,))


def test_fold_bn_linear_bn1d_folds(passes, rig) -> None:
    model, x = rig.randomize(nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7))), torch.randn(3, 5)
    gm, result = passes.run("fold_bn", model, x)
    assert passes.kinds(gm) == ["linear"]
    assert_equivalent(model, gm, (x,))


def test_fold_bn_functional_conv_and_batch_norm_fold(passes, rig) -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(6, 3, 1, 1))
            self.bn = nn.BatchNorm2d(6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.conv2d(x, self.w)
            return F.batch_norm(y, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias,
                                training=False, eps=1e-3)

    model, x = rig.randomize(Functional()), torch.randn(2, 3, 4, 4)
    gm, result = passes.run("fold_bn", model, x)
    assert passes.kinds(gm) == ["conv"] and result.changed
    assert_equivalent(model, gm, (x,))


def test_fold_bn_training_mode_bn_left_alone_with_reason(passes, rig) -> None:
    model = rig.randomize(ConvBN())
    model.bn.train()
    gm, result = passes.run("fold_bn", model, torch.randn(2, 4, 8, 8), checked=False)
    assert passes.kinds(gm) == ["conv", "batch_norm", "unary_zero"]
    assert not result.changed
    assert [s.reason for s in result.skips] == ["batch norm is in training mode (it normalizes with batch statistics)"]


def test_fold_bn_conv_output_read_twice_left_alone(passes, rig) -> None:
    class TwoUsers(ConvBN):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y

    gm, result = passes.run("fold_bn", rig.randomize(TwoUsers()), torch.randn(1, 4, 6, 6))
    assert "batch_norm" in passes.kinds(gm) and not result.changed
    assert "2 users" in result.skips[0].reason


def test_fold_bn_conv_output_whose_other_readers_read_only_its_shape_folds(passes, rig) -> None:
    class ShapeChecked(ConvBN):  # timm's BatchNormAct2d asserts x.ndim == 4 before normalizing
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            torch._assert(y.ndim == 4, "expected 4D input")
            return self.bn(y) * y.size(1)

    model, x = rig.randomize(ShapeChecked()), torch.randn(1, 4, 6, 6)
    gm, result = passes.run("fold_bn", model, x, frontend="fx")
    assert "batch_norm" not in passes.kinds(gm) and result.metrics["fired"] == 1
    assert_equivalent(model, gm, (x,))


def test_fold_bn_conv_called_twice_left_alone(passes, rig) -> None:
    class Shared(ConvBN):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)) + self.conv(x)

    gm, result = passes.run("fold_bn", rig.randomize(Shared()), torch.randn(1, 4, 6, 6))
    assert not result.changed and "also read by" in result.skips[0].reason


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_fold_bn_input_bn_before_unpadded_grouped_conv_folds(passes, rig, frontend: str) -> None:
    model = nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 6, 3, groups=2, bias=False))
    model, x = rig.randomize(model), torch.randn(2, 4, 7, 7)
    gm, result = passes.run("fold_bn_input", model, x, frontend=frontend)
    assert passes.kinds(gm) == ["conv"] and result.metrics["fired"] == 1
    assert_equivalent(model, gm, (x,))


def test_fold_bn_input_bn_before_linear_folds(passes, rig) -> None:
    model, x = rig.randomize(nn.Sequential(nn.BatchNorm1d(5), nn.Linear(5, 3))), torch.randn(4, 5)
    gm, _ = passes.run("fold_bn_input", model, x)
    assert passes.kinds(gm) == ["linear"]
    assert_equivalent(model, gm, (x,))


def test_fold_bn_input_zero_padded_conv_left_alone_with_reason(passes, rig) -> None:
    model = rig.randomize(nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 6, 3, padding=1)))
    gm, result = passes.run("fold_bn_input", model, torch.randn(2, 4, 7, 7))
    assert passes.kinds(gm) == ["batch_norm", "conv"] and not result.changed
    assert "pads with zeros" in result.skips[0].reason


def test_fold_bn_input_reflect_padded_conv_folds(passes, rig) -> None:
    model = rig.randomize(nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect")))
    x = torch.randn(2, 4, 7, 7)
    gm, result = passes.run("fold_bn_input", model, x)
    assert passes.kinds(gm) == ["conv"] and result.changed
    assert_equivalent(model, gm, (x,))


def test_fold_bn_corrupted_rewrite_is_caught_by_assert_equivalent(passes, rig, monkeypatch) -> None:
    """The check can fail: a fold that forgets the BN shift must be detected."""
    real = fold_bn.bn_affine

    def no_shift(view, editor):  # type: ignore[no-untyped-def]
        found = real(view, editor)
        return fold_bn.Affine(found.scale, found.shift * 0) if isinstance(found, fold_bn.Affine) else found

    monkeypatch.setattr(fold_bn, "bn_affine", no_shift)
    model, x = rig.randomize(ConvBN()), torch.randn(2, 4, 8, 8)
    gm, _ = passes.run("fold_bn", model, x, checked=False)
    with pytest.raises(AssertionError):
        assert_equivalent(model, gm, (x,))
