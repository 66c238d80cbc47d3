"""Capture and analysis time of fxopt beside Torch-Pruning's DependencyGraph, and scaling with graph size.

Run: python -m benchmarks.analysis_speed [--layers 4 8 16 32] [--repeats 3]

Prints, in one process, for ResNet-50 (real weights, 1x3x224x224), LLaMA-7B-shaped configs on the meta device
(hidden 4096, intermediate 11008, 32 heads, seq 128) and a hand-written RNN cell unrolled over 256 and 1024 steps
(``for t in range(x.size(1))``): capture time (fxopt.trace), analysis time (rules, groups, exactness; capture
excluded), capture and analysis together per node, the number of graph nodes, and Torch-Pruning's DependencyGraph
build time on the same model (its capture and analysis are one step). Capture is the median of --repeats runs
(the first run of a model pays one-time imports and is left out); analysis likewise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torchvision

import fxopt
from fxopt.analysis.analysis import analyze_graph


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``fn`` over ``repeats`` calls, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def llama(layers: int) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """A LLaMA-7B-shaped causal LM with ``layers`` layers on the meta device (no memory, no compute)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, use_cache=False)
    cfg._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg).eval()
    return model, (torch.randint(0, 32000, (1, 128), device="meta"),)


def torch_pruning_build(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], repeats: int) -> str:
    """Torch-Pruning's DependencyGraph build time as text, the median of ``repeats`` runs after one warm-up
    ('failed: ...' when it cannot)."""
    try:
        import torch_pruning as tp
    except ImportError:
        return "not installed"
    example = inputs[0] if len(inputs) == 1 else inputs
    try:
        tp.DependencyGraph().build_dependency(model, example_inputs=example)
        seconds, _ = timed(lambda: tp.DependencyGraph().build_dependency(model, example_inputs=example), repeats)
        return f"{seconds:.3f}s"
    except Exception as exc:  # report Torch-Pruning's failure as a figure, it is not ours to fix
        return f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"


class UnrolledRnn(torch.nn.Module):
    """A hand-written RNN cell (two linears and a tanh) unrolled over the sequence by a Python loop."""

    def __init__(self, features: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.ih, self.hh = torch.nn.Linear(features, hidden), torch.nn.Linear(hidden, hidden)
        self.fc, self.hidden = torch.nn.Linear(hidden, 10), hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.size(0), self.hidden)
        for t in range(x.size(1)):
            h = torch.tanh(self.ih(x[:, t]) + self.hh(h))
        return self.fc(h)


def measure(name: str, model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], repeats: int, tp: bool) -> None:
    """Print one row: capture, analysis, both per node, nodes, groups, Torch-Pruning."""
    fxopt.trace(model, inputs)  # one-time imports and caches
    capture, gm = timed(lambda: fxopt.trace(model, inputs), repeats)
    analysis_time, analysis = timed(lambda: analyze_graph(gm, inputs), repeats)
    nodes = len(gm.graph.nodes)
    tp_time = torch_pruning_build(model, inputs, repeats) if tp else "-"
    print(f"{name:<28} {gm.meta['fxopt']['trace'].frontend:<7} {capture:8.3f}s {analysis_time:9.3f}s "
          f"{capture + analysis_time:8.3f}s {nodes:7d} {1e6 * (capture + analysis_time) / nodes:8.1f}us "
          f"{len(analysis.groups):6d}  {tp_time}", flush=True)


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--steps", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, load {os.getloadavg()[0]:.2f}, threads {torch.get_num_threads()}")
    print(f"{'model':<28} {'capture':<7} {'time':>9} {'analysis':>10} {'both':>9} {'nodes':>7} {'per node':>10} "
          f"{'groups':>6}  Torch-Pruning DependencyGraph")
    resnet = torchvision.models.resnet50().eval()
    measure("resnet50 (224px)", resnet, (torch.randn(1, 3, 224, 224),), args.repeats, tp=True)
    for steps in args.steps:
        measure(f"unrolled rnn {steps} steps", UnrolledRnn().eval(), (torch.randn(2, steps, 32),), args.repeats,
                tp=False)
    for layers in args.layers:
        model, inputs = llama(layers)
        measure(f"llama-7b-shape {layers} layers", model, inputs, args.repeats, tp=layers == max(args.layers))


if __name__ == "__main__":
    main()
