"""Helpers for pass tests: trace a private copy, run a pipeline in checked mode, list op kinds."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import fxopt
from fxopt.passes import PassManager, PassResult
from fxopt.passes.match import view_of


class PassRig:
    """Trace, run passes, and describe graphs compactly."""

    @staticmethod
    def trace(model: nn.Module, *inputs: torch.Tensor, frontend: str = "fx") -> fx.GraphModule:
        """A graph module of a private copy of ``model`` (passes edit in place)."""
        return fxopt.trace(copy.deepcopy(model), tuple(inputs), frontend=frontend)  # type: ignore[arg-type]

    def run(self, spec: str, model: nn.Module, *inputs: torch.Tensor, frontend: str = "fx",
            checked: bool = True) -> tuple[fx.GraphModule, PassResult]:
        """Run ``spec`` on a traced copy (checked: outputs compared after each lossless pass); last result."""
        gm = self.trace(model, *inputs, frontend=frontend)
        run = PassManager(spec, checked=checked).run(gm, inputs)
        return gm, run.results[-1]

    @staticmethod
    def kinds(gm: fx.GraphModule, skip: Sequence[str] = ("getitem",)) -> list[str]:
        """OpView kinds of the call nodes, in order (``getitem`` left out)."""
        out = []
        for n in gm.graph.nodes:
            view = view_of(n, gm)
            if view is not None and view.kind not in skip:
                out.append(view.kind)
        return out


@pytest.fixture
def passes() -> PassRig:
    """The pass-testing helpers."""
    return PassRig()
