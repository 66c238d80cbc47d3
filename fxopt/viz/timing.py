"""Wall-clock latency of a module's forward pass (fastest of repeated runs), for reports and ``fxopt bench``.

The fastest run, not the median, is reported: on a shared machine the other runs measure the neighbours (an
OpenMP barrier waiting for a descheduled thread can stretch one forward pass a hundredfold), while the fastest
is what the model costs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch


def measure_ms(module: torch.nn.Module, inputs: Sequence[Any], warmup: int = 2, iters: int = 10) -> float:
    """Milliseconds of the fastest of ``iters`` runs of ``module(*inputs)`` under ``torch.inference_mode``.

    Args:
        module: the module to time (eager, or compiled: the warm-up runs absorb compilation).
        inputs: positional inputs.
        warmup: untimed runs first.
        iters: timed runs; the fastest is returned.
    """
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            module(*inputs)
        for _ in range(max(iters, 1)):
            start = time.perf_counter()
            module(*inputs)
            times.append(time.perf_counter() - start)
    return 1000.0 * min(times)
