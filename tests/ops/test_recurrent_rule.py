"""RNN, LSTM and GRU: the hidden size is one exact group over gates, layers, directions, outputs and states."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import fxopt


class Recurrent(nn.Module):
    """A recurrent layer read by a Linear; the module makes its initial state, or the model makes it with zeros."""

    def __init__(self, cls: type[nn.RNNBase], bidirectional: bool, layers: int, zero_state: bool = False) -> None:
        super().__init__()
        self.rnn = cls(6, 8, num_layers=layers, bidirectional=bidirectional, batch_first=True)
        self.fc = nn.Linear(8 * (2 if bidirectional else 1), 3)
        self.zero_state, self.is_lstm = zero_state, cls is nn.LSTM

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.zero_state:
            h = torch.zeros((2 if self.rnn.bidirectional else 1) * self.rnn.num_layers, x.shape[0], 8)
            out, _ = self.rnn(x, (h, h) if self.is_lstm else h)
        else:
            out, _ = self.rnn(x)
        return self.fc(out)


class GivenState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.fc = nn.GRU(6, 8, batch_first=True), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(x, h)[0])


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU], ids=lambda c: c.__name__)
def test_recurrent_hidden_size_is_one_exact_group(rig, cls, bidirectional, layers):
    model = Recurrent(cls, bidirectional, layers)
    a = rig.analyze(model, torch.randn(2, 5, 6))
    assert a.barriers == []
    [group] = a.groups
    assert group.size == 8 and group.exact
    members = rig.members(group)
    gates = {nn.RNN: 1, nn.LSTM: 4, nn.GRU: 3}[cls]
    assert ("rnn.weight_hh_l0", 0, "p") in members and ("rnn.weight_hh_l0", 1, "c") in members
    assert ("fc.weight", 1, "c") in members
    if layers == 2:
        assert ("rnn.weight_ih_l1", 1, "c") in members
    assert all(e < 1e-5 for e in rig.errors(a).values())
    small = rig.prune(a, {group: [0, 3, 5]})
    shapes = rig.shapes(small)
    assert shapes["rnn.weight_ih_l0"] == (gates * 5, 6) and shapes["rnn.weight_hh_l0"] == (gates * 5, 5)
    directions = 2 if bidirectional else 1
    assert shapes["fc.weight"] == (3, 5 * directions)
    if layers == 2:
        assert shapes["rnn.weight_ih_l1"] == (gates * 5, 5 * directions)
    rnn = small.get_submodule("rnn")
    assert (rnn.hidden_size, rnn.input_size) == (5, 6)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU], ids=lambda c: c.__name__)
def test_recurrent_zero_state_made_in_the_model_joins_the_group(rig, cls):
    a = rig.analyze(Recurrent(cls, True, 2, zero_state=True), torch.randn(2, 5, 6))
    [group] = a.groups
    assert group.exact and all(e < 1e-5 for e in rig.errors(a).values())
    rig.prune(a, {group: [1, 2]})


def test_recurrent_state_given_as_input_freezes_the_hidden_size(rig):
    a = rig.analyze(GivenState(), torch.randn(2, 5, 6), torch.randn(1, 2, 8))
    assert a.groups == [] and a.barriers == []
    assert [f.reason for f in a.frozen if f.size == 8] == ["dim of graph input h"]


def test_recurrent_nonzero_state_made_in_the_model_is_not_exact(rig):
    class Ones(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn, self.fc = nn.GRU(6, 8, batch_first=True), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.rnn(x, torch.ones(1, x.shape[0], 8))[0])

    a = rig.analyze(Ones(), torch.randn(2, 5, 6))
    [group] = a.groups
    assert not group.exact


def test_lstm_with_proj_size_is_a_barrier_with_the_reason(rig):
    class Projected(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn, self.fc = nn.LSTM(6, 8, proj_size=4, batch_first=True), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.rnn(x)[0])

    a = rig.analyze(Projected(), torch.randn(2, 5, 6))
    assert [(b.node.name, b.reason) for b in a.barriers] == [("rnn", "an LSTM with proj_size projects its hidden "
                                                                      "state")]


def test_lstm_prunes_through_prune_at_half(rig):
    model, x = rig.randomize(Recurrent(nn.LSTM, True, 2)), torch.randn(2, 5, 6)
    small, report = fxopt.prune(model, (x,), ratio=0.5)
    assert report.params_after < 0.5 * report.params_before
    assert small.get_submodule("rnn").hidden_size == 4
    assert small(x).shape == model(x).shape


class UnrolledCell(nn.Module):
    def __init__(self, cls: type[nn.RNNCellBase]) -> None:
        super().__init__()
        self.cell, self.fc, self.is_lstm = cls(6, 8), nn.Linear(8, 3), cls is nn.LSTMCell

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.size(0), 8)
        state = (h, torch.zeros(x.size(0), 8)) if self.is_lstm else h
        for t in range(x.size(1)):
            state = self.cell(x[:, t], state)
        return self.fc(state[0] if self.is_lstm else state)


@pytest.mark.parametrize("cls", [nn.RNNCell, nn.LSTMCell, nn.GRUCell], ids=lambda c: c.__name__)
def test_recurrent_cells_unrolled_share_one_exact_hidden_group(rig, cls):
    a = rig.analyze(UnrolledCell(cls), torch.randn(2, 4, 6))
    assert a.barriers == [] and a.gm.meta["fxopt"]["trace"].frontend == "fx"
    [group] = a.groups
    assert group.size == 8 and group.exact and all(e < 1e-5 for e in rig.errors(a).values())
    small = rig.prune(a, {group: [2, 7]})
    gates = {nn.RNNCell: 1, nn.LSTMCell: 4, nn.GRUCell: 3}[cls]
    assert rig.shapes(small)["cell.weight_hh"] == (gates * 6, 6)
    assert small.get_submodule("cell").hidden_size == 6
