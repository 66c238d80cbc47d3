"""Generated shapes: valid ones fit and forward correctly, impossible ones raise a StructureError that says why."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from fxopt.structured import (
    BTT,
    Blast,
    BlockDiagonal,
    ChannelLinear,
    LowRank,
    Monarch,
    MonarchLinear,
    Structure,
    StructureError,
    choose_rank,
    fit,
)


def _divisors(k: int) -> list[int]:
    return [d for d in range(1, k + 1) if k % d == 0]


@st.composite
def _cases(draw: st.DrawFn) -> tuple[int, int, int, int, int]:
    """(m, n, blocks, second block count, rank): dims are block multiples, sometimes plus one (not divisible)."""
    b, c = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    m = b * draw(st.integers(2, 6)) + draw(st.sampled_from([0, 0, 0, 1]))
    n = b * c * draw(st.integers(1, 3)) + draw(st.sampled_from([0, 0, 0, 1]))
    return m, n, b, c, draw(st.integers(1, 2) | st.integers(0, 12))


def _expected(kind: str, m: int, n: int, b: int, c: int, r: int) -> tuple[Structure, str | None]:
    """The structure and, if the shape is impossible, a fragment its error message must contain (by hand)."""
    common = str(sorted(set(_divisors(m)) & set(_divisors(n))))
    grid_ok = m % b == 0 and n % b == 0
    if kind == "lowrank":
        return LowRank(r), None if 1 <= r <= min(m, n) else f"1 <= rank <= {min(m, n)}"
    if kind == "blockdiag":
        return BlockDiagonal(b), None if grid_ok else common
    if kind == "monarch":
        most = min(m // b, n // b)
        return Monarch(b, r), common if not grid_ok else None if 1 <= r <= most else f"1 <= rank <= {most}"
    if kind == "btt":
        if m % b or n % c:
            return BTT(r, b, c), str(_divisors(m) if m % b else _divisors(n))
        most = min(m // b, n // c)
        return BTT(r, b, c), None if 1 <= r <= most else f"1 <= rank <= {most}"
    most = b * min(m // b, n // b)
    return Blast(b, r, max_iter=3), common if not grid_ok else None if 1 <= r <= most else f"1 <= rank <= {most}"


@pytest.mark.parametrize("kind", ["lowrank", "blockdiag", "monarch", "btt", "blast"])
@settings(max_examples=30, deadline=None)
@given(case=_cases())
def test_generated_shapes_fit_or_explain(kind: str, case: tuple[int, int, int, int, int]) -> None:
    m, n, b, c, r = case
    structure, problem = _expected(kind, m, n, b, c, r)
    weight = torch.randn(m, n, dtype=torch.float64)
    if problem is not None:
        with pytest.raises(StructureError) as info:
            fit(weight, structure)
        assert structure.layer_name in str(info.value) and problem in str(info.value)
        assert f"{m}" in str(info.value)
        return
    bias = torch.randn(m, dtype=torch.float64)
    result = fit(weight, structure, bias)
    x = torch.randn(2, 3, n, dtype=torch.float64)
    dense = result.layer.to_dense().detach()
    torch.testing.assert_close(result.layer(x), x @ dense.T + bias, rtol=1e-10, atol=1e-10)
    assert result.report.weight_error == pytest.approx(float((weight - dense).norm() / weight.norm()), abs=1e-12)
    assert result.report.error <= 1 + 1e-12


def test_non_2d_weight_names_the_layer_and_shape() -> None:
    with pytest.raises(StructureError, match=r"MonarchLinear fits a 2-D .* got shape \(8, 4, 1, 1\)"):
        MonarchLinear.from_dense(torch.randn(8, 4, 1, 1), blocks=2, rank=1)
    with pytest.raises(StructureError, match="floating-point"):
        fit(torch.ones(4, 4, dtype=torch.int64), LowRank(1))


def test_mismatched_bias_and_activations_say_what_to_pass() -> None:
    with pytest.raises(StructureError, match=r"pass a \(8,\) bias"):
        fit(torch.randn(8, 6), LowRank(2), torch.randn(6))
    with pytest.raises(StructureError, match=r"in_features=6; pass the layer's own inputs, shaped \(\.\.\., 6\)"):
        fit(torch.randn(8, 6), LowRank(2), activations=torch.randn(10, 8))
    with pytest.raises(StructureError, match="use one of rms, whiten"):
        fit(torch.randn(8, 6), LowRank(2), scaling="mean")  # type: ignore[arg-type]


def test_layer_constructor_rejects_impossible_blocks() -> None:
    with pytest.raises(StructureError, match=r"blocks=3 does not divide .* 10x10 weight; block counts that do: "
                                             r"\[1, 2, 5, 10\]"):
        MonarchLinear(10, 10, blocks=3, rank=1)
    assert issubclass(StructureError, ValueError)


def test_rank_from_budget_needs_a_closed_form_structure() -> None:
    with pytest.raises(StructureError, match="BlastLinear has no closed-form error curve"):
        choose_rank(torch.randn(8, 8), Blast(2, 1), budget=0.1)  # type: ignore[type-var]


@pytest.mark.parametrize(("conv", "problem"), [
    (nn.Conv2d(8, 4, 3), "not a 1x1 convolution"),
    (nn.Conv2d(8, 4, 1, stride=2), "stride 1"),
    (nn.Conv2d(8, 4, 1, groups=2), "groups=1"),
    (nn.Conv2d(8, 4, 1, padding=1), "no padding"),
])
def test_conv_that_is_not_a_channel_linear_is_refused(conv: nn.Conv2d, problem: str) -> None:
    with pytest.raises(StructureError, match=problem):
        ChannelLinear.from_conv1x1(conv, LowRank(2))
