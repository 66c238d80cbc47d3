"""The layer dispatch rule: structured layers on the fxopt op path or the plain-torch path, with the same results."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode

import fxopt
from fxopt.kernels.dispatch import forced_path, layer_uses_ops
from fxopt.structured import BlastLinear, BlockDiagonalLinear, BTTLinear, LowRankLinear, MonarchLinear
from fxopt.structured.speed import forward_ops
from fxopt.testing import check_zero_invariance


def _blocked_monarch() -> MonarchLinear:
    layer = MonarchLinear(48, 24, blocks=4, rank=2, shuffle=True)
    layer.in_blocked = True
    return layer


LAYERS = {
    "blockdiag": lambda: BlockDiagonalLinear(48, 24, blocks=4),
    "lowrank": lambda: LowRankLinear(48, 24, rank=5),
    "monarch": lambda: MonarchLinear(48, 24, blocks=4, rank=2),
    "monarch_shuffled_blocked_in": _blocked_monarch,
    "btt": lambda: BTTLinear(48, 24, rank=2, m1=4, n0=6),
    "blast": lambda: BlastLinear(48, 24, blocks=4, rank=3),
}
OPS = {"blockdiag": "blockdiag_matmul", "lowrank": "lowrank", "blast": "blast"}


def test_layer_uses_ops_by_device_without_forcing():
    assert not layer_uses_ops(torch.ones(2, 3))
    assert not layer_uses_ops(torch.ones(2, 3, device="meta"))
    with FakeTensorMode():  # a CUDA tensor's metadata without a GPU
        assert layer_uses_ops(torch.empty(2, 3, device="cuda"))


def test_forced_path_overrides_and_restores_even_on_error():
    x = torch.ones(2, 3)
    with forced_path("ops"):
        assert layer_uses_ops(x)
        with forced_path("torch"):
            assert not layer_uses_ops(x)
        assert layer_uses_ops(x)
    with pytest.raises(RuntimeError), forced_path("ops"):
        raise RuntimeError("boom")
    assert not layer_uses_ops(x)


def test_forced_path_rejects_unknown_path():
    with pytest.raises(ValueError, match="unknown layer path 'triton'"), forced_path("triton"):  # type: ignore[arg-type]
        pass


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_op_path_matches_plain_path_and_dense(name):
    torch.manual_seed(0)
    layer = LAYERS[name]()
    nn.init.normal_(layer.bias)
    x = torch.randn(2, 5, 48, requires_grad=True)
    with forced_path("torch"):
        plain = layer(x)
    with forced_path("ops"):
        fused = layer(x)
    torch.testing.assert_close(fused, plain)
    torch.testing.assert_close(plain, x @ layer.to_dense().T + layer.bias)
    (grad_fused,) = torch.autograd.grad(fused.sum(), x)
    (grad_plain,) = torch.autograd.grad(plain.sum(), x)
    torch.testing.assert_close(grad_fused, grad_plain)


@pytest.mark.parametrize("name", list(LAYERS))
def test_speed_counts_the_op_path_flops(name):
    layer = LAYERS[name]()
    with forced_path("ops"):
        ops = forward_ops(layer, (7, 48))
    assert [op.kind for op in ops] == [OPS.get(name, "monarch"), "add"]
    assert ops[0].category == "matmul" and int(ops[0].flops) == 2 * 7 * layer.macs_per_token


class MonarchMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(16, 32), MonarchLinear(32, 48, blocks=4, rank=2), nn.Linear(48, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_model_on_the_op_path_analyses_and_prunes():
    torch.manual_seed(0)
    model, x = MonarchMLP().eval(), torch.randn(6, 16)
    with forced_path("ops"):
        analysis = fxopt.analyze(model, x)
        assert analysis.barriers == []
        checks = check_zero_invariance(analysis, (x,))
        assert checks and all(c.passed for c in checks)
        small, _ = fxopt.prune(model, x, ratio=0.5)
        assert small.b.out_features < 48 and small.b(torch.relu(small.a(x))).shape[-1] == small.b.out_features
        assert torch.isfinite(small(x)).all()


def test_model_on_the_op_path_exports_the_layer_as_one_op_node():
    model, x = MonarchMLP().eval(), torch.randn(6, 16)
    with forced_path("ops"):
        gm = fxopt.trace(model, x, frontend="export")
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.fxopt.monarch.default) == 1
    assert not any("bmm" in str(t) or "einsum" in str(t) for t in targets)
