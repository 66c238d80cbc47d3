"""PassManager: run an explicit pipeline of passes, verifying the graph after each one.

After every pass the manager lints the graph (fx's lint and fxopt's) and, when the pass changed it, recompiles it
and re-propagates shapes with the example inputs. In checked mode it also runs the module before and after each
lossless pass and compares the outputs, at the example's sizes and, when the graph was captured with dynamic batch
or sequence dims, at two other sizes (a pass that bakes the example's sizes into the graph fails there). A
failure raises ``PassError`` naming the pass, the passes before it and, when known, the node; with
``reproducer_dir`` the graph before the failing pass is written there.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx

from fxopt.equivalence import compare, tensors_of
from fxopt.errors import PassError
from fxopt.input_dims import captured_dims, other_sizes
from fxopt.passes.base import PASSES, Pass, PassContext, PassRegistry, PassResult
from fxopt.passes.spec import format_pipeline, parse_pipeline
from fxopt.passes.verify import check_outputs, fxopt_lint, outputs_of, repropagate, shape_inputs

log = logging.getLogger(__name__)

BeforeHook = Callable[[Pass, fx.GraphModule, PassContext], None]
AfterHook = Callable[[Pass, fx.GraphModule, PassContext, PassResult], None]


@dataclass
class PipelineRun:
    """The outcome of ``PassManager.run``: the rewritten graph module, each pass's result and the context."""

    gm: fx.GraphModule
    results: list[PassResult]
    ctx: PassContext

    @property
    def module(self) -> torch.nn.Module:
        """The module to use: the lowered one when a lowering pass succeeded, else the graph module."""
        return self.ctx.module(self.gm)


Checked = list[tuple[Sequence[Any], list[torch.Tensor]]]
"""Checked mode's input sets, each with the outputs of the graph as the last pass left it."""


def _as_tuple(inputs: Any) -> tuple[Any, ...]:
    if inputs is None:
        return ()
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _real(inputs: Sequence[Any]) -> bool:
    return bool(inputs) and all(not isinstance(x, torch.Tensor) or x.device.type != "meta" for x in inputs)


def _count_params(gm: torch.nn.Module) -> int:
    return sum(p.numel() for p in gm.parameters())


class PassManager:
    """Runs a pipeline of passes on a GraphModule, in place.

    Args:
        pipeline: pass objects, spec strings, or one spec string (``"cleanup,fuse,lower"``).
        checked: compare each lossless pass's outputs with its input's (needs real example inputs).
        verify: lint and re-propagate shapes after every pass (on by default; turn off only to debug).
        before: hooks called as ``hook(pass, gm, ctx)`` before each pass.
        after: hooks called as ``hook(pass, gm, ctx, result)`` after each pass.
        reproducer_dir: where to write the graph before a failing pass, the pipeline and the error.
        registry: the pass registry spec names are looked up in.

    Example:
        >>> run = fxopt.PassManager("cleanup,fuse", checked=True).run(gm, (x,))
        >>> print([r.summary() for r in run.results])
    """

    def __init__(self, pipeline: str | Sequence[Pass | str], *, checked: bool = False, verify: bool = True,
                 before: Sequence[BeforeHook] = (), after: Sequence[AfterHook] = (),
                 reproducer_dir: str | Path | None = None, registry: PassRegistry = PASSES) -> None:
        self.passes = parse_pipeline(pipeline, registry)
        self.checked = checked
        self.verify = verify
        self.before = list(before)
        self.after = list(after)
        self.reproducer_dir = Path(reproducer_dir) if reproducer_dir is not None else None

    def __str__(self) -> str:
        return format_pipeline(self.passes)

    def run(self, gm: fx.GraphModule, example_inputs: Any = None, ctx: PassContext | None = None) -> PipelineRun:
        """Run every pass on ``gm`` (modified in place) and return the results.

        Args:
            gm: a graph module with ``node.meta["val"]`` filled (``fxopt.trace`` output).
            example_inputs: inputs for shape propagation and checked mode; the context's are used when omitted.
            ctx: a context to share with the passes (a fresh one by default).

        Raises:
            PassError: a pass failed, broke the graph, or (checked mode) changed a lossless pass's outputs.
        """
        ctx = ctx if ctx is not None else PassContext()
        if example_inputs is not None:
            ctx.example_inputs = _as_tuple(example_inputs)
        if self.checked and not _real(ctx.example_inputs):
            raise PassError("checked mode needs real example inputs: pass example_inputs to run()")
        inputs = shape_inputs(gm, ctx.example_inputs)
        reference = None
        if self.checked:
            sets = [ctx.example_inputs, *other_sizes(ctx.example_inputs, captured_dims(gm, ctx.example_inputs))]
            reference = [(s, outputs_of(ctx.module(gm), s)) for s in sets]
        results: list[PassResult] = []
        for p in self.passes:
            result, reference = self._run_one(p, gm, ctx, inputs, reference)
            results.append(result)
        return PipelineRun(gm, results, ctx)

    def _run_one(self, p: Pass, gm: fx.GraphModule, ctx: PassContext, inputs: list[Any],
                 reference: Checked | None) -> tuple[PassResult, Checked | None]:
        name = str(p)
        previous = tuple(ctx.previous)
        for hook in self.before:
            hook(p, gm, ctx)
        code_before = gm.code
        lowered_before = ctx.lowered
        nodes_before, params_before = len(gm.graph.nodes), _count_params(gm)
        start = time.perf_counter()
        try:
            for req in p.requires:
                ctx.analysis(req, gm)
            result = p.run(gm, ctx)
        except PassError as exc:
            self._reproduce(p, code_before, previous, exc)
            if exc.pass_name is None:
                raise PassError(str(exc), name, previous, exc.node) from exc
            raise
        except Exception as exc:  # a pass's own failure: report it with the pipeline position, keep the cause
            self._reproduce(p, code_before, previous, exc)
            raise PassError(f"{type(exc).__name__}: {exc}", name, previous) from exc
        if not isinstance(result, PassResult):
            raise PassError(f"run() returned {type(result).__name__}, not a PassResult", name, previous)
        changed = result.changed or gm.code != code_before
        if changed and not result.changed:
            ctx.bump()
            result = result.replace(changed=True, notes=result.notes + ("graph changed outside the editor",))
        if changed and lowered_before is not None:
            raise PassError("the graph changed after lowering; put the lowering pass last", name, previous)
        if self.verify:
            self._verify(gm, inputs, name, previous, code_before, p, propagate=changed)
        metrics: dict[str, Any] = {"nodes": (nodes_before, len(gm.graph.nodes)),
                                   "params": (params_before, _count_params(gm))}
        if reference is not None:
            reference, figure = self._check(p, gm, ctx, reference, name, previous, code_before)
            metrics["max_abs_error"] = figure
        result = result.replace(pass_name=name, duration_s=time.perf_counter() - start, metrics=metrics)
        for after in self.after:
            after(p, gm, ctx, result)
        ctx.previous.append(name)
        log.info("%s (%.2fs)", result.summary(), result.duration_s)
        return result, reference

    def _verify(self, gm: fx.GraphModule, inputs: list[Any], name: str, previous: tuple[str, ...],
                code_before: str, p: Pass, propagate: bool = True) -> None:
        try:
            gm.graph.lint()
        except Exception as exc:  # fx raises RuntimeError/AssertionError variants; all mean a broken graph
            self._reproduce(p, code_before, previous, exc)
            raise PassError(f"graph lint failed: {exc}", name, previous) from exc
        if propagate:
            gm.recompile()  # only when changed: a new forward() would make a compiled wrapper recompile
        problems = fxopt_lint(gm)
        if problems:
            node, message = problems[0]
            raise PassError(f"fxopt lint: {message} ({len(problems)} problem(s))", name, previous, node)
        if not propagate:
            return  # an unchanged graph keeps its shapes
        try:
            repropagate(gm, inputs)
        except PassError as exc:
            self._reproduce(p, code_before, previous, exc)
            raise PassError(str(exc), name, previous, exc.node) from exc

    def _check(self, p: Pass, gm: fx.GraphModule, ctx: PassContext, reference: Checked, name: str,
               previous: tuple[str, ...], code_before: str) -> tuple[Checked, float]:
        """Run the module at each input set; a lossless pass must keep the outputs, any pass must keep it running
        at the other sizes. Returns the new outputs and the largest error at the example's sizes."""
        checked: Checked = []
        figure = 0.0
        for k, (inputs, before) in enumerate(reference):
            shapes = "" if k == 0 else f" at input shapes {[tuple(x.shape) for x in tensors_of(inputs)]}"
            try:
                outputs = outputs_of(ctx.module(gm), inputs)
                diff = check_outputs(before, outputs) if p.lossless else compare(before, outputs)
            except Exception as exc:  # a failed run at other sizes means the pass fixed a dynamic size
                self._reproduce(p, code_before, previous, exc)
                changed = isinstance(exc, AssertionError)
                what = ("lossless pass changed the outputs" if changed and p.lossless
                        else "the pass changed the outputs' shapes" if changed else "the graph fails")
                raise PassError(f"{what}{shapes}: {type(exc).__name__}: {exc}", name, previous) from exc
            figure = diff.max_abs if k == 0 else figure
            checked.append((inputs, outputs))
        return checked, figure

    def _reproduce(self, p: Pass, code_before: str, previous: tuple[str, ...], exc: BaseException) -> None:
        if self.reproducer_dir is None:
            return
        where = self.reproducer_dir / f"{len(previous):02d}_{p.name}"
        where.mkdir(parents=True, exist_ok=True)
        (where / "graph_before.py").write_text(code_before)
        (where / "pipeline.txt").write_text(
            f"previous: {','.join(previous)}\nfailing: {p}\nwhole: {self}\n")
        (where / "error.txt").write_text("".join(traceback.format_exception(exc)))
        log.warning("reproducer for %s written to %s", p, where)
