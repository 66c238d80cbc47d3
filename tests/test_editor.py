"""The core GraphEditor: edits are logged and counted, ties are kept, and value edits roll back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxopt
from fxopt.editor import Edit, GraphEditor
from fxopt.errors import EditError


def _gm() -> torch.fx.GraphModule:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))
    model[3].weight = nn.Parameter(torch.randn(2, 4))
    return fxopt.trace(model.eval(), torch.randn(1, 3), frontend="fx")


def test_editor_logs_every_edit_counts_versions_and_calls_on_edit() -> None:
    seen: list[Edit] = []
    gm = _gm()
    editor = GraphEditor(gm, on_edit=seen.append)
    editor.set_tensor("0.weight", torch.zeros(4, 3))
    editor.set_module_attr("0", "out_features", 4)
    assert [(e.action, e.target) for e in editor.edits] == [("set_tensor", "0.weight"), ("set_attr", "0.out_features")]
    assert editor.version == 2 and seen == editor.edits


def test_editor_set_tensor_replaces_every_tied_name_with_one_tensor() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight
    gm = fxopt.trace(model, torch.randn(1, 4))
    editor = GraphEditor(gm)
    editor.set_tensor("1.weight", torch.ones(4, 4))
    assert gm.get_submodule("0").weight is gm.get_submodule("1").weight
    assert torch.equal(gm.get_submodule("0").weight, torch.ones(4, 4)) and "tied: 0.weight" in editor.edits[0].detail


def test_editor_rollback_restores_tensors_attributes_arguments_and_inserted_nodes() -> None:
    gm = _gm()
    x = torch.randn(2, 3)
    before = gm(x)
    weight = gm.get_submodule("0").weight
    relu = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == "1")
    editor = GraphEditor(gm)
    editor.record("note", "kept")
    mark = editor.checkpoint()
    editor.set_tensor("0.weight", torch.zeros(4, 3))
    editor.set_module_attr("0", "out_features", 7)
    bias = editor.add_tensor("extra", torch.ones(4))
    getter = editor.get_attr(bias, before=relu)
    editor.set_args(relu, (getter,))
    editor.rollback(mark)
    assert [e.action for e in editor.edits] == ["note"] and editor.version == 7
    assert gm.get_submodule("0").weight is weight and gm.get_submodule("0").out_features == 4
    assert not hasattr(gm, "extra") and all(n.op != "get_attr" for n in gm.graph.nodes)
    assert torch.equal(gm(x), before)
    with pytest.raises(EditError, match="cannot roll back note kept"):
        editor.rollback(0)
