"""Hand-written attention against the ``sdpa`` pass's scaled_dot_product_attention, eager and compiled.

Run: python -m benchmarks.attention [--device cpu|cuda] [--dtype fp32|bf16] [--batch 4] [--tokens 128]
                                      [--rounds 10] [--threads 1 --clock cpu] [--no-compile] [--json out.json]
(as a module: run as a script, benchmarks/kernels.py would shadow the ``kernels`` package transformers imports)

Two cases, each captured once with ``fxopt.trace`` (export front-end) and rewritten with the ``sdpa`` pass:

- ``core``: transformers' eager attention alone (scale, additive padding mask, float32 softmax cast back,
  dropout p=0) on (batch, 8 heads, tokens, 64) queries, keys and values;
- ``gpt2``: a 4-layer, 256-wide, 8-head GPT-2 with ``attn_implementation="eager"`` on (batch, tokens) ids.

The hand-written and the rewritten graph run in one process with ``fxopt.timing.measure`` (interleaved rounds,
medians), eager and, unless ``--no-compile``, under ``torch.compile`` (inductor defaults). Printed per case: the
median milliseconds of each and the ratio sdpa / hand-written (below 1: the rewrite is faster). The GPU pipeline
runs ``sdpa``; the CPU pipeline does not, because on CPU the ratio is about 1 or above.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import fxopt
from fxopt.passes import PassManager
from fxopt.testing import assert_equivalent
from fxopt.timing import measure

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
HEADS, HEAD_DIM = 8, 64


class EagerAttention(nn.Module):
    """transformers' ``eager_attention_forward`` on given queries, keys, values and additive mask."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = torch.matmul(q, k.transpose(2, 3)) * HEAD_DIM ** -0.5 + mask
        w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(F.dropout(w, p=0.0, training=False), v)


def core_case(batch: int, tokens: int, device: str, dtype: torch.dtype) -> tuple[nn.Module, tuple[Any, ...]]:
    """The attention alone, with the second half of the batch padded by a quarter of the tokens."""
    q, k, v = (torch.randn(batch, HEADS, tokens, HEAD_DIM, device=device, dtype=dtype) for _ in range(3))
    mask = torch.zeros(batch, 1, tokens, tokens, device=device, dtype=dtype)
    mask[batch // 2:, ..., -tokens // 4:] = torch.finfo(dtype).min
    return EagerAttention(), (q, k, v, mask)


def gpt2_case(batch: int, tokens: int, device: str, dtype: torch.dtype) -> tuple[nn.Module, tuple[Any, ...]]:
    """A small GPT-2 with eager attention."""
    import transformers

    config = transformers.GPT2Config(vocab_size=1000, n_embd=HEADS * 32, n_layer=4, n_head=HEADS,
                                     n_positions=max(tokens, 16), bos_token_id=0, eos_token_id=0,
                                     attn_implementation="eager")
    model = transformers.GPT2Model(config).to(device=device, dtype=dtype).eval()
    return model, (torch.randint(0, 1000, (batch, tokens), device=device),)


CASES = {"core": core_case, "gpt2": gpt2_case}


def graphs(model: nn.Module, inputs: tuple[Any, ...]) -> tuple[fx.GraphModule, fx.GraphModule, int]:
    """The hand-written graph, the rewritten one, and how many attentions were rewritten."""
    hand = fxopt.trace(model, inputs, frontend="export")
    fused = copy.deepcopy(hand)
    result = PassManager("sdpa").run(fused, inputs).results[-1]
    assert_equivalent(hand, fused, inputs)
    return hand, fused, int(result.metrics["rewritten"])


def run_case(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Time one case eager and compiled; the row printed and written to JSON."""
    model, inputs = CASES[name](args.batch, args.tokens, args.device, DTYPES[args.dtype])
    hand, fused, rewritten = graphs(model, inputs)
    modules: dict[str, Any] = {"hand": hand, "sdpa": fused}
    compile_s: dict[str, float] = {}
    if args.compile:
        for label, gm in (("hand", hand), ("sdpa", fused)):
            compiled = torch.compile(copy.deepcopy(gm))
            start = time.perf_counter()
            with torch.no_grad():
                compiled(*inputs)
            compile_s[label] = time.perf_counter() - start
            modules[f"{label}_compiled"] = compiled
    with torch.no_grad():
        timed = measure(modules, inputs, rounds=args.rounds, clock=CLOCKS[args.clock])
    row: dict[str, Any] = {"case": name, "rewritten": rewritten, "reliable": timed.reliable,
                           "ms": {label: timed[label].median_ms for label in modules},
                           "eager_ratio": timed.ratio("hand", "sdpa")}
    if args.compile:
        row["compiled_ratio"] = timed.ratio("hand_compiled", "sdpa_compiled")
        row["compile_s"] = compile_s
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall time, or process CPU time (robust to other load with --threads 1)")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--json", help="also write the rows as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"{args.device} ({where}), {args.dtype}, batch {args.batch}, {args.tokens} tokens, "
          f"{args.clock} clock, torch {torch.__version__}")
    print(f"{'case':6} {'rewritten':>9} {'hand ms':>9} {'sdpa ms':>9} {'eager':>7} {'hand c.ms':>10} "
          f"{'sdpa c.ms':>10} {'compiled':>8}")
    rows = []
    for name in CASES:
        r = run_case(name, args)
        rows.append(r)
        ms = r["ms"]
        compiled = (f"{ms['hand_compiled']:10.3f} {ms['sdpa_compiled']:10.3f} {r['compiled_ratio']:8.3f}"
                    if args.compile else "")
        flag = "" if r["reliable"] else "  (unreliable)"
        print(f"{name:6} {r['rewritten']:>9} {ms['hand']:9.3f} {ms['sdpa']:9.3f} {r['eager_ratio']:7.3f} "
              f"{compiled}{flag}")
    print("ratios are sdpa / hand-written: below 1, the rewrite is faster")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
