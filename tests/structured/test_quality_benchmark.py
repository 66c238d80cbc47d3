"""benchmarks/substitute_quality.py in its quick mode, on the digits MLP: the results' shape and what must hold."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("sklearn")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "substitute_quality.py"


def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("substitute_quality", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The benchmark script, as a module."""
    return _benchmark()


@pytest.fixture(scope="module")
def mlp(bench: ModuleType) -> dict[str, Any]:
    """The quick run's results for the MLP."""
    return bench.run(bench.QUICK, models=("mlp",))["models"]["mlp"]


def _row(rows: list[dict[str, Any]], structure: str, aware: bool, budget: float) -> dict[str, Any]:
    (row,) = [r for r in rows if (r["structure"], r["aware"], r["budget"]) == (structure, aware, budget)]
    return row


def test_quality_benchmark_mlp_every_structure_budget_and_fit_has_a_row(bench: ModuleType,
                                                                       mlp: dict[str, Any]) -> None:
    variants = {("svd", False)} | {(s, a) for s in bench.STRUCTURES for a in (False, True)}
    assert {(r["structure"], r["aware"], r["budget"]) for r in mlp["rows"]} == {
        (s, a, b) for s, a in variants for b in bench.BUDGETS}
    assert mlp["layers"] == ["fc1", "fc2"]
    for r in mlp["rows"]:
        # the cap bounds the weights; the copied biases add at most 2% here
        assert 0.15 < r["params_kept"] <= r["budget"] + 0.02, r
        assert 0 <= r["metric"] <= 100 and 0 <= r["finetuned"] <= 100
        assert (r["output_error"] is not None) == r["aware"]


def test_quality_benchmark_mlp_svd_at_half_keeps_accuracy(mlp: dict[str, Any]) -> None:
    svd = _row(mlp["rows"], "svd", False, 0.5)
    assert mlp["dense"] > 85
    assert svd["metric"] >= mlp["dense"] - 3


def test_quality_benchmark_mlp_fxopt_lowrank_is_the_truncated_svd(mlp: dict[str, Any]) -> None:
    for budget in (0.5, 0.25):
        ours, baseline = _row(mlp["rows"], "lowrank", False, budget), _row(mlp["rows"], "svd", False, budget)
        assert ours["weight_error"] == pytest.approx(baseline["weight_error"], rel=1e-4)
        assert ours["metric"] == pytest.approx(baseline["metric"], abs=0.3)


def test_quality_benchmark_mlp_error_grows_as_budget_shrinks(mlp: dict[str, Any]) -> None:
    for r in mlp["rows"]:
        if r["budget"] == 0.25:
            half = _row(mlp["rows"], r["structure"], r["aware"], 0.5)
            assert r["weight_error"] >= half["weight_error"] - 1e-6, (r, half)
            if r["aware"]:
                assert r["output_error"] >= half["output_error"] - 1e-6, (r, half)
