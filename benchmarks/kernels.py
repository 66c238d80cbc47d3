"""Structured-layer kernels against dense and unfused torch: time, and how much of the FLOP saving is realised.

For each structure (block-diagonal, low-rank, Monarch, BLAST) sized to ``--fraction`` of a dense layer's FLOPs, each
weight shape (m x n) and token count, three callables are timed side by side with fxopt's one timing method
(``fxopt.timing.measure``): ``dense`` (``F.linear`` with the dense weight), ``unfused`` (the op's plain-torch
reference: einsums, intermediates in memory) and ``kernel`` (the ``torch.ops.fxopt`` op: the fastest torch
contraction order or, on CUDA, the Triton kernel where it wins; the ``order`` column says which it chose). The
realised fraction of the saving is ``(dense - kernel) / (dense (1 - fraction))``: 1 when time falls as much as
FLOPs, 0 when not at all.

``--layers`` times the structured layers themselves (``fxopt.structured``, with a bias) end to end instead: the
dense ``nn.Linear``, the layer on its op path and on its plain-torch path (``fxopt.kernels.dispatch.forced_path``),
the path the dispatch rule picks, and the realised fraction for both paths. The ``gate`` column says whether the
substitute pass's speed gate, predicting on the device's target (``cpu`` or ``h100``), keeps the layer; ``slower``
flags a kept layer whose dispatched path measured slower than dense.

``--permute`` times two shuffled Monarch layers with a GELU between them (square, b = sqrt(width) blocks, so the
``permute`` pass applies) before and after the pass, on both layer paths.

Example:
    python -m benchmarks.kernels --device cpu --quick
    python -m benchmarks.kernels --device cpu --quick --layers
    python -m benchmarks.kernels --device cpu --quick --permute
    python -m benchmarks.kernels --device cuda --out kernels_cuda.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import fxopt
from fxopt.kernels import blast, blockdiag, lowrank, monarch
from fxopt.kernels.blast import blast_reference
from fxopt.kernels.blockdiag import blockdiag_reference
from fxopt.kernels.dispatch import Path as LayerPath
from fxopt.kernels.dispatch import forced_path, layer_uses_ops
from fxopt.kernels.lowrank import lowrank_reference
from fxopt.kernels.monarch import monarch_reference
from fxopt.kernels.orders import OrderCache
from fxopt.passes import PassManager
from fxopt.structured import Blast, BlockDiagonal, LowRank, Monarch, MonarchLinear, Structure
from fxopt.structured.speed import layer_time
from fxopt.targets import get_target
from fxopt.timing import measure

Clock = Callable[[], float]
SHAPES = [(768, 768), (1024, 1024), (4096, 4096), (4096, 11008)]
TOKENS = [1, 16, 256, 4096]
QUICK_SHAPES = [(768, 768), (1024, 1024)]
QUICK_TOKENS = [1, 16, 256]
BLOCKS = 4
PERMUTE_WIDTHS = [256, 1024]
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


@dataclass(frozen=True)
class LayerRow:
    """One structured layer measured end to end: times in milliseconds (medians), realised savings per path."""

    structure: str
    m: int
    n: int
    tokens: int
    dtype: str
    device: str
    flop_fraction: float
    dense_ms: float
    ops_ms: float
    torch_ms: float
    dispatched: str
    ops_realised: float
    torch_realised: float
    gate_keeps: bool
    reliable: bool

    @property
    def slower_when_kept(self) -> bool:
        """The speed gate keeps the layer, yet the path the dispatch rule picks is slower than dense."""
        return self.gate_keeps and (self.ops_ms if self.dispatched == "ops" else self.torch_ms) > self.dense_ms


def _round_rank(value: float, most: int) -> int:
    return max(1, min(most, round(value / 8) * 8 or round(value)))


def _ranks(m: int, n: int, fraction: float) -> tuple[int, int, int, int]:
    """Block-diagonal blocks, low-rank, Monarch and BLAST ranks at about ``fraction`` of the dense MACs."""
    b, dense = BLOCKS, m * n
    return (max(1, round(1 / fraction)), _round_rank(fraction * dense / (m + n), min(m, n)),
            _round_rank(fraction * dense / (b * (m + n)), min(m, n) // b),
            _round_rank(fraction * dense / (m + n + b * b), min(m, n)))


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
    blocks, rank, mrank, brank = _ranks(m, n, fraction)
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
          rounds: int, clock: Clock = time.perf_counter) -> list[Row]:
    """Measure every structure, shape and token count.

    Args:
        shapes: (m, n) weight shapes.
        tokens: token counts.
        fraction: the structures' target share of the dense FLOPs.
        device: ``"cpu"`` or ``"cuda"``.
        dtype: the activations' and factors' dtype.
        rounds: timed rounds per case.
        clock: the clock ``measure`` reads (``time.process_time`` with ``--clock cpu``).

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
                                [x], rounds=rounds, warmup=2, round_ms=10.0, max_calls=20, clock=clock)
                dense_ms, kernel_ms = timed["dense"].median_ms, timed["kernel"].median_ms
                rows.append(Row(name, m, n, t, str(dtype).removeprefix("torch."), device, round(frac, 3),
                                dense_ms, timed["unfused"].median_ms, kernel_ms,
                                (dense_ms - kernel_ms) / (dense_ms * (1 - frac)), timed.reliable,
                                next((v for k, v in CACHES[name].chosen.items() if k not in known), "?")))
    return rows


def layer_structures(m: int, n: int, fraction: float) -> dict[str, Structure]:
    """The structures of ``structures`` as ``fxopt.structured`` structures (the layers they build)."""
    blocks, rank, mrank, brank = _ranks(m, n, fraction)
    return {"blockdiag": BlockDiagonal(blocks), "lowrank": LowRank(rank), "monarch": Monarch(BLOCKS, mrank),
            "blast": Blast(BLOCKS, brank)}


def _on(path: LayerPath, layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with forced_path(path):
        return layer(x)


def bench_layers(shapes: list[tuple[int, int]], tokens: list[int], fraction: float, device: str,
                 dtype: torch.dtype, rounds: int, clock: Clock = time.perf_counter) -> list[LayerRow]:
    """Time every structured layer on both paths against the dense layer, and ask the speed gate about it.

    Args:
        shapes: (m, n) weight shapes.
        tokens: token counts.
        fraction: the structures' target share of the dense FLOPs.
        device: ``"cpu"`` or ``"cuda"``.
        dtype: the activations' and parameters' dtype.
        rounds: timed rounds per case.
        clock: the clock ``measure`` reads.

    Returns:
        One LayerRow per case.
    """
    target = get_target("cpu" if device == "cpu" else "h100")
    rows = []
    with torch.no_grad():
        for m, n in shapes:
            dense = torch.nn.Linear(n, m, device=device, dtype=dtype)
            for name, structure in layer_structures(m, n, fraction).items():
                layer = structure.build(m, n, device=device, dtype=dtype)
                meta = structure.build(m, n, device="meta", dtype=dtype)
                frac = layer.flops(1) / layer.dense_flops(1)
                for t in tokens:
                    x = torch.randn(t, n, device=device, dtype=dtype)
                    timed = measure({"dense": dense, "ops": lambda x, lay=layer: _on("ops", lay, x),
                                     "torch": lambda x, lay=layer: _on("torch", lay, x)},
                                    [x], rounds=rounds, warmup=2, round_ms=10.0, max_calls=20, clock=clock)
                    dense_ms, ops_ms, torch_ms = (timed[k].median_ms for k in ("dense", "ops", "torch"))
                    keeps = layer_time(meta, (t, n), target, dtype) < layer_time(
                        torch.nn.Linear(n, m, device="meta", dtype=dtype), (t, n), target, dtype)
                    rows.append(LayerRow(name, m, n, t, str(dtype).removeprefix("torch."), device, round(frac, 3),
                                         dense_ms, ops_ms, torch_ms, "ops" if layer_uses_ops(x) else "torch",
                                         (dense_ms - ops_ms) / (dense_ms * (1 - frac)),
                                         (dense_ms - torch_ms) / (dense_ms * (1 - frac)), keeps, timed.reliable))
    return rows


def layer_table(rows: list[LayerRow]) -> str:
    """The layer rows as a Markdown table."""
    lines = ["| structure | m x n | tokens | FLOP share | dense ms | op path ms | torch path ms | dispatched | "
             "realised (op) | realised (torch) | gate |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = "" if r.reliable else " (noisy)"
        gate = ("keeps, slower" if r.slower_when_kept else "keeps") if r.gate_keeps else "refuses"
        lines.append(f"| {r.structure} | {r.m}x{r.n} | {r.tokens} | {r.flop_fraction:.2f} | {r.dense_ms:.3f} | "
                     f"{r.ops_ms:.3f} | {r.torch_ms:.3f} | {r.dispatched} | {r.ops_realised:.0%} | "
                     f"{r.torch_realised:.0%}{mark} | {gate} |")
    return "\n".join(lines)


def bench_permute(widths: list[int], tokens: list[int], device: str, dtype: torch.dtype, rounds: int,
                  clock: Clock = time.perf_counter) -> str:
    """Two shuffled Monarch layers with a GELU between them, before and after the ``permute`` pass, as a table.

    Args:
        widths: square layer widths (perfect squares: b = sqrt(width) blocks of b rows line up).
        tokens: token counts.
        device: ``"cpu"`` or ``"cuda"``.
        dtype: the activations' and parameters' dtype.
        rounds: timed rounds per case.
        clock: the clock ``measure`` reads.

    Returns:
        A Markdown table of medians in ms, and the after / before ratio per path.
    """
    lines = ["| width | tokens | op path before | op path after | ratio | torch path before | torch path after | "
             "ratio |", "|---|---|---|---|---|---|---|---|"]
    for width in widths:
        b = math.isqrt(width)
        model = torch.nn.Sequential(MonarchLinear(width, width, b, 1, shuffle=True), torch.nn.GELU(),
                                    MonarchLinear(width, width, b, 1, shuffle=True)).to(device, dtype).eval()
        x = torch.randn(4, width, device=device, dtype=dtype)
        moved = fxopt.trace(copy.deepcopy(model), (x,))
        PassManager("permute").run(moved, (x,))
        for t in tokens:
            x = torch.randn(t, width, device=device, dtype=dtype)
            timed = measure({f"{path} {when}": lambda x, m=m, path=path: _on(path, m, x)
                             for path in ("ops", "torch") for when, m in (("before", model), ("after", moved))},
                            [x], rounds=rounds, warmup=2, round_ms=10.0, max_calls=20, clock=clock)
            ms = {t.label: t.median_ms for t in timed.timings}
            lines.append(f"| {width} | {t} | {ms['ops before']:.3f} | {ms['ops after']:.3f} | "
                         f"{ms['ops after'] / ms['ops before']:.2f} | {ms['torch before']:.3f} | "
                         f"{ms['torch after']:.3f} | {ms['torch after'] / ms['torch before']:.2f} |")
    return "\n".join(lines)


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
    parser.add_argument("--layers", action="store_true",
                        help="time the structured layers end to end: op path, plain-torch path, dense")
    parser.add_argument("--permute", action="store_true",
                        help="two shuffled Monarch layers before and after the permute pass (widths 256, 1024)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (1 with --clock cpu on a shared machine)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time, or this process's CPU time (time.process_time: not charged for the time "
                             "other jobs hold the cores; meaningful with --threads 1)")
    parser.add_argument("--out", type=Path, help="append the rows as JSON lines")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype or ("float16" if args.device == "cuda" else "float32"))
    tokens = [int(t) for t in args.tokens.split(",")] if args.tokens else QUICK_TOKENS if args.quick else TOKENS
    shapes = QUICK_SHAPES if args.quick else SHAPES
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.permute:
        print(bench_permute(PERMUTE_WIDTHS, tokens, args.device, dtype, args.rounds, clock))
        return
    rows: list[Row] | list[LayerRow]
    if args.layers:
        rows = bench_layers(shapes, tokens, args.fraction, args.device, dtype, args.rounds, clock)
        print(layer_table(rows))
    else:
        rows = bench(shapes, tokens, args.fraction, args.device, dtype, args.rounds, clock)
        print(table(rows))
    if args.out:
        with args.out.open("a") as f:
            f.writelines(json.dumps(asdict(r)) + "\n" for r in rows)


if __name__ == "__main__":
    main()
