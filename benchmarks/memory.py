"""Peak resident memory of ``fxopt.analyze``, ``fxopt.prune(ratio=0.5)`` and ``fxopt.optimize`` per weight byte.

Models: an MLP of three 16384x32768 fp32 linears (6 GiB of weights) and a LLaMA-1B-shaped transformers config
(hidden 2048, intermediate 8192, 16 layers, 32 heads, 8 KV heads, vocab 32000: 4.1 GiB of fp32 weights).
``--scale`` multiplies every width (and the LLaMA's layer count, at least 2) for a quick run: ``--scale 0.125``
measures models of about 1/64 of the size. glibc keeps freed blocks under its mmap threshold (which grows up to
32 MB) in the heap, where they stay resident: a 2 GB temporary leaves the resident set when freed, a 16 MB one may
not. At full size few tensors are that small; ``--mmap-threshold 1048576`` makes a scaled run behave alike.

Each (model, step) runs in a fresh subprocess: it runs the step once on a tiny model of the same kind (so lazy
imports and one-time caches, a fixed 100 MB or so, are not counted), reads its resident memory (``base``), builds
the model with seeded weights, runs the step once, and reads the peak resident memory of the process
(``resource.getrusage``, after resetting the kernel's high-water mark once the model is built so that model
building does not count). The figure is ``(peak - base) / weight bytes``: 1.00x means the step held no
more than the model itself; the bar of issue 13 is 1.5x (one activation pass at the example input is included,
and is small here). ``optimize`` runs with ``compile=False`` (the graph passes, not Inductor's compilation).

Run:
    python -m benchmarks.memory [--scale 0.125] [--models mlp llama] [--steps analyze prune optimize]
        [--mmap-threshold 1048576] [--json docs/memory.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

GIB = 2 ** 30
MODELS = ("mlp", "llama")
STEPS = ("analyze", "prune", "optimize")
WARM_SCALE = 1 / 64


def width(n: int, scale: float) -> int:
    """``n * scale`` rounded to a multiple of 64 (at least 64)."""
    return max(64, round(n * scale / 64) * 64)


class MLP(torch.nn.Module):
    """Three linears with ReLUs between them, each weight ``hidden x features`` (16384x32768 at full size)."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(features, hidden)
        self.fc2 = torch.nn.Linear(hidden, features)
        self.fc3 = torch.nn.Linear(features, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class LogitsOnly(torch.nn.Module):
    """A causal LM returning its logits tensor (not a ``ModelOutput``)."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=ids).logits


def build(name: str, scale: float) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """The model ``name`` at ``scale``, in eval mode with seeded weights, and its example input."""
    torch.manual_seed(0)
    if name == "mlp":
        features, hidden = width(16384, scale), width(32768, scale)
        return MLP(features, hidden).eval(), (torch.randn(4, features),)
    if name == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        heads = max(2, round(32 * scale))
        cfg = LlamaConfig(vocab_size=width(32000, scale), hidden_size=64 * heads, intermediate_size=width(8192, scale),
                          num_hidden_layers=max(2, round(16 * scale)), num_attention_heads=heads,
                          num_key_value_heads=max(1, heads // 4), head_dim=64, max_position_embeddings=2048,
                          use_cache=False)
        cfg._attn_implementation = "sdpa"
        return LogitsOnly(LlamaForCausalLM(cfg).eval()), (torch.randint(0, cfg.vocab_size, (1, 32)),)
    raise ValueError(f"unknown model {name!r}: choose from {', '.join(MODELS)}")


def resident() -> int:
    """The process's resident memory now, in bytes (Linux ``/proc/self/statm``)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def reset_peak() -> bool:
    """Reset the kernel's resident high-water mark to the current resident memory (Linux 4.0+)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak() -> int:
    """The process's peak resident memory since the last ``reset_peak``, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_step(step: str, model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    """Run one fxopt entry point on ``model`` and return its result (kept alive until the peak is read)."""
    import fxopt

    if step == "analyze":
        return fxopt.analyze(model, inputs)
    if step == "prune":
        return fxopt.prune(model, inputs, ratio=0.5)
    if step == "optimize":
        return fxopt.optimize(model, inputs, compile=False)
    raise ValueError(f"unknown step {step!r}: choose from {', '.join(STEPS)}")


def child(name: str, step: str, scale: float) -> dict[str, Any]:
    """Measure one step in this process (a fresh one): the figures as a dict."""
    torch.set_num_threads(1)
    with torch.no_grad():  # a tiny model first: lazy imports and one-time caches are not the step's memory
        run_step(step, *build(name, WARM_SCALE))
    gc.collect()
    base = resident()
    model, inputs = build(name, scale)
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    built = resident()
    reset = reset_peak()
    start = time.perf_counter()
    with torch.no_grad():
        result = run_step(step, model, inputs)
    seconds = time.perf_counter() - start
    top = max(peak(), resident())
    del result
    return {"model": name, "step": step, "scale": scale, "weight_bytes": weights, "base_bytes": base,
            "built_bytes": built, "peak_bytes": top, "peak_reset": reset, "seconds": round(seconds, 1),
            "ratio": (top - base) / weights, "extra": (top - built) / weights}


def measure(name: str, step: str, scale: float, timeout: float, mmap_threshold: int = 0) -> dict[str, Any]:
    """Run ``child`` in a fresh interpreter and return its figures (or the failure).

    ``mmap_threshold`` (bytes, 0: glibc's default) sets ``MALLOC_MMAP_THRESHOLD_`` for the child.
    """
    cmd = [sys.executable, "-P", __file__, "--child", name, step, "--scale", str(scale)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(mmap_threshold)) if mmap_threshold else None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    except subprocess.TimeoutExpired:
        return {"model": name, "step": step, "scale": scale, "error": f"timed out after {timeout:.0f}s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return {"model": name, "step": step, "scale": scale, "error": tail[:300]}
    return json.loads(lines[-1])


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    out = ["| model | weights GiB | step | peak - base GiB | x weights | x weights after build | seconds |",
           "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['model']} | | {r['step']} | failed: {r['error']} | | | |")
            continue
        out.append(f"| {r['model']} | {r['weight_bytes'] / GIB:.2f} | {r['step']} | "
                   f"{(r['peak_bytes'] - r['base_bytes']) / GIB:.2f} | {r['ratio']:.2f} | {r['extra']:.2f} | "
                   f"{r['seconds']} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every width by this (quick: 0.125)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per step")
    parser.add_argument("--mmap-threshold", type=int, default=0,
                        help="MALLOC_MMAP_THRESHOLD_ for the steps (bytes; 0: glibc's default); 1048576 makes a scaled "
                             "run read like a full one")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "STEP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.scale)))
        return
    rows = []
    for name in args.models:
        for step in args.steps:
            rows.append(measure(name, step, args.scale, args.timeout, args.mmap_threshold))
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
