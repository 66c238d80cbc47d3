"""Activation-aware fits: lower output error on the calibration data than plain fits, and exact figures."""

from __future__ import annotations

import pytest
import torch

from fxopt.structured import (
    BlockDiagonal,
    InputStats,
    LowRank,
    Monarch,
    Structure,
    fit,
    output_error,
)


def _correlated_inputs(n: int, rows: int = 400) -> torch.Tensor:
    """Correlated inputs with column scales spread over two decades (like a transformer's activations)."""
    mix = torch.randn(n, n, dtype=torch.float64) * torch.logspace(0, -2, n, dtype=torch.float64)
    scales = torch.logspace(-1, 1, n, dtype=torch.float64)[torch.randperm(n)]
    return torch.randn(rows, n, dtype=torch.float64) @ mix.T * scales


def _output_error(weight: torch.Tensor, fitted: torch.Tensor, x: torch.Tensor) -> float:
    return float((x @ (weight - fitted).T).norm() / (x @ weight.T).norm())


@pytest.mark.parametrize("scaling", ["rms", "whiten"])
def test_activation_aware_fit_beats_plain_fit_on_calibration_outputs(structure: Structure, shape: tuple[int, int],
                                                                    scaling: str) -> None:
    m, n = shape
    weight, x = torch.randn(m, n, dtype=torch.float64), _correlated_inputs(n)
    plain = _output_error(weight, fit(weight, structure).layer.to_dense().detach(), x)
    aware = fit(weight, structure, activations=x, scaling=scaling)  # type: ignore[arg-type]
    measured = _output_error(weight, aware.layer.to_dense().detach(), x)
    assert aware.report.output_error == pytest.approx(measured, rel=1e-9)
    if isinstance(structure, BlockDiagonal) and scaling == "rms":
        assert measured == pytest.approx(plain, rel=1e-12)  # diagonal scaling cannot change kept blocks
    else:
        assert measured < 0.9 * plain


def test_whitened_low_rank_error_is_the_output_error() -> None:
    """With full whitening each discarded singular value is output error (SVD-LLM): the two figures agree."""
    weight, x = torch.randn(24, 36, dtype=torch.float64), _correlated_inputs(36)
    report = fit(weight, LowRank(rank=5), activations=x, damp=1e-12).report
    assert report.error == pytest.approx(report.output_error, rel=1e-6)
    assert report.error < report.weight_error


def test_whitened_low_rank_is_optimal_among_rank_r_on_the_data() -> None:
    weight, x = torch.randn(24, 36, dtype=torch.float64), _correlated_inputs(36)
    best = fit(weight, LowRank(rank=5), activations=x, damp=1e-12).report.output_error
    rms = fit(weight, LowRank(rank=5), activations=x, scaling="rms", damp=1e-12).report.output_error
    y = x @ weight.T  # the rank-5 optimum of ||X W^T - X A^T|| projects the outputs on their top singular vectors
    u = torch.linalg.svd(y, full_matrices=False).U[:, :5]
    optimum = float((y - u @ (u.T @ y)).norm() / y.norm())
    assert best == pytest.approx(optimum, rel=1e-6)
    assert rms is not None and rms > best


def test_input_stats_merge_equals_stats_of_all_rows() -> None:
    x = torch.randn(10, 7, 12)
    merged = InputStats.of(x[:4]).merge(InputStats.of(x[4:]))
    whole = InputStats.of(x)
    assert merged.count == whole.count == 70
    torch.testing.assert_close(merged.gram, whole.gram)


def test_fit_accepts_stats_like_inputs() -> None:
    weight, x = torch.randn(24, 36, dtype=torch.float64), _correlated_inputs(36)
    from_rows = fit(weight, Monarch(4, 2), activations=x).layer.to_dense()
    from_stats = fit(weight, Monarch(4, 2), activations=InputStats.of(x)).layer.to_dense()
    torch.testing.assert_close(from_rows, from_stats)


def test_output_error_of_exact_fit_is_zero() -> None:
    weight, x = torch.randn(6, 8, dtype=torch.float64), torch.randn(20, 8, dtype=torch.float64)
    assert output_error(weight, weight, InputStats.of(x)) == 0.0
    assert output_error(weight, torch.zeros_like(weight), InputStats.of(x)) == pytest.approx(1.0)
