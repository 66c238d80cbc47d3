"""Models that keep state between calls: tensor attributes ``forward`` reassigns are threaded through the graph."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import fxopt


class StatefulRnn(nn.Module):
    """A vanilla RNN that keeps its hidden state in a plain tensor attribute and reassigns it every call."""

    def __init__(self) -> None:
        super().__init__()
        self.cell, self.out = nn.Linear(8 + 16, 16), nn.Linear(16, 4)
        self.h = torch.zeros(1, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.h = torch.tanh(self.cell(torch.cat([x, self.h], dim=-1)))
        return self.out(self.h)


class Growing(nn.Module):
    """A state that grows every call: no graph can carry it in place."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.history = nn.Linear(4, 4), torch.zeros(0, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        self.history = torch.cat([self.history, y.detach()])
        return y * 2


def test_capture_leaves_the_users_state_untouched(rig) -> None:
    """Symbolic tracing used to leave a Proxy in ``model.h`` ("Cannot access data pointer of Tensor")."""
    model = rig.randomize(StatefulRnn())
    h = model.h
    analysis = fxopt.analyze(model, torch.randn(1, 8))
    assert model.h is h and torch.equal(h, torch.zeros(1, 16))
    assert analysis.gm.meta["fxopt"]["trace"].frontend == "fx"
    assert analysis.gm.get_buffer("h") is not h  # the graph's own copy


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_optimized_stateful_rnn_matches_over_consecutive_calls(rig, compile: bool) -> None:
    model, x = rig.randomize(StatefulRnn()), torch.randn(1, 8)
    reference = copy.deepcopy(model)
    fast = fxopt.optimize(model, x, compile=compile)
    for _ in range(3):
        torch.testing.assert_close(fast(x), reference(x), rtol=1e-4, atol=1e-5)
    assert torch.equal(model.h, torch.zeros(1, 16))  # the user's model did not run
    if compile:
        assert "without freezing: the graph writes its state (h)" in (fxopt.report(fast).lowering_note or "")


def test_pruned_stateful_rnn_runs_and_says_its_state_was_resized(rig) -> None:
    model, x = rig.randomize(StatefulRnn()), torch.randn(1, 8)
    small = fxopt.optimize(model, x, prune=0.5, compile=False)
    assert small.get_buffer("h").shape == (1, 8)
    outs = [small(x) for _ in range(3)]
    assert all(o.shape == (1, 4) for o in outs) and not torch.equal(outs[0], outs[1])  # the state evolves
    assert any("state h was resized by pruning" in w for w in fxopt.report(small).warnings)


def test_state_that_changes_shape_is_reported_and_outputs_still_match(rig) -> None:
    model, x = rig.randomize(Growing()), torch.randn(1, 4)
    fast = fxopt.optimize(model, x, compile=False)
    info = fast.meta["fxopt"]["trace"]
    assert info.dropped_state == ("history",) and "a state that changes shape" in info.fallback_reason
    assert fxopt.report(fast).warnings == (
        "the model keeps history between calls and changes its shape: the optimized model does not keep it "
        "(store state the graph can carry: a tensor of fixed shape)",)
    assert model.history.shape == (0, 4)
    for _ in range(2):
        torch.testing.assert_close(fast(x), model(x))
