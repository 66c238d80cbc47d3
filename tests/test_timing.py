"""The one timing method: interleaved rounds, medians, spread, and warnings when the figures cannot be trusted.

A fake clock makes every figure exact: each module "runs" by advancing it, so the tests check the arithmetic and
the warnings, never this machine's speed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import pytest
import torch

from fxopt import timing
from fxopt.timing import Measurement, Timing, measure


class Clock:
    """A clock that only moves when a fake module runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def module(self, ms: Iterable[float]) -> Callable[..., None]:
        """A module whose calls take the given milliseconds, one after the other (repeating)."""
        times = itertools.cycle(ms)

        def run(*_: object) -> None:
            self.now += next(times) / 1e3

        return run


@pytest.fixture
def quiet_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timing, "_load", lambda: 0.1)
    monkeypatch.setattr(timing, "_cores", lambda: 2)


def test_measure_steady_modules_gives_exact_medians_and_ratio(quiet_machine: None) -> None:
    clock = Clock()
    m = measure({"original": clock.module([4.0]), "optimized": clock.module([2.0])}, (), rounds=5, clock=clock)
    assert m["original"].median_ms == pytest.approx(4.0) and m["optimized"].median_ms == pytest.approx(2.0)
    assert m.ratio("original", "optimized") == pytest.approx(0.5)
    assert m["original"].calls == 5 and m["optimized"].calls == 10  # about 20 ms of calls per round each
    assert m.reliable and m.warnings == ()


def test_measure_median_holds_where_one_burst_made_the_trial_report_13x_slower(quiet_machine: None) -> None:
    """D4: a neighbour's burst during the optimized model's runs made the fastest-of-5 figure 13.6x slower.

    Interleaved rounds and medians keep the true 0.5x; the burst rounds widen the spread, and the result says
    the figures are unreliable instead of showing a confident wrong ratio.
    """
    clock = Clock()
    burst = [2.0] * (1 + 10 * 6) + [500.0] * 10 * 4  # one calibration call, 6 quiet rounds, then 4 in a burst
    m = measure({"original": clock.module([4.0]), "optimized": clock.module(burst)}, (), rounds=10, warmup=0,
                round_ms=20, clock=clock)
    assert m["optimized"].median_ms == pytest.approx(2.0)
    assert m.ratio("original", "optimized") == pytest.approx(0.5)
    assert not m.reliable and any("optimized: the middle half of the rounds spans" in w for w in m.warnings)


def test_measure_warns_on_a_busy_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timing, "_load", lambda: 5.2)
    monkeypatch.setattr(timing, "_cores", lambda: 2)
    clock = Clock()
    m = measure({"a": clock.module([1.0])}, (), rounds=3, clock=clock)
    assert m.warnings == ("the machine was busy (load average 5.2 on 2 cores): other programs shared the cores, "
                          "so the figures are unreliable",)


def test_measure_with_too_few_rounds_says_the_spread_is_unknown(quiet_machine: None) -> None:
    clock = Clock()
    m = measure({"a": clock.module([1.0])}, (), rounds=2, clock=clock)
    assert "only 2 round(s): the spread cannot be judged" in m.warnings


def test_measure_rotates_the_order_of_modules_round_by_round(quiet_machine: None) -> None:
    order: list[str] = []
    modules = {name: (lambda *_, n=name: order.append(n)) for name in "abc"}
    measure(modules, (), rounds=3, warmup=0, max_calls=1)
    timed = order[3:]  # after one calibration call each
    assert timed == list("abc" "bca" "cab")


def test_measure_runs_real_modules_without_grad() -> None:
    seen = []
    model = torch.nn.Linear(4, 4)
    model.register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled()))
    m = measure({"linear": model}, (torch.randn(2, 4),), rounds=3, max_calls=2)
    assert m["linear"].median_ms > 0 and seen and not any(seen)


def test_measure_refuses_empty_input() -> None:
    with pytest.raises(ValueError, match="at least one module and one round"):
        measure({}, ())


def test_timing_text_shows_median_and_half_the_interquartile_range() -> None:
    t = Timing("x", (9.0, 9.5, 10.0, 10.5, 11.0), calls=3)
    assert t.median_ms == 10.0 and t.spread == pytest.approx(0.1)
    assert t.to_text() == "10.000 ms ±5.0%"
    m = Measurement((t,), threads=1, cores=2, load=0.5)
    assert m.method() == "median of 5 interleaved rounds of 3 calls, 1 thread(s) on 2 core(s), load 0.5"
