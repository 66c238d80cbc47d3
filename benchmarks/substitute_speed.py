"""How much of a structured layer's FLOP saving its plain-torch forward realises, measured and predicted.

Run: python -m benchmarks.substitute_speed [--device cpu|cuda] [--target cpu|h200|...] [--tokens 1 16 197 1024]
                                           [--dtype fp32|bf16] [--rounds 10] [--json out.json]
     python -m benchmarks.substitute_speed --models vit_b_16 gpt2_small [--target cpu] [--compile] [--json out.json]

For each weight shape (768x768, 3072x768 i.e. 768 -> 3072, and 768x3072 i.e. 3072 -> 768) and each token count,
every structure at about a quarter of the dense layer's multiply-adds (low-rank, block-diagonal b=4, Monarch b=4,
BTT, BLAST b=4) is timed against the dense ``nn.Linear`` with ``fxopt.timing.measure`` (interleaved rounds,
medians; random factors: the time does not depend on the values). Printed per row: the FLOP ratio, the measured
time ratio (structured / dense), the *realised* fraction of the FLOP saving ``(1 - time ratio) / (1 - FLOP ratio)``
(1: the whole saving shows up as time, 0: none, negative: slower than dense), and the ratio the target's roofline
predicts (``fxopt.structured.speed``: the ATen ops the forward runs), which is what the ``substitute`` pass's speed
gate reads.

With ``--models``, each model is optimized twice in one process, losslessly (``fxopt.optimize(model, x)``) and with
``substitute="auto"``, and the two results are timed side by side: the check that substitution is never slower
than the lossless pipeline. Printed per model: the time each ``optimize`` call took, the layers the pass considered
and replaced, and the substituted model's time over the lossless one's. The models have random weights (torchvision's
``vit_b_16`` at 1x3x224x224; a GPT-2-small config, 768 wide and 12 layers, at 1x128 tokens).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

import fxopt
from fxopt.structured import BTT, Blast, BlockDiagonal, LowRank, Monarch, Structure
from fxopt.structured.choose import label
from fxopt.structured.speed import layer_time
from fxopt.targets import get_target
from fxopt.timing import measure

SHAPES = ((768, 768), (3072, 768), (768, 3072))
"""(out_features, in_features) of the dense weights."""
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def structures(m: int, n: int) -> dict[str, Structure]:
    """Each structure at about a quarter of the m x n layer's multiply-adds."""
    quarter = m * n // 4
    return {
        "lowrank": LowRank(rank=quarter // (m + n)),
        "blockdiag": BlockDiagonal(blocks=4),
        "monarch": Monarch(blocks=4, rank=quarter // (4 * (m + n))),
        "btt": BTT(rank=max(1, quarter // BTT(rank=1).build(m, n, device="meta").structure_parameters)),
        "blast": Blast(blocks=4, rank=quarter // (m + n + 16)),
    }


def row(m: int, n: int, tokens: int, device: str, dtype: torch.dtype, target: Any,
        rounds: int) -> list[dict[str, Any]]:
    """Measured and predicted ratios of every structure against the dense layer at one shape and token count."""
    dense = nn.Linear(n, m, device=device, dtype=dtype)
    layers = {name: s.build(m, n, device=device, dtype=dtype) for name, s in structures(m, n).items()}
    x = torch.randn(tokens, n, device=device, dtype=dtype)
    timed = measure({"dense": dense, **layers}, (x,), rounds=rounds)
    dense_s = layer_time(dense, (tokens, n), target, dtype)
    out = []
    for name, layer in layers.items():
        flop_ratio = layer.flops(tokens) / layer.dense_flops(tokens)
        time_ratio = timed.ratio("dense", name)
        out.append({"shape": f"{m}x{n}", "tokens": tokens, "structure": label(layer.structure),
                    "flop_ratio": flop_ratio,
                    "measured_ratio": time_ratio, "realised": (1 - time_ratio) / (1 - flop_ratio),
                    "predicted_ratio": layer_time(layer, (tokens, n), target, dtype) / dense_s,
                    "dense_ms": timed["dense"].median_ms, "reliable": timed.reliable})
    return out


def vit_b_16() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """torchvision's ViT-B/16 (random weights) on one 224x224 image."""
    import torchvision

    return torchvision.models.vit_b_16().eval(), (torch.randn(1, 3, 224, 224),)


def gpt2_small() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """GPT-2 small's configuration (random weights) returning logits, on 128 tokens."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from fxopt.testing.zoo import HFTokenWrapper

    config = GPT2Config(use_cache=False, attn_implementation="sdpa")
    model = HFTokenWrapper(GPT2LMHeadModel(config), ("logits",))
    return model.eval(), (torch.randint(0, config.vocab_size, (1, 128)),)


MODELS: dict[str, Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]] = {
    "vit_b_16": vit_b_16, "gpt2_small": gpt2_small}


def side_by_side(name: str, target: str, compile: bool, rounds: int) -> dict[str, Any]:
    """``optimize(model)`` against ``optimize(model, substitute="auto")``: pass times, layers and speed."""
    torch.manual_seed(0)
    model, inputs = MODELS[name]()
    start = time.perf_counter()
    lossless = fxopt.optimize(model, inputs, target=target, compile=compile)
    lossless_s = time.perf_counter() - start
    start = time.perf_counter()
    substituted = fxopt.optimize(model, inputs, target=target, substitute="auto", compile=compile)
    substitute_s = time.perf_counter() - start
    (result,) = [r for r in fxopt.report(substituted).results if r.pass_name.startswith("substitute")]
    timed = measure({"lossless": lossless, "substitute": substituted}, inputs, rounds=rounds)
    skipped: dict[str, int] = {}
    for skip in result.skips:
        category = skip.reason.split(":")[0]
        skipped[category] = skipped.get(category, 0) + 1
    return {"model": name, "target": target, "compile": compile, "optimize_s": lossless_s,
            "optimize_substitute_s": substitute_s, "substitute_pass_s": result.duration_s,
            "layers_considered": result.metrics.get("layers_considered", 0),
            "layers_substituted": result.metrics.get("layers_substituted", 0), "left_dense": skipped,
            "substituted": [row["structure"] for row in result.metrics.get("substituted", [])],
            "lossless_ms": timed["lossless"].median_ms, "substitute_ms": timed["substitute"].median_ms,
            "ratio": timed.ratio("lossless", "substitute"), "reliable": timed.reliable}


def compare_models(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The ``--models`` mode: one side-by-side row per model, printed as it finishes."""
    rows = []
    for name in args.models:
        r = side_by_side(name, args.target or "cpu", args.compile, args.rounds)
        rows.append(r)
        flag = "" if r["reliable"] else "  (unreliable)"
        print(f"{name}: optimize {r['optimize_s']:.1f}s, with substitute='auto' {r['optimize_substitute_s']:.1f}s "
              f"(pass {r['substitute_pass_s']:.1f}s); substituted {r['layers_substituted']}/"
              f"{r['layers_considered']} layers {r['substituted']}, left dense {r['left_dense']}; "
              f"time {r['substitute_ms']:.2f} ms vs lossless {r['lossless_ms']:.2f} ms = "
              f"{r['ratio']:.3f}x{flag}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--target", default=None, help="target whose roofline predicts (default: the device's)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 197, 1024])
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", help="also write the rows as JSON")
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS),
                        help="instead of layers: optimize these models with and without substitute='auto'")
    parser.add_argument("--compile", action="store_true", help="with --models: lower with torch.compile")
    args = parser.parse_args()
    if args.models:
        model_rows = compare_models(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(model_rows, f, indent=1)
        return
    target = get_target(args.target or ("cpu" if args.device == "cpu" else "h200"))
    dtype = DTYPES[args.dtype]
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"{args.device} ({where}), {args.dtype}; predicted on {target.describe()}")
    print(f"{'shape':>9} {'tokens':>6} {'structure':34} {'FLOPs':>6} {'measured':>8} {'realised':>8} "
          f"{'predicted':>9} {'dense ms':>9}")
    rows = []
    for m, n in SHAPES:
        for tokens in args.tokens:
            for r in row(m, n, tokens, args.device, dtype, target, args.rounds):
                rows.append(r)
                flag = "" if r["reliable"] else "  (unreliable)"
                print(f"{r['shape']:>9} {tokens:>6} {r['structure']:34} {r['flop_ratio']:6.3f} "
                      f"{r['measured_ratio']:8.3f} {r['realised']:8.2f} {r['predicted_ratio']:9.3f} "
                      f"{r['dense_ms']:9.4f}{flag}")
    agree = [(r["measured_ratio"] < 1) == (r["predicted_ratio"] < 1) for r in rows]
    print(f"\nthe prediction says faster/slower as the measurement does in {sum(agree)}/{len(agree)} rows; "
          f"median realised fraction {sorted(r['realised'] for r in rows)[len(rows) // 2]:.2f}; "
          f"faster than dense in {sum(r['measured_ratio'] < 1 for r in rows)}/{len(rows)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in r.items()}
                       for r in rows], f, indent=1)


if __name__ == "__main__":
    main()
