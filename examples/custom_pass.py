"""Write, register and run your own pass: remove arithmetic no-ops (``x * 1``, ``x + 0``, ``x / 1``).

The pass is a frozen dataclass with a name; it finds nodes by OpView kind (so ``x * 1.0``, ``torch.mul(x, 1)``
and ``aten.mul.Tensor(x, 1)`` are all seen), edits the graph only through a GraphEditor (every edit is logged),
and records why it left a candidate alone. Registered by name, it works in text pipelines next to fxopt's own.

Run: python examples/custom_pass.py
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.fx as fx
import torch.nn as nn

import fxopt
from fxopt.api import optimize, report
from fxopt.passes import GraphEditor, Pass, PassContext, PassManager, PassResult, register_pass
from fxopt.passes.match import view_of
from fxopt.testing import assert_equivalent

NEUTRAL = {"mul": 1, "div": 1, "add": 0}


@register_pass
@dataclass(frozen=True)
class SimplifyArithPass(Pass):
    """Bypass ``x * 1``, ``x / 1`` and ``x + 0`` when the result has x's shape and dtype (exact)."""

    name: ClassVar[str] = "simplify_arith"
    lossless: ClassVar[bool] = True

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        """Replace every neutral operation by its tensor operand."""
        editor = GraphEditor(gm, ctx, str(self))
        for node in list(gm.graph.nodes):
            view = view_of(node, gm)
            if view is None or view.kind not in NEUTRAL or view.inputs[0] is None:
                continue
            if view.attrs.get("scalar_other") != NEUTRAL[view.kind] or view.attrs.get("alpha", 1) != 1:
                continue
            x = view.inputs[0].node
            out, val = node.meta.get("val"), x.meta.get("val") if x is not None else None
            if x is None or out is None or val is None or out.shape != val.shape or out.dtype != val.dtype:
                editor.skip(self.name, node, "the operation broadcasts or casts its operand")
                continue
            editor.replace_uses(node, x, f"{view.kind} by {NEUTRAL[view.kind]}")
            editor.erase(node)
        return editor.finish()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x) * 1.0 + 0
        mask = (x > 0).long() * 1.0  # long -> float: a real cast, must stay
        return y / 1 + mask


def main() -> None:
    model, x = Net().eval(), torch.randn(4, 2, 8)
    gm = fxopt.trace(model, x)
    run = PassManager("cleanup,simplify_arith,fuse", checked=True).run(gm, (x,))
    result = run.results[1]
    print(result.summary())
    for skip in result.skips:
        print(f"  left {skip.node} alone: {skip.reason}")
    assert result.counts()["erase"] == 3 and len(result.skips) == 1
    assert_equivalent(model, gm, (x,))

    fast = optimize(model, x, passes="cleanup,simplify_arith,fuse", compile=False)  # by name, in optimize
    print(report(fast).to_text())
    assert_equivalent(model, fast, (x,))
    print("ok")


if __name__ == "__main__":
    main()
