"""Structured-layer kernels against dense and unfused torch: time, and how much of the FLOP saving is realised.

For each structure (block-diagonal, low-rank, Monarch, BLAST) sized to ``--fraction`` of a dense layer's FLOPs, each
weight shape (m x n) and token count, three callables are timed side by side with fxopt's one timing method
(``fxopt.timing.measure``): ``dense`` (``F.linear`` with the dense weight), ``unfused`` (the op's plain-torch
reference: einsums, intermediates in memory) and ``kernel`` (the ``torch.ops.fxopt`` op: the fastest torch
contraction order or, on CUDA, the Triton kernel where it wins; the ``order`` column says which it chose). The
realised fraction of the saving is ``(dense - kernel) / (dense (1 - fraction))``: 1 when time falls as much as
FLOPs, 0 when not at all.

Example:
    python benchmarks/kernels.py --device cpu --quick
    python benchmarks/kernels.py --device cuda --out kernels_cuda.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fxopt.kernels import blast, blockdiag, lowrank, monarch
from fxopt.kernels.blast import blast_reference
from fxopt.kernels.blockdiag import blockdiag_reference
from fxopt.kernels.lowrank import lowrank_reference
from fxopt.kernels.monarch import monarch_reference
from fxopt.kernels.orders import OrderCache
from fxopt.timing import measure

SHAPES = [(768, 768), (1024, 1024), (4096, 4096), (4096, 11008)]
TOKENS = [1, 16, 256, 4096]
QUICK_SHAPES = [(768, 768), (1024, 1024)]
QUICK_TOKENS = [1, 16, 256]
BLOCKS = 4
CACHES: dict[str, OrderCache] = {"blockdiag": blockdiag.ORDERS, "lowrank": lowrank.ORDERS, "monarch": monarch.ORDERS,
                                 "blast": blast.ORDERS}
"""Each structure's order cache, read to report which order (or ``triton``) the op chose."""


@dataclass(frozen=True)
class Row:
    """One measured case: times in milliseconds (medians), the structure's FLOP fraction, the realised saving."""

    structure: str
    m: int
    n: int
    tokens: int
    dtype: str
    device: str
    flop_fraction: float
    dense_ms: float
    unfused_ms: float
    kernel_ms: float
    realised: float
    reliable: bool
    order: str


def _round_rank(value: float, most: int) -> int:
    return max(1, min(most, round(value / 8) * 8 or round(value)))


def structures(m: int, n: int, fraction: float, device: str, dtype: torch.dtype
               ) -> dict[str, tuple[float, Callable[..., torch.Tensor], Callable[..., torch.Tensor], tuple]]:
    """Each structure's factors at about ``fraction`` of the dense multiply-adds, with its op and reference.

    Args:
        m: output features.
        n: input features.
        fraction: the target share of the dense FLOPs.
        device: where the factors live.
        dtype: their dtype.

    Returns:
        name -> (actual FLOP fraction, op, reference, factor arguments after x).
    """
    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype) / shape[-1] ** 0.5

    b, dense = BLOCKS, m * n
    blocks = max(1, round(1 / fraction))
    rank = _round_rank(fraction * dense / (m + n), min(m, n))
    mrank = _round_rank(fraction * dense / (b * (m + n)), min(m, n) // b)
    brank = _round_rank(fraction * dense / (m + n + b * b), min(m, n))
    return {
        "blockdiag": (1 / blocks, torch.ops.fxopt.blockdiag_matmul, blockdiag_reference,
                      (r(blocks, m // blocks, n // blocks), False, False)),
        "lowrank": (rank * (m + n) / dense, torch.ops.fxopt.lowrank, lowrank_reference, (r(m, rank), r(rank, n))),
        "monarch": (b * mrank * (m + n) / dense, torch.ops.fxopt.monarch, monarch_reference,
                    (r(b, b * mrank, n // b), r(b, m // b, b * mrank), mrank, False)),
        "blast": (brank * (m + n + b * b) / dense, torch.ops.fxopt.blast, blast_reference,
                  (r(b, m // b, brank), r(b, b, brank), r(b, n // b, brank))),
    }


def bench(shapes: list[tuple[int, int]], tokens: list[int], fraction: float, device: str, dtype: torch.dtype,
          rounds: int) -> list[Row]:
    """Measure every structure, shape and token count.

    Args:
        shapes: (m, n) weight shapes.
        tokens: token counts.
        fraction: the structures' target share of the dense FLOPs.
        device: ``"cpu"`` or ``"cuda"``.
        dtype: the activations' and factors' dtype.
        rounds: timed rounds per case.

    Returns:
        One Row per case.
    """
    rows = []
    for m, n in shapes:
        weight = torch.randn(m, n, device=device, dtype=dtype) / n ** 0.5
        for name, (frac, op, reference, args) in structures(m, n, fraction, device, dtype).items():
            for t in tokens:
                x = torch.randn(t, n, device=device, dtype=dtype)
                known = set(CACHES[name].chosen)
                timed = measure({"dense": lambda x, w=weight: F.linear(x, w),
                                 "unfused": lambda x, f=reference, a=args: f(x, *a),
                                 "kernel": lambda x, f=op, a=args: f(x, *a)},
                                [x], rounds=rounds, warmup=2, round_ms=10.0, max_calls=20)
                dense_ms, kernel_ms = timed["dense"].median_ms, timed["kernel"].median_ms
                rows.append(Row(name, m, n, t, str(dtype).removeprefix("torch."), device, round(frac, 3),
                                dense_ms, timed["unfused"].median_ms, kernel_ms,
                                (dense_ms - kernel_ms) / (dense_ms * (1 - frac)), timed.reliable,
                                next((v for k, v in CACHES[name].chosen.items() if k not in known), "?")))
    return rows


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    header = "| structure | m x n | tokens | FLOP share | dense ms | unfused ms | kernel ms | order | saving realised |"
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = "" if r.reliable else " (noisy)"
        lines.append(f"| {r.structure} | {r.m}x{r.n} | {r.tokens} | {r.flop_fraction:.2f} | {r.dense_ms:.3f} | "
                     f"{r.unfused_ms:.3f} | {r.kernel_ms:.3f} | {r.order} | {r.realised:.0%}{mark} |")
    return "\n".join(lines)


def main() -> None:
    """Parse the options, measure, print the table and optionally write JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16/float16 (CUDA default fp16)")
    parser.add_argument("--fraction", type=float, default=0.25, help="structures' share of the dense FLOPs")
    parser.add_argument("--quick", action="store_true", help=f"shapes {QUICK_SHAPES}, tokens {QUICK_TOKENS}")
    parser.add_argument("--tokens", help="comma-separated token counts (overrides the default set)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, help="append the rows as JSON lines")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype or ("float16" if args.device == "cuda" else "float32"))
    tokens = [int(t) for t in args.tokens.split(",")] if args.tokens else QUICK_TOKENS if args.quick else TOKENS
    rows = bench(QUICK_SHAPES if args.quick else SHAPES, tokens, args.fraction, args.device, dtype, args.rounds)
    print(table(rows))
    if args.out:
        with args.out.open("a") as f:
            f.writelines(json.dumps(asdict(r)) + "\n" for r in rows)


if __name__ == "__main__":
    main()
