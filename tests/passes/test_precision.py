"""Precision passes: lossy, opt-in, report their error, and keep the caller's dtypes at the boundary."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from fxopt.errors import PassError
from fxopt.passes import PassManager, PrecisionPass


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def test_precision_bf16_keeps_fp32_interface_and_reports_error(passes) -> None:
    model, x = _mlp(), torch.randn(4, 16)
    gm, result = passes.run("precision(dtype='bf16')", model, x)
    assert all(p.dtype == torch.bfloat16 for p in gm.parameters())
    out = gm(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, model(x), rtol=5e-2, atol=5e-2)
    assert 0 < result.metrics["relative_error"] < 5e-2


def test_precision_int8_dynamic_quantizes_linear_modules(passes) -> None:
    model, x = _mlp(), torch.randn(4, 16)
    gm, result = passes.run("precision(dtype='int8_dynamic')", model, x)
    assert sum(type(m).__name__ == "Linear" and "quantized" in type(m).__module__ for m in gm.modules()) == 2
    torch.testing.assert_close(gm(x), model(x), rtol=0.1, atol=0.1)
    assert result.metrics["relative_error"] < 0.1


def test_precision_error_over_budget_raises(passes) -> None:
    with pytest.raises(PassError, match="relative output error"):
        passes.run("precision(dtype='fp16',max_error=1e-9)", _mlp(), torch.randn(4, 16))


def test_precision_unknown_dtype_is_rejected_when_built() -> None:
    with pytest.raises(ValueError, match="dtype must be one of"):
        PrecisionPass(dtype="fp8")


def test_precision_is_declared_lossy_and_checked_mode_only_records_it(passes) -> None:
    x = torch.randn(4, 16)
    run = PassManager("precision", checked=True).run(passes.trace(_mlp(), x), (x,))
    assert not PrecisionPass.lossless and run.results[0].metrics["max_abs_error"] > 0
