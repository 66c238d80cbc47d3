"""Entry points: ``optimize`` (trace, run a target's pipeline, return the faster module), ``report`` and ``cost``."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx

from fxopt.analysis.cost import CostTable, graph_cost
from fxopt.errors import FxoptError
from fxopt.module_state import copy_sharing_parameters, reset_state
from fxopt.passes.base import Pass, PassContext, PassResult
from fxopt.passes.lower import device_mismatch, device_of
from fxopt.passes.manager import PassManager
from fxopt.passes.spec import format_pipeline, parse_pipeline
from fxopt.pruning.calibration import LossFn
from fxopt.report import ModelStats, Report
from fxopt.targets.pipeline import OptimizeOptions, pipeline_for
from fxopt.targets.registry import get_target
from fxopt.targets.spec import Target
from fxopt.timing import measure as time_side_by_side
from fxopt.trace import trace

log = logging.getLogger(__name__)


def _as_tuple(inputs: Any) -> tuple[Any, ...]:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The graph module inside a ``torch.compile`` wrapper (``_orig_mod``), or ``module`` itself."""
    return getattr(module, "_orig_mod", module)


def model_stats(gm: fx.GraphModule, inputs: Sequence[Any], target: Target) -> ModelStats:
    """Parameters, FLOPs, predicted eager time and node count of a traced graph at its example inputs."""
    table = graph_cost(gm, inputs, target=target, symbolic=False)
    return ModelStats(params=sum(p.numel() for p in gm.parameters()), flops=table.flops(),
                      predicted_s=table.time(), nodes=len(gm.graph.nodes))


def _warnings(model: torch.nn.Module, results: Sequence[PassResult], device_note: str | None,
              gm: fx.GraphModule) -> list[str]:
    out = [f"lowering skipped: {device_note}"] if device_note else []
    info = gm.meta.get("fxopt", {}).get("trace")
    out += [f"the model keeps {name} between calls and changes its shape: the optimized model does not keep it "
            "(store state the graph can carry: a tensor of fixed shape)" for name in getattr(info, "dropped_state", ())]
    if getattr(info, "cache_disabled", False):
        out.append("captured with config.use_cache switched off: the optimized graph returns no key/value cache "
                   "(generation with a cache needs the model's own class)")
    if model.training:
        out.append("the model is in training mode: batch norms and dropout were kept; call model.eval() first "
                   "for inference")
    for r in results:
        out += [f"{r.pass_name}: {n}" for n in r.notes if "no longer train" in n]
    return out


def optimize(model: torch.nn.Module, example_inputs: Any, target: str | Target = "cpu", prune: Any = None,
             substitute: Any = None, calibration: Any = None, precision: str | None = None, compile: bool = True,
             passes: str | Sequence[Pass | str] | None = None, checked: bool = False,
             verbose: bool = False, loss_fn: LossFn | None = None, recipe: str | None = None,
             compile_budget_s: float | None = None) -> torch.nn.Module:
    """Optimize ``model`` for ``target`` and return a module computing the same outputs, faster.

    Without ``prune``, ``substitute`` and ``precision`` every pass is lossless: outputs match the original
    within float tolerance (fp32: rtol 1e-4, atol 1e-5). The model itself is not modified; the result shares
    the parameters no pass changed with it (no copy of the weights is made), so train a ``copy.deepcopy`` of the
    result if the original must stay as it is.

    Args:
        model: the module to optimize (put it in eval() mode for inference).
        example_inputs: a tensor or tuple of positional inputs; shapes are specialized to them.
        target: a target name (``"cpu"``, ``"a100"``, ``"h100"``, ``"h200"``) or a Target.
        prune: None, a ratio, a dict of the ``prune`` pass's options, or a prune Pass (lossy).
        substitute: None or the ``substitute`` pass's option (lossy).
        calibration: an iterable of input tuples for data-aware passes.
        precision: None, ``"auto"``, ``"bf16"``, ``"fp16"``, ``"int8"`` or ``"tf32"`` (lossy; refused where slow).
        compile: lower with torch.compile for the target (falls back to eager, with the reason, on failure).
        passes: an explicit pipeline (spec text or passes) replacing the target's.
        checked: compare every lossless pass's outputs with its input's.
        verbose: let torch.compile print its progress (autotuning tables, recompilations).
        loss_fn: ``loss_fn(output, target) -> scalar`` for gradient-based pruning criteria (``criterion="taylor"``);
            with it, each calibration batch is an ``(inputs, target)`` pair.
        recipe: lowering recipe: None (the target's candidates: on GPUs torch.compile's default and
            ``reduce-overhead``) or ``"max-autotune"`` (adds max-autotune, which compiles for minutes).
        compile_budget_s: seconds lowering may spend compiling; adds max-autotune while the budget lasts.

    Lowering compiles the target's candidates, times each beside the eager module on the example inputs and
    keeps the fastest, eager included: the report says which won, with every time.

    A target whose device is not where the model runs (``target="a100"`` for a model on the CPU, or on a
    machine without a GPU) still shapes the graph passes (channel rounding for its tensor cores, its fusions),
    but lowering is skipped: one warning says so, and so does the report.

    Returns:
        A GraphModule, or a torch.compile wrapper around one; ``fxopt.report(result)`` says what was done.

    Raises:
        TraceError: the model cannot be captured.
        PassError: a pass failed, or an option asks for a pass that is not registered.

    Example:
        >>> fast = fxopt.optimize(torchvision.models.resnet50().eval(), torch.randn(1, 3, 224, 224))
        >>> print(fxopt.report(fast).to_text())
    """
    inputs = _as_tuple(example_inputs)
    tgt = get_target(target)
    options = OptimizeOptions(prune=prune, substitute=substitute, precision=precision, compile=compile,
                              recipe=recipe, compile_budget_s=compile_budget_s)
    pipeline = parse_pipeline(passes) if passes is not None else pipeline_for(tgt, options)
    gm = trace(copy_sharing_parameters(model), inputs)  # one copy of the modules, none of the weights
    before = model_stats(gm, inputs, tgt)
    device_note = device_mismatch(tgt, device_of(model, inputs)) if compile else None
    if device_note:
        warnings.warn(f"fxopt.optimize: lowering skipped: {device_note}", stacklevel=2)
    ctx = PassContext(example_inputs=inputs, target=tgt, calibration=calibration, loss_fn=loss_fn, verbose=verbose)
    run = PassManager(pipeline, checked=checked).run(gm, inputs, ctx)
    resized_state = reset_state(gm)  # state the model keeps between calls starts where the original's was
    lowering = [r for r in run.results if "lowered" in r.metrics]
    info = gm.meta.get("fxopt", {}).get("trace")
    reason = str(getattr(info, "fallback_reason", None) or "").removeprefix("fx: ")
    frontend = getattr(info, "frontend", "fx") + (f" (symbolic tracing failed: {reason})" if reason else "")
    report_data = Report(
        model=type(model).__name__, target=tgt.name, target_description=tgt.describe(),
        pipeline=format_pipeline(pipeline), frontend=frontend, before=before, after=model_stats(gm, inputs, tgt),
        results=tuple(run.results), lowered=ctx.lowered is not None,
        lowering_note="; ".join(lowering[-1].notes) if lowering and lowering[-1].notes else None,
        static_dims=tuple(getattr(info, "static", ())),
        warnings=tuple(_warnings(model, run.results, device_note, gm))
        + tuple(f"state {name} was resized by pruning: it starts from its value when it was sliced, not from the "
                "original model's" for name in resized_state),
    )
    meta = gm.meta.setdefault("fxopt", {})
    meta["report"] = report_data
    meta["example_inputs"] = tuple(x.detach().clone() if isinstance(x, torch.Tensor) else x for x in inputs)
    log.info("optimized %s for %s: predicted %.3f ms -> %.3f ms", report_data.model, tgt.name,
             before.predicted_s * 1e3, report_data.after.predicted_s * 1e3)
    return run.module


def report(module: torch.nn.Module) -> Report:
    """The Report of a module returned by ``optimize`` (compiled or not).

    Raises:
        FxoptError: when ``module`` did not come from ``optimize``.
    """
    found = _fxopt_meta(module).get("report")
    if not isinstance(found, Report):
        raise FxoptError(f"{type(module).__name__} carries no fxopt report: pass the module optimize() returned")
    return found


def _fxopt_meta(module: torch.nn.Module) -> dict[str, Any]:
    """What ``optimize`` stored on the graph module (``meta["fxopt"]``); empty for other modules."""
    meta = getattr(unwrap(module), "meta", None)
    found = meta.get("fxopt") if isinstance(meta, dict) else None
    return found if isinstance(found, dict) else {}


def measure(original: torch.nn.Module, optimized: torch.nn.Module, example_inputs: Any = None,
            rounds: int = 10) -> Report:
    """Time ``original`` and ``optimized`` side by side on this machine and record it in the optimized report.

    Both run in interleaved rounds (``fxopt.timing.measure``): the report then shows the median time of each,
    their spread, and a warning where the spread or the machine's load makes the figures unreliable.
    ``fxopt bench``, the HTML report and ``report.to_text()`` show these same figures.

    Args:
        original: the model that was optimized.
        optimized: what ``optimize`` returned.
        example_inputs: the inputs to time on (default: those ``optimize`` stored).
        rounds: timed rounds.

    Returns:
        The optimized module's Report with the measurement attached (also stored on the module).

    Example:
        >>> fast = fxopt.optimize(model, x)
        >>> print(fxopt.measure(model, fast).to_text())
    """
    found = report(optimized)
    meta = _fxopt_meta(optimized)
    inputs = _as_tuple(example_inputs) if example_inputs is not None else meta["example_inputs"]
    timed = time_side_by_side({"original": original, "optimized": optimized}, inputs, rounds=rounds)
    measured = found.with_measurement(timed)
    meta["report"] = measured
    return measured


def cost(model: torch.nn.Module, example_inputs: Any, target: str | Target = "cpu",
         symbolic: bool = True) -> CostTable:
    """Per-node FLOPs and bytes (sympy expressions in batch ``B`` and sequence ``S``) and roofline time.

    Args:
        model: a module, or a graph module from ``fxopt.trace``/``optimize``.
        example_inputs: its inputs.
        target: the target for predicted times.
        symbolic: try symbolic batch/sequence sizes.

    Example:
        >>> table = fxopt.cost(model, x, target="cpu")
        >>> table.total_flops(), table.time(B=8)
        >>> print(table.to_text())
    """
    inputs = _as_tuple(example_inputs)
    module = unwrap(model)
    if isinstance(module, fx.GraphModule) and all("val" in n.meta for n in module.graph.nodes
                                                  if n.op == "placeholder"):
        gm = module
    else:
        gm = trace(module, inputs)
    return graph_cost(gm, inputs, target=get_target(target), symbolic=symbolic)
