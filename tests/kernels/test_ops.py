"""The fxopt:: ops: results against the plain-torch references, opcheck, gradients, every CPU contraction order."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from fxopt.kernels import blast, blockdiag, lowrank, monarch
from fxopt.kernels.blast import blast_reference
from fxopt.kernels.blockdiag import blockdiag_reference
from fxopt.kernels.lowrank import lowrank_reference
from fxopt.kernels.monarch import monarch_reference


def _cases() -> list[tuple[str, Callable[..., torch.Tensor], Callable[..., torch.Tensor], tuple]]:
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    x6, x12 = r(2, 3, 6), r(5, 12)
    return [
        ("blockdiag", torch.ops.fxopt.blockdiag_matmul, blockdiag_reference, (x6, r(3, 4, 2), False, False)),
        ("blockdiag_shuffled", torch.ops.fxopt.blockdiag_matmul, blockdiag_reference, (x6, r(3, 4, 2), True, True)),
        ("blockdiag_shuffle_out", torch.ops.fxopt.blockdiag_matmul, blockdiag_reference,
         (x12, r(2, 3, 6), False, True)),
        ("lowrank", torch.ops.fxopt.lowrank, lowrank_reference, (x6, r(7, 2), r(2, 6))),
        ("monarch", torch.ops.fxopt.monarch, monarch_reference, (x6, r(3, 6, 2), r(3, 5, 6), 2, False)),
        ("monarch_shuffled", torch.ops.fxopt.monarch, monarch_reference, (x6, r(3, 6, 2), r(3, 5, 6), 2, True)),
        ("monarch_blocked_in", torch.ops.fxopt.monarch, monarch_reference,
         (x12, r(3, 6, 4), r(3, 5, 6), 2, True, True)),
        ("btt", torch.ops.fxopt.monarch, monarch_reference, (x12, r(4, 2, 3), r(2, 3, 4), 1, False)),
        ("blast", torch.ops.fxopt.blast, blast_reference, (x12, r(3, 2, 5), r(3, 3, 5), r(3, 4, 5))),
    ]


CASES = _cases()
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_op_matches_reference(case):
    _, op, reference, args = case
    torch.testing.assert_close(op(*args), reference(*args))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_op_passes_opcheck(case):
    _, op, _, args = case
    args = tuple(a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_op_gradients_match_gradcheck(case):
    _, op, _, args = case
    args = tuple(a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args)
    assert torch.autograd.gradcheck(op, args)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_op_gradients_match_reference_autograd(case):
    _, op, reference, args = case
    ours = tuple(a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args)
    ref = tuple(a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args)
    grad = torch.randn_like(reference(*args))
    op(*ours).backward(grad)
    reference(*ref).backward(grad)
    for a, b in zip(ours, ref):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("module", [blockdiag, lowrank, monarch, blast], ids=lambda m: m.__name__.split(".")[-1])
def test_every_cpu_order_matches_reference(module):
    case = next(c for c in CASES if c[0] == module.__name__.split(".")[-1])
    _, _, reference, args = case
    expected = reference(*args).reshape(-1, reference(*args).shape[-1])
    x2 = args[0].reshape(-1, args[0].shape[-1])
    for name, order in module.ORDERS.candidates.items():
        if module is blast:
            result = order(x2.reshape(x2.shape[0], args[3].shape[0], -1), *args[1:]).reshape(x2.shape[0], -1)
        else:
            result = order(x2, *args[1:])
        torch.testing.assert_close(result, expected, msg=f"order {name}")


def test_order_cache_measures_once_per_key():
    calls = []
    cache = blockdiag.ORDERS.__class__({"a": lambda x: calls.append("a") or x, "b": lambda x: calls.append("b") or x})
    x = torch.zeros(2)
    cache(("k",), x)
    measured = len(calls)  # the warm-up and timed calls of both candidates, then the winner's call
    cache(("k",), x)
    assert len(calls) == measured + 1 and measured > 2
    assert set(cache.chosen) == {("k",)}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_op_is_one_node_under_export(case):
    _, op, _, args = case

    class M(torch.nn.Module):
        def forward(self, x):
            return op(x, *args[1:])

    graph = torch.export.export(M(), (args[0],)).graph
    calls = [n.target for n in graph.nodes if n.op == "call_function"]
    assert calls == [op.default]


def test_op_runs_on_meta_tensors():
    x, w = torch.empty(4, 6, device="meta"), torch.empty(3, 5, 2, device="meta")
    assert torch.ops.fxopt.blockdiag_matmul(x, w, False, False).shape == (4, 15)
    assert torch.ops.fxopt.blast(torch.empty(2, 6, device="meta"), torch.empty(2, 3, 4, device="meta"),
                 torch.empty(2, 2, 4, device="meta"), torch.empty(2, 3, 4, device="meta")).shape == (2, 6)


def test_order_cache_kernel_competes_and_wins_only_when_faster():
    import time

    def slow(x):
        time.sleep(0.002)
        return x

    cache = blockdiag.ORDERS.__class__({"torch": slow})
    x = torch.zeros(2)
    assert cache.choose(("fast kernel",), x, kernel=lambda x: x) == "triton"
    assert cache.choose(("slow kernel",), x, kernel=lambda x: slow(slow(x))) == "torch"


def test_structured_layer_compiles_to_one_graph_with_the_op():
    from fxopt.structured import MonarchLinear

    layer = MonarchLinear(12, 8, blocks=2, rank=2).double()
    x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    compiled(x).sum().backward()
    grad = x.grad.clone()
    x.grad = None
    layer(x).sum().backward()
    torch.testing.assert_close(compiled(x), layer(x))
    torch.testing.assert_close(grad, x.grad)
