"""Contraction orders chosen by measurement: each candidate is timed once per shape, the fastest is remembered.

A structured matmul can be computed by several equally correct contraction orders (one ``einsum``, a ``bmm`` over
the blocks, two ``F.linear`` calls...) and, on CUDA, by a Triton kernel. Which is fastest depends on the shape, the
dtype and the machine, so the first call for a key times every candidate on the real inputs (synchronising CUDA)
and later calls reuse the winner; a kernel that loses to torch at some shape is simply not chosen there. Nothing
global in torch is changed; the cache is a plain dict owned by one ``OrderCache`` per op.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import torch

Candidate = Callable[..., torch.Tensor]


def shape_key(*tensors: torch.Tensor) -> tuple[Hashable, ...]:
    """A cache key for the inputs: shapes, dtype and device type (what decides the fastest order).

    Args:
        *tensors: the op's tensor inputs.

    Returns:
        A hashable tuple.
    """
    return (tuple(tuple(t.shape) for t in tensors), tensors[0].dtype, tensors[0].device.type)


class OrderCache:
    """The fastest of several contraction orders per input key, measured on first use.

    Args:
        candidates: name -> function computing the op's result from its inputs; all must agree numerically.
        repeats: timed calls of each candidate (the minimum counts).

    Example:
        >>> cache = OrderCache({"mm": torch.mm, "matmul": torch.matmul})
        >>> a = torch.randn(4, 4)
        >>> cache(("square",), a, a).shape
        torch.Size([4, 4])
    """

    def __init__(self, candidates: Mapping[str, Candidate], repeats: int = 3) -> None:
        self.candidates = dict(candidates)
        self.repeats = repeats
        self.chosen: dict[Hashable, str] = {}

    def choose(self, key: Hashable, *args: Any, kernel: Candidate | None = None) -> str:
        """The name of the fastest candidate for ``key``, timing every candidate on ``args`` the first time.

        Args:
            key: what identifies the shape class (see ``shape_key``).
            *args: the inputs the candidates are timed on.
            kernel: a Triton kernel with the candidates' signature, competing as ``"triton"`` (CUDA inputs).

        Returns:
            The winning candidate's name.
        """
        if key not in self.chosen:
            options = {**self.candidates, **({"triton": kernel} if kernel is not None else {})}
            if len(options) == 1:
                self.chosen[key] = next(iter(options))
            else:
                self.chosen[key] = min(options, key=lambda name: self._time(options[name], args))
        return self.chosen[key]

    def __call__(self, key: Hashable, *args: Any, kernel: Candidate | None = None) -> torch.Tensor:
        """Run the fastest candidate for ``key`` on ``args``.

        Args:
            key: what identifies the shape class (see ``shape_key``); it must tell apart calls offered a kernel.
            *args: the candidates' inputs.
            kernel: a Triton kernel competing with the torch orders (see ``choose``).

        Returns:
            The op's result.
        """
        name = self.choose(key, *args, kernel=kernel)
        return kernel(*args) if name == "triton" and kernel is not None else self.candidates[name](*args)

    def _time(self, fn: Candidate, args: tuple[Any, ...]) -> float:
        cuda = isinstance(args[0], torch.Tensor) and args[0].device.type == "cuda"
        fn(*args)  # warm-up: first calls pay for compilation, allocation and dispatch caches
        best = float("inf")
        for _ in range(self.repeats):
            if cuda:
                torch.cuda.synchronize(args[0].device)
            start = time.perf_counter()
            fn(*args)
            if cuda:
                torch.cuda.synchronize(args[0].device)
            best = min(best, time.perf_counter() - start)
        return best
