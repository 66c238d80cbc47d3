"""What symbolic batch and sequence dims cost at capture: torch.export with and without them, and fxopt.trace.

Run: python -P benchmarks/dynamic_capture.py [--repeats 3]
(``-P`` keeps benchmarks/ off the import path: benchmarks/kernels.py would hide the ``kernels`` package that
transformers imports.)

Prints, for a small transformers LLaMA (hidden 64, 2 layers, 4 heads, 2 KV heads, ids of shape 1x8) and for
torchvision's resnet50 (1x3x224x224), the median time of: non-strict ``torch.export`` at the example's sizes,
the same with ``Dim.AUTO`` on the batch and sequence dims (what ``fxopt.trace`` runs), and ``fxopt.trace`` as a
whole (capture, shape propagation and the check of which dims stay static), with the dynamic/static ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torchvision

import fxopt
from fxopt.input_dims import dynamic_dims, export_shapes, widened


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def llama() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """A small LLaMA with grouped-query attention, its cache off (export cannot return it), and token ids."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, use_cache=False)
    return LlamaForCausalLM(config).eval(), (torch.randint(0, 128, (1, 8)),)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    models = {"llama (1x8 ids)": llama(), "resnet50 (224 px)": (torchvision.models.resnet50().eval(),
                                                                (torch.randn(1, 3, 224, 224),))}
    print(f"{'model':20} {'export static':>14} {'export dynamic':>15} {'ratio':>6} {'fxopt.trace':>12}")
    for name, (model, inputs) in models.items():
        static, dynamic, trace = measure(model, inputs, args.repeats)
        print(f"{name:20} {static:>13.3f}s {dynamic:>14.3f}s {dynamic / static:>5.2f}x {trace:>11.3f}s")


def measure(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], repeats: int) -> tuple[float, float, float]:
    """Median seconds of a static export, an export with dynamic batch and sequence dims, and fxopt.trace."""
    dims = dynamic_dims(inputs)
    static = timed(lambda: torch.export.export(model, inputs, strict=False), repeats)
    dynamic = timed(lambda: torch.export.export(model, widened(inputs, dims), strict=False,
                                                dynamic_shapes=export_shapes(inputs, dims)), repeats)
    return static, dynamic, timed(lambda: fxopt.trace(model, inputs), repeats)


if __name__ == "__main__":
    main()
