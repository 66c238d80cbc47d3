"""Wall-clock timing of forward passes: the one method behind ``fxopt bench``, the HTML report and benchmarks/.

Modules are timed side by side in **interleaved rounds**: each round runs every module in turn (the order rotates
from round to round), each for a number of calls chosen so that a round lasts long enough to read the clock
reliably. A burst of load from the neighbours then hits every module alike. A module's figure is the **median** of
its per-round times and its **spread** the interquartile range of those times relative to the median; a ratio
between two modules is the median of their per-round ratios.

The result says when its figures cannot be trusted: a spread above ``max_spread``, or a machine whose load
average exceeds its cores (other programs were running). Nothing is hidden behind a best-of-N figure, which on a
busy machine measures the one lucky run, and not the model.

Example:
    >>> m = measure({"eager": model, "fxopt": fast}, (x,))
    >>> print(m.to_text())
    >>> m.ratio("eager", "fxopt")       # fxopt's time over eager's, median of per-round ratios
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

MAX_SPREAD = 0.10
"""Relative interquartile range above which a figure is reported as unreliable."""


@dataclass(frozen=True)
class Timing:
    """One module's per-call times, one per round, in milliseconds.

    Attributes:
        label: the module's name in the comparison.
        rounds_ms: per-call milliseconds of each round, in round order.
        calls: calls per round.
    """

    label: str
    rounds_ms: tuple[float, ...]
    calls: int

    @property
    def median_ms(self) -> float:
        """Median per-call milliseconds over the rounds."""
        return statistics.median(self.rounds_ms)

    @property
    def spread(self) -> float:
        """Interquartile range of the rounds relative to the median (0.1: the middle half spans 10%)."""
        return _relative_iqr(self.rounds_ms)

    def to_text(self) -> str:
        """``"3.521 ms ±2.1%"``: median and half the relative interquartile range."""
        return f"{self.median_ms:.3f} ms ±{50 * self.spread:.1f}%"


@dataclass(frozen=True)
class Measurement:
    """Interleaved timings of several modules on the same inputs, with the conditions they were taken in.

    Attributes:
        timings: one Timing per module, in the order given.
        threads: torch's intra-op threads during the measurement.
        cores: CPU cores available to this process.
        load: the highest 1-minute load average seen before or after (None where the OS does not tell).
        device: where the inputs lived (``"cpu"``, ``"cuda"``).
        max_spread: the spread above which a figure is called unreliable.
    """

    timings: tuple[Timing, ...]
    threads: int
    cores: int
    load: float | None
    device: str = "cpu"
    max_spread: float = MAX_SPREAD
    warnings: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "warnings", tuple(_warnings(self)))

    def __getitem__(self, label: str) -> Timing:
        for t in self.timings:
            if t.label == label:
                return t
        raise KeyError(f"no timing {label!r}; timed: {', '.join(t.label for t in self.timings)}")

    @property
    def reliable(self) -> bool:
        """Whether no warning was raised."""
        return not self.warnings

    @property
    def rounds(self) -> int:
        """Timed rounds."""
        return len(self.timings[0].rounds_ms) if self.timings else 0

    def ratio(self, reference: str, other: str) -> float:
        """``other``'s time over ``reference``'s: the median of their per-round ratios (0.5: twice as fast)."""
        return statistics.median(self.ratios(reference, other))

    def ratios(self, reference: str, other: str) -> list[float]:
        """``other``'s time over ``reference``'s, round by round."""
        ref, oth = self[reference].rounds_ms, self[other].rounds_ms
        return [o / r for r, o in zip(ref, oth, strict=True) if r > 0]

    def method(self) -> str:
        """How the figures were taken, in one line."""
        calls = sorted({t.calls for t in self.timings})
        load = f", load {self.load:.1f}" if self.load is not None else ""
        return (f"median of {self.rounds} interleaved rounds of {'/'.join(map(str, calls))} calls, "
                f"{self.threads} thread(s) on {self.cores} core(s){load}")

    def to_text(self) -> str:
        """One line per module (median ± half the interquartile range), the method, and any warning."""
        first = self.timings[0].label if self.timings else ""
        lines = [f"measured on this machine ({self.method()}):"]
        for t in self.timings:
            ratio = f"  {self.ratio(first, t.label):.3f}x {first}" if t.label != first else ""
            lines.append(f"  {t.label:<10} {t.to_text()}{ratio}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _relative_iqr(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    middle = statistics.median(values)
    return (q3 - q1) / middle if middle > 0 else 0.0


def _warnings(m: Measurement) -> list[str]:
    out = []
    if m.rounds < 3:
        out.append(f"only {m.rounds} round(s): the spread cannot be judged")
    for t in m.timings:
        if t.spread > m.max_spread:
            out.append(f"{t.label}: the middle half of the rounds spans {100 * t.spread:.0f}% of the median "
                       f"(more than {100 * m.max_spread:.0f}%): the figure is unreliable")
    if m.load is not None and m.load > m.cores + 0.5:
        out.append(f"the machine was busy (load average {m.load:.1f} on {m.cores} cores): other programs shared "
                   "the cores, so the figures are unreliable")
    return out


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this OS
        return None


def _device(inputs: Sequence[Any]) -> str:
    for x in inputs:
        if isinstance(x, torch.Tensor):
            return x.device.type
    return "cpu"


def measure(modules: Mapping[str, Callable[..., Any]], inputs: Sequence[Any], rounds: int = 10, warmup: int = 2,
            round_ms: float = 20.0, max_calls: int = 50, max_spread: float = MAX_SPREAD,
            clock: Callable[[], float] = time.perf_counter) -> Measurement:
    """Time ``modules`` side by side on ``inputs`` in interleaved rounds, under ``torch.no_grad``.

    Args:
        modules: label -> module (or any callable taking the inputs); the first is the reference of ratios.
        inputs: positional inputs, shared by every module.
        rounds: timed rounds; each runs every module.
        warmup: untimed calls of each module first (a compiled module compiles here).
        round_ms: a module's calls per round are chosen (from one timed call after the warm-up) so that its
            share of a round lasts about this long.
        max_calls: the most calls of one module per round.
        max_spread: the relative interquartile range above which a figure is called unreliable.
        clock: seconds, monotonic (tests pass a fake one).

    Returns:
        A Measurement; its ``warnings`` say when the figures cannot be trusted.

    Raises:
        ValueError: no modules, or fewer than one round.
    """
    if not modules or rounds < 1:
        raise ValueError("measure needs at least one module and one round")
    device = _device(inputs)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    load_before = _load()

    def timed(fn: Callable[..., Any], calls: int) -> float:
        sync()
        start = clock()
        for _ in range(calls):
            fn(*inputs)
        sync()
        return (clock() - start) / calls

    labels = list(modules)
    with torch.no_grad():
        calls = {}
        for label in labels:
            for _ in range(warmup):
                modules[label](*inputs)
            once = timed(modules[label], 1) * 1e3
            calls[label] = max(1, min(max_calls, math.ceil(round_ms / once))) if once > 0 else max_calls
        samples: dict[str, list[float]] = {label: [] for label in labels}
        for r in range(rounds):
            shift = r % len(labels)
            for label in labels[shift:] + labels[:shift]:
                samples[label].append(timed(modules[label], calls[label]) * 1e3)
    load_after = _load()
    loads = [x for x in (load_before, load_after) if x is not None]
    return Measurement(
        timings=tuple(Timing(label, tuple(samples[label]), calls[label]) for label in labels),
        threads=torch.get_num_threads(), cores=_cores(), load=max(loads) if loads else None, device=device,
        max_spread=max_spread)
