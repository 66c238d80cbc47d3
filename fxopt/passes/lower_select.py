"""Choosing among lowering candidates: time eager and every compiled candidate, keep the fastest.

A compiled module is not always faster than eager (torch.compile's default ran ViT-B/16 at batch 64 slower than
eager on an H200), and which torch.compile mode wins depends on the batch (CUDA graphs pay at small batch). So
the lowering pass compiles its candidates, times them beside the eager module on the example inputs with
``fxopt.timing.measure`` (interleaved rounds, median), and keeps the fastest; the Selection says which won and
gives every time, so the report can say why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fxopt.timing import measure

EAGER = "eager"
"""The label of the uncompiled module among the candidates."""

Timer = Callable[[Mapping[str, Callable[..., Any]], Sequence[Any]], Mapping[str, float]]
"""``timer(modules, inputs) -> {label: milliseconds}``: how candidates are timed (tests pass a fake one)."""


def median_ms(modules: Mapping[str, Callable[..., Any]], inputs: Sequence[Any]) -> dict[str, float]:
    """Median milliseconds per call of each module over interleaved rounds (``fxopt.timing.measure``)."""
    timed = measure(modules, inputs, rounds=5, round_ms=10.0, max_calls=20)
    return {t.label: t.median_ms for t in timed.timings}


@dataclass(frozen=True)
class Selection:
    """Which lowering candidate ran fastest on the example inputs.

    Attributes:
        winner: the fastest candidate's label (``"eager"`` when no compiled module beat it).
        times_ms: milliseconds per call of every candidate timed, eager included, in the order timed.
    """

    winner: str
    times_ms: Mapping[str, float]

    def reason(self) -> str:
        """``"kept reduce-overhead: 0.590 ms against default 2.080 ms, eager 3.740 ms"``."""
        others = ", ".join(f"{label} {ms:.3f} ms" for label, ms in self.times_ms.items() if label != self.winner)
        return (f"kept {self.winner}: {self.times_ms[self.winner]:.3f} ms per call on the example inputs"
                + (f" against {others}" if others else ""))


def select_fastest(compiled: Mapping[str, Callable[..., Any]], eager: Callable[..., Any], inputs: Sequence[Any],
                   timer: Timer = median_ms) -> Selection:
    """Time ``eager`` and the ``compiled`` candidates on ``inputs`` and pick the fastest.

    Compiled candidates come first and win ties, in their order: eager is kept only when it is strictly faster.

    Args:
        compiled: label -> compiled module (warmed up: the timer's warm-up must not compile).
        eager: the uncompiled module.
        inputs: the example inputs.
        timer: ``timer(modules, inputs) -> {label: ms}``.

    Raises:
        ValueError: a compiled candidate is labelled ``"eager"``.

    Example:
        >>> select_fastest({"default": torch.compile(gm)}, gm, (x,)).reason()
        'kept default: 1.200 ms per call on the example inputs against eager 2.300 ms'
    """
    if EAGER in compiled:
        raise ValueError(f"a compiled candidate cannot be labelled {EAGER!r}; rename it")
    modules = {**compiled, EAGER: eager}
    times = timer(modules, inputs)
    order = list(modules)
    winner = min(order, key=lambda label: (times[label], order.index(label)))
    return Selection(winner, {label: float(times[label]) for label in order})
