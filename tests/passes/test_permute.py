"""The permute pass: a Monarch layer's output shuffle moves through elementwise ops into the next layer's input."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from fxopt.equivalence import assert_equivalent
from fxopt.structured.grid import GridLinear
from fxopt.structured.monarch import MonarchLinear

WIDTH, BLOCKS = 64, 8  # 8 blocks of 8 rows: the next layer's 8 block-columns line up with the blocked order


def monarch(shuffle: bool = True, blocks: int = BLOCKS) -> MonarchLinear:
    layer = MonarchLinear(WIDTH, WIDTH, blocks, 2, shuffle=shuffle)
    nn.init.normal_(layer.bias)
    return layer


class TwoMonarch(nn.Module):
    def __init__(self, blocks: int = BLOCKS) -> None:
        super().__init__()
        self.a, self.act, self.b = monarch(), nn.GELU(), monarch(blocks=blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.act(self.a(x)) * 2.0)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = monarch(), monarch()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        return self.b(h) + h


def shuffles(gm: torch.nn.Module) -> int:
    """Permutations passed between layers: shuffled grid layers' outputs, each undone by a reader's copy."""
    return sum(isinstance(m, GridLinear) and m.shuffle for m in gm.modules())


def blocked_reads(gm: torch.nn.Module) -> int:
    return sum(isinstance(m, GridLinear) and m.in_blocked for m in gm.modules())


def test_permute_consecutive_monarch_moves_the_shuffle(passes):
    model, x = TwoMonarch().eval(), torch.randn(3, 5, WIDTH)
    before = passes.trace(model, x)
    gm, result = passes.run("permute", model, x)
    assert (shuffles(before), blocked_reads(before)) == (2, 0)
    assert (shuffles(gm), blocked_reads(gm)) == (1, 1)  # a's shuffle is gone; b's own output stays shuffled
    assert result.changed and result.metrics["moved"] == 1
    assert not gm.a.shuffle and gm.b.in_blocked
    assert_equivalent(model, gm, (x,))
    assert passes.kinds(gm) == passes.kinds(before)


def test_permute_residual_reader_left_alone(passes):
    model, x = Residual().eval(), torch.randn(4, WIDTH)
    gm, result = passes.run("permute", model, x)
    assert not result.changed and shuffles(gm) == 2 and blocked_reads(gm) == 0
    skip = next(s for s in result.skips if s.node == "a")
    assert "relu has 2 users" in skip.reason and "shuffle stays" in skip.reason
    assert_equivalent(model, gm, (x,))


def test_permute_misaligned_blocks_left_alone(passes):
    model, x = TwoMonarch(blocks=4).eval(), torch.randn(4, WIDTH)
    gm, result = passes.run("permute", model, x)
    assert not result.changed and shuffles(gm) == 2
    assert any("needs cols == 8" in s.reason for s in result.skips)


def test_permute_dropout_in_training_left_alone(passes):
    model = nn.Sequential(monarch(), nn.Dropout(0.5), monarch())
    gm, result = passes.run("permute", model, torch.randn(4, WIDTH), checked=False)
    assert not result.changed
    assert any("dropout in training mode" in s.reason for s in result.skips)


def test_permute_blocked_layer_runs_the_same_on_both_paths(passes):
    from fxopt.kernels.dispatch import forced_path

    model, x = TwoMonarch().eval(), torch.randn(6, WIDTH)
    gm, _ = passes.run("permute", model, x)
    with forced_path("ops"):
        assert_equivalent(model, gm, (x,))


def test_permute_corrupted_move_is_caught(passes):
    model, x = TwoMonarch().eval(), torch.randn(4, WIDTH)
    gm = passes.trace(model, x)
    gm.b.in_blocked = True  # the consumer reads blocked order while the producer still shuffles
    with pytest.raises(AssertionError):
        assert_equivalent(model, gm, (x,))
