"""The declarative matcher: one-node Replacements with checks, and the round limit of run_patterns."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.fx as fx
import torch.nn as nn

from fxopt.ops.view import OpView
from fxopt.passes import PassManager
from fxopt.passes.base import PASSES, Pass, PassContext, PassResult
from fxopt.passes.editor import GraphEditor
from fxopt.passes.match import Replacement, run_patterns
from fxopt.testing import assert_equivalent


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.act, self.b, self.keep = nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.keep(torch.relu(self.b(self.act(self.a(x)))))


def _not_keep(view: OpView, editor: GraphEditor) -> str | None:
    return "the final activation stays a ReLU" if view.node.target == "keep" else None


RELU_AS_THRESHOLD = Replacement("relu_threshold", frozenset({nn.ReLU, torch.relu}),
                                lambda view, editor: nn.Threshold(0.0, 0.0), (_not_keep,))


def _run(rules: list[Replacement], net: nn.Module, max_rounds: int = 16) -> tuple[fx.GraphModule, PassResult]:
    @dataclass(frozen=True)
    class SwapPass(Pass):
        name: ClassVar[str] = "swap"

        def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
            return run_patterns(gm, ctx, str(self), rules, max_rounds=max_rounds)

    x = torch.randn(3, 4)
    gm = fx.symbolic_trace(copy.deepcopy(net))
    with PASSES.scoped():
        PASSES.register(SwapPass)
        result = PassManager("swap", checked=True).run(gm, (x,)).results[0]
    return gm, result


def test_replacement_swaps_modules_and_functions_and_reports_the_filtered_one() -> None:
    net = Net().eval()
    gm, result = _run([RELU_AS_THRESHOLD], net)
    assert isinstance(gm.get_submodule("act"), nn.Threshold) and isinstance(gm.get_submodule("keep"), nn.ReLU)
    assert [n.op for n in gm.graph.nodes if "relu" in n.name] == ["call_module"]  # torch.relu became a module call
    assert result.metrics["fired"] == 2 and not result.notes
    assert [(s.rule, s.node, s.reason) for s in result.skips] == [
        ("relu_threshold", "keep", "the final activation stays a ReLU")]
    x = torch.randn(5, 4)
    assert_equivalent(net, gm, (x,))  # the pass kept outputs (checked mode too)


def test_replacement_firing_on_its_own_output_stops_at_the_round_limit_and_says_so() -> None:
    again = Replacement("relu_again", frozenset({nn.ReLU}), lambda view, editor: nn.ReLU())
    gm, result = _run([again], Net().eval(), max_rounds=3)
    assert result.metrics["fired"] == 3 * 2  # two ReLU modules, three rounds
    assert len(result.notes) == 1 and result.notes[0].startswith("stopped after 3 rounds")
