"""GraphEditor: logged edits, tensors keep their kind, leftovers are removed, tied tensors are seen."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from fxopt.errors import EditError
from fxopt.passes import GraphEditor, PassContext


def _gm(passes, frontend: str = "fx"):  # type: ignore[no-untyped-def]
    return passes.trace(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), torch.randn(1, 3), frontend=frontend)


def test_editor_set_tensor_keeps_parameter_and_requires_grad_and_bumps_version(passes) -> None:
    gm, ctx = _gm(passes), PassContext()
    gm.get_parameter("0.weight").requires_grad_(False)
    editor = GraphEditor(gm, ctx, "t")
    editor.set_tensor("0.weight", torch.zeros(4, 3))
    new = gm.get_parameter("0.weight")
    assert isinstance(new, nn.Parameter) and not new.requires_grad and ctx.version == 1
    assert [(e.action, e.target) for e in editor.edits] == [("set_tensor", "0.weight")]


def test_editor_finish_drops_get_attrs_and_tensors_its_edits_left_unused(passes) -> None:
    gm = _gm(passes, frontend="export")
    editor = GraphEditor(gm, PassContext(), "t")
    second = next(n for n in gm.graph.nodes if n.op == "call_function" and n.name == "linear_1")
    first = second.args[0]
    editor.set_input(second, first, first.args[0])
    editor.set_tensor("1.weight", torch.randn(2, 3))
    editor.erase(first)
    result = editor.finish()
    assert sorted(dict(gm.named_parameters())) == ["1.bias", "1.weight"] and result.changed
    assert ("drop_tensor", "0.weight") in [(e.action, e.target) for e in result.edits]
    assert gm(torch.randn(1, 3)).shape == (1, 2)


def test_editor_erase_node_with_users_raises(passes) -> None:
    gm = _gm(passes)
    editor = GraphEditor(gm, PassContext(), "t")
    with pytest.raises(EditError, match="still used"):
        editor.erase(next(n for n in gm.graph.nodes if n.op == "call_module"))


def test_editor_readers_include_tied_aliases(passes) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight
    gm = passes.trace(model, torch.randn(1, 4))
    editor = GraphEditor(gm, PassContext(), "t")
    assert sorted(editor.aliases("0.weight")) == ["0.weight", "1.weight"]
    assert [n.target for n in editor.readers("0.weight")] == ["0", "1"]


def test_editor_add_tensor_names_are_unique_under_owner(passes) -> None:
    gm = _gm(passes)
    editor = GraphEditor(gm, PassContext(), "t")
    first = editor.add_tensor("bias", torch.zeros(4), owner="0")
    second = editor.add_tensor("extra", torch.zeros(1), parameter=False)
    assert first == "0.bias_1" and second == "extra" and "extra" in dict(gm.named_buffers())
