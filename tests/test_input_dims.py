"""Dynamic input dims: which dims vary, inputs at other sizes, static dims named by their node, and the checks
(assert_equivalent, zero-invariance, checked mode, cleanup) at sizes other than the traced one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import fxopt
from fxopt.equivalence import run
from fxopt.errors import PassError
from fxopt.input_dims import (
    InputDim,
    dynamic_dims,
    export_shapes,
    other_sizes,
    resized,
    size_sets,
    spatial_dims,
    widened,
)
from fxopt.passes import GraphEditor, Pass, PassContext, PassManager, PassResult
from fxopt.testing import assert_equivalent, check_zero_invariance

BATCH, SEQ = InputDim(0, 0, "batch"), InputDim(0, 1, "sequence")


class Heads(nn.Module):
    """Token embedding, a view into 2 heads whose batch and length come from the input, and a projection."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.q, self.out = nn.Embedding(20, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, ids):
        b, s = ids.shape
        h = F.relu(self.q(self.emb(ids))).view(b, s, 2, 4).softmax(-1)
        return self.out(h.reshape(b, s, 8))


class Flat(nn.Module):
    """A flatten into a Linear: the image size is fixed by the Linear's input features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))


class Positions(nn.Module):
    """A position table of fixed length added to the token embeddings: the sequence length is fixed."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.pos = nn.Embedding(10, 4), nn.Parameter(torch.randn(1, 6, 4))

    def forward(self, ids):
        return self.emb(ids) + self.pos


class Masked(nn.Module):
    """A (1, 4) row expanded to the batch of ``x`` and concatenated: the expand is a no-op at batch 1 only."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("row", torch.tensor([[1.0, 0.0, 1.0, 2.0]]))
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.cat([x, self.row.expand(x.shape[0], -1)], dim=1))


def test_dynamic_dims_batch_of_every_tensor_and_sequence_of_token_inputs():
    ids, mask, image = torch.zeros(1, 8, dtype=torch.long), torch.ones(1, 8, dtype=torch.bool), torch.randn(1, 3, 4, 4)
    assert dynamic_dims((ids, mask, image, 3)) == (
        InputDim(0, 0, "batch"), InputDim(0, 1, "sequence"), InputDim(1, 0, "batch"), InputDim(1, 1, "sequence"),
        InputDim(2, 0, "batch"))
    assert spatial_dims((ids, image)) == (InputDim(1, 2, "spatial"), InputDim(1, 3, "spatial"))
    assert dynamic_dims((torch.tensor(3.0),)) == ()


def test_dynamic_dims_leave_an_input_broadcast_over_the_batch_static():
    q, bias = torch.randn(3, 2, 5, 4), torch.randn(1, 2, 5, 5)  # a bias of leading size 1 added to (3, 2, 5, 5)
    assert dynamic_dims((q, q, bias)) == (InputDim(0, 0, "batch"), InputDim(1, 0, "batch"))


def test_resized_tiles_and_cuts_the_example_values():
    ids = torch.tensor([[3, 5, 7]])
    longer = resized((ids,), {BATCH: 2, SEQ: 5})[0]
    assert longer.tolist() == [[3, 5, 7, 3, 5], [3, 5, 7, 3, 5]]
    assert resized((ids,), {SEQ: 2})[0].tolist() == [[3, 5]]
    assert widened((ids,), dynamic_dims((ids,)))[0].shape == (2, 3)


def test_export_shapes_mark_the_dynamic_dims_auto():
    ids, x = torch.zeros(1, 8, dtype=torch.long), torch.randn(1, 4)
    shapes = export_shapes((ids, x, None), dynamic_dims((ids, x)))
    auto = torch.export.Dim.AUTO
    assert shapes == ({0: auto, 1: auto}, {0: auto}, None)


def test_other_sizes_change_every_dynamic_dim_and_avoid_one():
    ids = torch.zeros(1, 8, dtype=torch.long)
    sets = other_sizes((ids,), dynamic_dims((ids,)))
    assert [tuple(s[0].shape) for s in sets] == [(2, 4), (3, 11)]
    assert other_sizes((ids,), ()) == []


def test_size_sets_by_kind_and_unknown_kind_names_the_known_ones():
    ids = torch.zeros(1, 8, dtype=torch.long)
    dims = dynamic_dims((ids,))
    assert [tuple(s[0].shape) for s in size_sets((ids,), dims, [{"batch": 4}, {"sequence": 64}])] == [(4, 8), (1, 64)]
    with pytest.raises(ValueError, match="no dynamic spatial dim.*batch, sequence"):
        size_sets((ids,), dims, [{"spatial": 4}])


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_trace_keeps_batch_and_sequence_dynamic_and_runs_at_other_sizes(frontend):
    model, ids = Heads().eval(), torch.randint(0, 20, (1, 5))
    gm = fxopt.trace(model, (ids,), frontend=frontend)
    info = gm.meta["fxopt"]["trace"]
    assert info.dynamic == (BATCH, SEQ) and info.static == ()
    assert_equivalent(model, gm, (ids,), sizes=[{"batch": 4, "sequence": 64}, {"sequence": 1}])


def test_static_dims_name_the_linear_that_fixes_the_image_size():
    gm = fxopt.trace(Flat(), torch.randn(1, 3, 6, 6))
    info = gm.meta["fxopt"]["trace"]
    assert info.dynamic == (BATCH,)
    assert [(s.dim.dim, s.node) for s in info.static] == [(2, "fc"), (3, "fc")]
    assert str(info.static[0]).startswith("input 0 dim 2 (spatial) because fc (Linear) fails at another size: ")


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_static_dims_name_the_position_table_add(frontend):
    gm = fxopt.trace(Positions(), torch.zeros(1, 6, dtype=torch.long), frontend=frontend)
    info = gm.meta["fxopt"]["trace"]
    assert info.dynamic == (BATCH,)
    assert [(s.dim, s.node) for s in info.static] == [(SEQ, "add")]


def test_prune_report_lists_the_static_dims():
    _, report = fxopt.prune(Flat(), torch.randn(1, 3, 6, 6), ratio=0.5)
    assert "dims kept static: input 0 dim 2 (spatial) because fc (Linear)" in report.to_text()


def test_assert_equivalent_at_other_sizes_catches_a_baked_batch():
    model, ids = Heads().eval(), torch.randint(0, 20, (1, 5))
    gm = fxopt.trace(model, (ids,), frontend="export")
    view = next(n for n in gm.graph.nodes if n.op == "call_function" and "view" in str(n.target))
    view.args = (view.args[0], [1, *view.args[1][1:]])  # the example's batch size written as a constant
    gm.recompile()
    assert_equivalent(model, gm, (ids,))
    with pytest.raises(AssertionError, match=r"at input shapes \[\(2, 2\)\]"):
        assert_equivalent(model, gm, (ids,), sizes="other")


def test_zero_invariance_at_other_sizes():
    results = check_zero_invariance(Heads().eval(), (torch.randint(0, 20, (1, 5)),), sizes="other")
    assert results and all(r.passed and r.error is None for r in results)


@dataclass(frozen=True)
class BakeBatch(Pass):
    """A deliberately wrong pass: writes the example's batch size into the first view."""

    name: ClassVar[str] = "bake_batch"
    lossless: ClassVar[bool] = True

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        editor = GraphEditor(gm, ctx, str(self))
        view = next(n for n in gm.graph.nodes if n.op == "call_method" and n.target == "view")
        editor.set_args(view, (view.args[0], 1, *view.args[2:]))
        return editor.finish()


def test_checked_mode_runs_other_sizes_and_catches_a_baked_batch():
    ids = torch.randint(0, 20, (1, 5))
    gm = fxopt.trace(Heads().eval(), (ids,), frontend="fx")
    with pytest.raises(PassError, match=r"bake_batch.*at input shapes \[\(2, 2\)\]|at input shapes \[\(2, 2\)\]"):
        PassManager([BakeBatch()], checked=True).run(gm, (ids,))


def test_cleanup_keeps_an_expand_sized_by_another_tensor():
    model, x = Masked().eval(), torch.randn(1, 4)
    gm = fxopt.trace(model, (x,), frontend="export")
    PassManager("cleanup", checked=True).run(gm, (x,))
    assert any(n.target is torch.ops.aten.expand.default for n in gm.graph.nodes)
    assert_equivalent(model, gm, (x,), sizes=[{"batch": 3}])


def test_prune_keeps_a_size_read_of_a_pruned_tensor_in_a_view():
    model, ids = Heads().eval(), torch.randint(0, 20, (1, 5))
    gm = fxopt.trace(model, (ids,), frontend="export")
    q = next(n for n in gm.graph.nodes if n.target is torch.ops.aten.linear.default)
    view = next(n for n in gm.graph.nodes if n.target is torch.ops.aten.view.default)
    with gm.graph.inserting_before(view):
        batch = gm.graph.call_function(torch.ops.aten.sym_size.int, (q, 0))  # the size read of a pruned tensor
    batch.meta["val"] = 1
    view.args = (view.args[0], [batch, *view.args[1][1:]])
    gm.recompile()
    pruned, report = fxopt.prune(gm, (ids,), ratio=0.5)
    assert report.pruned
    view = next(n for n in pruned.graph.nodes if n.target is torch.ops.aten.view.default)
    assert isinstance(view.args[1][0], fx.Node)  # still read at run time, not the example's 1
    assert [t.shape for t in run(pruned, (torch.randint(0, 20, (3, 5)),))] == [(3, 5, 3)]


def test_optimize_report_lists_the_static_dims_and_checked_mode_runs_other_batches():
    model, x = Flat().eval(), torch.randn(1, 3, 6, 6)
    out = fxopt.optimize(model, x, compile=False, checked=True)
    assert "dims kept static: input 0 dim 2 (spatial) because fc (Linear)" in fxopt.report(out).to_text()
    assert_equivalent(model, out, (x,), sizes=[{"batch": 4}])
