"""Cleanup: dead code, identities, no-op reshapes and copies, constant folding; and where each must not fire."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fxopt.passes import PassManager
from fxopt.testing import assert_equivalent


def test_cleanup_identity_and_eval_dropout_are_removed(passes) -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.drop, self.ident = nn.Linear(4, 4), nn.Dropout(0.3), nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.dropout(self.ident(self.drop(self.lin(x))), 0.2, training=False)

    model, x = M().eval(), torch.randn(2, 4)
    gm, result = passes.run("cleanup", model, x)
    assert passes.kinds(gm) == ["linear"]
    assert result.metrics["identities"] == 3
    assert_equivalent(model, gm, (x,))


def test_cleanup_training_dropout_is_kept_with_reason(passes) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    gm, result = passes.run("cleanup", model, torch.randn(2, 4), checked=False)
    assert passes.kinds(gm) == ["linear", "unary_zero"]
    assert [s.reason for s in result.skips] == ["dropout module is in training mode"]


def test_cleanup_noop_reshape_permute_and_contiguous_are_removed(passes) -> None:
    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x.view(2, 3, 4).permute(0, 1, 2).contiguous()
            return y.reshape(2, 3, 4).relu()

    gm, result = passes.run("cleanup", M(), torch.randn(2, 3, 4))
    assert passes.kinds(gm) == ["unary_zero"] and result.metrics["identities"] == 4


def test_cleanup_contiguous_after_transpose_is_kept(passes) -> None:
    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.transpose(1, 2).contiguous().view(2, -1)

    gm, result = passes.run("cleanup", M(), torch.randn(2, 3, 4))
    assert passes.kinds(gm) == ["permute", "unary_zero", "reshape"] and not result.changed


def test_cleanup_dtype_changing_casts_are_kept(passes) -> None:
    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x * 4).to(torch.int64).float().to(torch.float32)  # the last cast is a no-op

    model, x = M(), torch.randn(6)
    gm, result = passes.run("cleanup", model, x)
    assert passes.kinds(gm) == ["mul", "unary_zero", "unary_zero"] and result.metrics["identities"] == 1
    assert_equivalent(model, gm, (x,))


def test_cleanup_clone_protecting_inplace_write_is_kept_with_reason(passes) -> None:
    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x.relu()
            z = y.clone()
            z.add_(1.0)
            return y + z

    gm, result = passes.run("cleanup", M(), torch.randn(3))
    assert passes.kinds(gm) == ["unary_zero", "unary_zero", "add", "add"]  # relu, clone, add_, add
    assert any("in place" in s.reason for s in result.skips)


def test_cleanup_dead_nodes_are_removed_but_inplace_ops_kept(passes) -> None:
    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            unused = x.sin() * 2  # noqa: F841
            y = x.relu()
            y.mul_(3.0)  # no user, but it writes into y
            return y

    model, x = M(), torch.randn(5)
    gm, result = passes.run("cleanup", model, x)
    assert passes.kinds(gm) == ["unary_zero", "mul"] and result.metrics["dead"] == 2
    assert_equivalent(model, gm, (x,))


class Folding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(10, 4))
        self.register_buffer("index", torch.tensor([3, 1, 4, 1, 5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = (self.table[self.index] * 2).sum(0)  # reads only stored tensors
        return x + bias


def test_cleanup_constant_subgraph_is_folded_into_a_buffer(passes) -> None:
    model, x = Folding(), torch.randn(3, 4)
    gm, result = passes.run("cleanup", model, x)
    assert passes.kinds(gm) == ["add"] and result.metrics["folded"] == 1
    assert not hasattr(gm, "table")  # the folded parameter is gone
    assert any("no longer train" in n for n in result.notes)
    assert_equivalent(model, gm, (x,))


def test_cleanup_fold_parameters_false_keeps_trainable_subgraph(passes) -> None:
    gm, result = passes.run("cleanup(fold_parameters=False)", Folding(), torch.randn(3, 4))
    assert "add" in passes.kinds(gm) and len(passes.kinds(gm)) > 1
    assert result.metrics["folded"] == 0


def test_cleanup_random_op_is_not_folded(passes) -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.rand_like(self.w)

    gm, result = passes.run("cleanup", M(), torch.randn(4), checked=False)
    assert result.metrics["folded"] == 0 and "add" in passes.kinds(gm)


def test_cleanup_export_graph_drops_unused_buffers_and_full_slices(passes) -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm1d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(x)[:, :]

    model, x = M().eval(), torch.randn(3, 4)
    gm, result = passes.run("cleanup", model, x, frontend="export")
    assert "slice" not in passes.kinds(gm)
    assert not any("num_batches_tracked" in name for name, _ in gm.named_buffers())
    assert_equivalent(model, gm, (x,))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_cleanup_second_run_changes_nothing(passes, frontend: str) -> None:
    gm = passes.trace(Folding(), torch.randn(3, 4), frontend=frontend)
    run = PassManager("cleanup,cleanup").run(gm, (torch.randn(3, 4),))
    assert run.results[0].changed and not run.results[1].changed
