"""Optimize a ResNet-18 for this CPU, check it is lossless, time it, save it and load it back.

``fxopt.optimize`` traces the model, folds the batch norms into the convs, switches to channels_last and
compiles with inductor (weights frozen and prepacked). The result computes the same outputs (fp32 tolerance)
and carries a report of what each pass did. It is saved as a ``.pt2`` (torch.export) that loads without
torchvision's classes.

Run: python examples/optimize_resnet.py   (about a minute on 2 cores, most of it compiling)
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch
import torchvision

from fxopt.api import optimize, report
from fxopt.serialization import load, save
from fxopt.testing import assert_equivalent


def median_ms(module: torch.nn.Module, x: torch.Tensor, runs: int = 10) -> float:
    """Median wall time of ``runs`` forward passes, after two warm-up calls."""
    with torch.no_grad():
        module(x), module(x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 112, 112)

    fast = optimize(model, x, target="cpu")
    r = report(fast)
    print(r.to_text())
    assert_equivalent(model, fast, (x,), rtol=1e-4, atol=1e-5)
    assert r.result("fuse").metrics["fired"] == 20  # every BatchNorm folded into its conv

    eager_ms, fast_ms = median_ms(model, x), median_ms(fast, x)
    print(f"eager {eager_ms:.1f} ms, fxopt {fast_ms:.1f} ms ({fast_ms / eager_ms:.2f}x; "
          f"load average {os.getloadavg()[0]:.1f}, lowered: {r.lowered})")

    out = Path(os.environ.get("FXOPT_EXAMPLE_OUT", ".")) / "resnet18_fxopt.pt2"
    save(fast, out)
    again = load(out)
    assert_equivalent(model, again, (x,), rtol=1e-4, atol=1e-5)
    print(f"saved to {out} and loaded back as {type(again).__name__}: outputs match")


if __name__ == "__main__":
    main()
