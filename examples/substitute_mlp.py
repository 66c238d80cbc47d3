"""Replace an MLP's linears by structured layers fitted to their weights: each structure, then ``auto``.

Runs in about ten seconds on a laptop CPU, with synthetic weights (nothing is downloaded):

    python examples/substitute_mlp.py

The MLP is a transformer block's (256 -> 1024 -> 256, GELU between), with weights whose singular values decay like a
trained layer's (``sigma_k ~ k^-0.75``) and inputs that are correlated across features, as activations are.

1. Each structure keeps a quarter of the two layers' parameters (``params=0.25``, no error budget, no speed gate);
   the table shows the output error on held-out inputs, with and without calibration data (activation-aware fits).
2. ``fxopt.optimize(substitute="auto", calibration=...)``: every layer gets the fastest structure whose output error
   on the calibration batch is within 10%, where the cpu target's roofline predicts it is faster than the dense
   layer; the report lists each replaced layer.
3. The result saves and loads without this script, and its analysis is exact: pruning it later removes channels
   within the structured layers' blocks (the zero-invariance oracle checks it).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

import fxopt
from fxopt.passes import PassContext, PassManager
from fxopt.targets.registry import get_target
from fxopt.testing import check_zero_invariance

torch.manual_seed(0)
D, H, TOKENS = 256, 1024, 128


def decaying(m: int, n: int) -> torch.Tensor:
    """A random m x n weight whose singular values decay as k^-0.75 (a trained layer's spectrum, roughly)."""
    u, _ = torch.linalg.qr(torch.randn(m, min(m, n)))
    v, _ = torch.linalg.qr(torch.randn(n, min(m, n)))
    sigma = torch.arange(1, min(m, n) + 1, dtype=torch.float32) ** -0.75
    return (u * sigma) @ v.T * (m * n) ** 0.25


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(D, H), nn.GELU(), nn.Linear(H, D)
        with torch.no_grad():
            self.fc1.weight.copy_(decaying(H, D))
            self.fc2.weight.copy_(decaying(D, H))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def inputs(rows: int) -> torch.Tensor:
    """Inputs correlated across features (a random mixing of independent sources)."""
    return torch.randn(rows, D) @ MIXING


MIXING = torch.randn(D, D) / D**0.5 + torch.eye(D)
model = MLP().eval()
x, calibration, held_out = inputs(TOKENS), inputs(512), inputs(512)


def weights(module: nn.Module) -> int:
    """Parameters other than biases (the substitution copies biases unchanged)."""
    return sum(p.numel() for name, p in module.named_parameters() if not name.endswith("bias"))


def error(module: nn.Module) -> float:
    with torch.no_grad():
        ref = model(held_out)
        return float((module(held_out) - ref).norm() / ref.norm())


# 1. every structure at a quarter of the parameters
print(f"{'structure':10} {'params kept':>12} {'error':>8} {'error (calibrated)':>19}  layers")
for structure in ("lowrank", "blockdiag", "monarch", "btt", "blast"):
    spec = f"substitute(structure='{structure}',max_error=None,params=0.25,blocks=(4,),speed_gate=False)"
    errors, kept, chosen = [], 0.0, ""
    for data in (None, [calibration]):
        gm = fxopt.trace(model, x)
        result = PassManager(spec).run(gm, (x,), PassContext(target=get_target("cpu"), calibration=data)).results[0]
        kept = weights(gm) / weights(model)
        chosen = ", ".join(r["structure"] for r in result.metrics["substituted"])
        errors.append(error(gm))
    print(f"{structure:10} {kept:12.3f} {errors[0]:8.3f} {errors[1]:19.3f}  {chosen}")
    assert kept <= 0.25 and errors[1] <= errors[0] + 1e-3  # calibration never hurts on data like it

# 2. auto: the fastest structure per layer within a 10% output-error budget, where the target says it is faster
fast = fxopt.optimize(model, x, target="cpu", substitute={"structure": "auto", "max_error": 0.1},
                      calibration=[calibration], compile=False)
print()
print(fxopt.report(fast).to_text())
rows = fxopt.report(fast).result("substitute").metrics.get("substituted", ())
assert rows and all(r["error"] <= 0.1 and r["time_us"][1] < r["time_us"][0] for r in rows)
print(f"\nheld-out output error of the optimized model: {error(fast):.3f}")

# 3. save, load, analyse
path = Path(os.environ.get("FXOPT_EXAMPLE_OUT", tempfile.mkdtemp())) / "mlp_structured.pt2"
again = fxopt.load(fxopt.save(fast, path))
with torch.no_grad():
    torch.testing.assert_close(again(held_out[:TOKENS]), fast(held_out[:TOKENS]))
analysis = fxopt.analyze(fast, x)
checks = check_zero_invariance(analysis)
print(f"saved to {path.name}; {len(analysis.groups)} prunable groups, all zero-invariant: "
      f"{all(c.passed for c in checks)}")
assert all(c.passed for c in checks)
