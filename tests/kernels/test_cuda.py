"""The ops on CUDA (their Triton kernels) against the torch references, forward and backward; skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from fxopt.kernels.blast import blast_reference
from fxopt.kernels.blockdiag import blockdiag_reference
from fxopt.kernels.lowrank import lowrank_reference
from fxopt.kernels.monarch import monarch_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
pytest.importorskip("triton")

TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}


def _cases(t: int, dtype: torch.dtype) -> list[tuple[str, object, object, tuple]]:
    g = torch.Generator(device="cuda").manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, device="cuda") / shape[-1] ** 0.5).to(dtype)

    return [
        ("blockdiag", torch.ops.fxopt.blockdiag_matmul, blockdiag_reference, (r(t, 96), r(4, 40, 24), False, False)),
        ("blockdiag_shuffled", torch.ops.fxopt.blockdiag_matmul, blockdiag_reference,
         (r(t, 96), r(4, 40, 24), True, True)),
        ("lowrank", torch.ops.fxopt.lowrank, lowrank_reference, (r(t, 200), r(130, 37), r(37, 200))),
        ("monarch", torch.ops.fxopt.monarch, monarch_reference, (r(t, 96), r(4, 4 * 5, 24), r(4, 40, 4 * 5), 5, True)),
        ("monarch_blocked_in", torch.ops.fxopt.monarch, monarch_reference,
         (r(t, 96), r(4, 4 * 5, 24), r(4, 40, 4 * 5), 5, False, True)),
        ("btt", torch.ops.fxopt.monarch, monarch_reference, (r(t, 96), r(8, 3 * 2, 12), r(3, 40, 8 * 2), 2, False)),
        ("blast", torch.ops.fxopt.blast, blast_reference, (r(t, 96), r(4, 40, 70), r(4, 4, 70), r(4, 24, 70))),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("tokens", [1, 5, 16, 77, 300])
def test_cuda_op_matches_reference(tokens, dtype):
    for name, op, reference, args in _cases(tokens, dtype):
        got = op(*args)
        expected = reference(*(a.double() if isinstance(a, torch.Tensor) else a for a in args)).to(dtype)
        err = ((got.float() - expected.float()).abs().max() / expected.abs().max().clamp_min(1)).item()
        assert err <= TOLERANCE[dtype], f"{name}: relative error {err:.3g}"


@pytest.mark.parametrize("tokens", [3, 100])
def test_cuda_op_gradients_match_reference(tokens):
    for name, op, reference, args in _cases(tokens, torch.float32):
        ours = [a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
        ref = [a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
        grad = torch.randn_like(reference(*args))
        op(*ours).backward(grad)
        reference(*ref).backward(grad)
        for a, b in zip(ours, ref):
            if isinstance(a, torch.Tensor):
                torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-3, msg=name)
