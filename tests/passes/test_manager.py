"""PassManager: ordering, hooks, verification after each pass, checked mode, errors naming pass and node."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

from fxopt.errors import PassError
from fxopt.passes import GraphEditor, Pass, PassContext, PassManager, PassResult
from fxopt.passes.hooks import DumpGraphs, Timeline


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()


@dataclass(frozen=True)
class ScaleWeight(Pass):
    """A deliberately wrong 'lossless' pass: scales the first weight."""

    name: ClassVar[str] = "scale_weight"
    factor: float = 2.0

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        editor = GraphEditor(gm, ctx, str(self))
        editor.set_tensor("0.weight", gm.get_parameter("0.weight") * self.factor)
        return editor.finish()


@dataclass(frozen=True)
class BreakShapes(Pass):
    """Replaces the last weight by one of the wrong shape."""

    name: ClassVar[str] = "break_shapes"

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        editor = GraphEditor(gm, ctx, str(self))
        editor.set_tensor("2.weight", torch.randn(2, 3))
        return editor.finish()


@dataclass(frozen=True)
class Boom(Pass):
    name: ClassVar[str] = "boom"

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        raise ValueError("kaboom")


def test_manager_runs_in_order_with_before_and_after_hooks(passes) -> None:
    seen: list[str] = []
    timeline = Timeline()
    manager = PassManager("cleanup,fuse", before=[lambda p, gm, ctx: seen.append(p.name)], after=[timeline])
    run = manager.run(passes.trace(_model(), torch.randn(2, 4)), (torch.randn(2, 4),))
    assert seen == ["cleanup", "fuse"] and [row[0] for row in timeline.rows] == ["cleanup", "fuse"]
    assert run.ctx.previous == ["cleanup", "fuse"]
    assert all(r.metrics["nodes"][0] >= r.metrics["nodes"][1] for r in run.results)


def test_manager_checked_mode_catches_a_wrong_lossless_pass(passes) -> None:
    gm = passes.trace(_model(), torch.randn(2, 4))
    with pytest.raises(PassError, match=r"(?s)lossless pass changed the outputs.*scale_weight.*after cleanup"):
        PassManager(["cleanup", ScaleWeight()], checked=True).run(gm, (torch.randn(2, 4),))


def test_manager_checked_mode_accepts_identity_scale(passes) -> None:
    gm = passes.trace(_model(), torch.randn(2, 4))
    run = PassManager([ScaleWeight(factor=1.0)], checked=True).run(gm, (torch.randn(2, 4),))
    assert run.results[0].metrics["max_abs_error"] == 0.0


def test_manager_checked_mode_without_real_inputs_raises(passes) -> None:
    with pytest.raises(PassError, match="real example inputs"):
        PassManager("cleanup", checked=True).run(passes.trace(_model(), torch.randn(2, 4)))


def test_manager_shape_failure_names_pass_and_node(passes) -> None:
    gm = passes.trace(_model(), torch.randn(2, 4))
    with pytest.raises(PassError, match="shapes no longer propagate") as info:
        PassManager(["cleanup", BreakShapes()]).run(gm, (torch.randn(2, 4),))
    assert info.value.pass_name == "break_shapes" and info.value.previous == ("cleanup",)
    assert info.value.node == "_2"


def test_manager_pass_exception_is_chained_and_reproducer_written(passes, tmp_path) -> None:
    gm = passes.trace(_model(), torch.randn(2, 4))
    with pytest.raises(PassError, match="ValueError: kaboom") as info:
        PassManager(["fuse", Boom()], reproducer_dir=tmp_path).run(gm, (torch.randn(2, 4),))
    assert isinstance(info.value.__cause__, ValueError)
    written = tmp_path / "01_boom"
    assert (written / "graph_before.py").read_text().startswith("\n\n\ndef forward")
    assert "failing: boom" in (written / "pipeline.txt").read_text()


def test_manager_requires_computes_analysis_and_edits_invalidate_it(passes) -> None:
    seen = []

    @dataclass(frozen=True)
    class NeedsViews(Pass):
        name: ClassVar[str] = "needs_views"
        requires: ClassVar[tuple[str, ...]] = ("views",)

        def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
            seen.append(ctx.cached("views"))
            return PassResult(str(self), False)

    gm = passes.trace(_model(), torch.randn(2, 4))
    ctx = PassContext()
    PassManager([NeedsViews(), ScaleWeight(), NeedsViews()]).run(gm, (torch.randn(2, 4),), ctx)
    assert seen == [True, True]
    first = ctx.analysis("views", gm)
    ctx.bump()
    assert ctx.analysis("views", gm) is not first


def test_manager_unknown_analysis_raises_listing_known(passes) -> None:
    with pytest.raises(PassError, match="unknown analysis 'nope'.*views"):
        PassContext().analysis("nope", passes.trace(_model(), torch.randn(2, 4)))


def test_manager_change_made_without_editor_is_marked_changed(passes) -> None:
    @dataclass(frozen=True)
    class Sneaky(Pass):
        name: ClassVar[str] = "sneaky"

        def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
            relu = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == "1")
            relu.replace_all_uses_with(relu.args[0])
            gm.graph.erase_node(relu)
            gm.recompile()
            return PassResult(str(self), False)

    run = PassManager([Sneaky()]).run(passes.trace(_model(), torch.randn(2, 4)), (torch.randn(2, 4),))
    assert run.results[0].changed and "outside the editor" in run.results[0].notes[0]


def test_manager_graph_change_after_lowering_raises(passes) -> None:
    ctx = PassContext(lowered=nn.Identity())
    with pytest.raises(PassError, match="after lowering"):
        PassManager([ScaleWeight()]).run(passes.trace(_model(), torch.randn(2, 4)), (torch.randn(2, 4),), ctx)


def test_dump_graphs_hook_writes_code_per_pass(passes, tmp_path) -> None:
    PassManager("cleanup,fuse", after=[DumpGraphs(tmp_path)]).run(passes.trace(_model(), torch.randn(2, 4)),
                                                                  (torch.randn(2, 4),))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00_cleanup.py", "00_cleanup.txt", "01_fuse.py",
                                                          "01_fuse.txt"]


def test_log_hooks_log_each_pass(passes, caplog) -> None:
    from fxopt.passes.hooks import log_after, log_before

    with caplog.at_level("INFO", logger="fxopt.passes.hooks"):
        PassManager("cleanup", before=[log_before], after=[log_after]).run(
            passes.trace(_model(), torch.randn(2, 4)), (torch.randn(2, 4),))
    messages = [r.getMessage() for r in caplog.records if r.name == "fxopt.passes.hooks"]
    assert messages[0].startswith("running cleanup on") and messages[1].startswith("cleanup: ")
