"""``fxopt.pruning.prune``: analyse, score, plan, remove and reconstruct in one call.

``prune_graph`` does the work on a GraphEditor: ``prune`` gives it an editor on a copy of the analysed module (and
returns the copy), the ``prune`` pass one on its own graph module, so both change the graph through the same
editor-based removal, once.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, overload

import torch
from torch import fx

from fxopt.analysis.analysis import Analysis, analyze
from fxopt.analysis.groups import Group
from fxopt.editor import GraphEditor
from fxopt.errors import PruneError
from fxopt.pruning.calibration import Calibration, CalibrationCache, LossFn
from fxopt.pruning.config import PruneConfig
from fxopt.pruning.importance import (
    CRITERIA,
    Criterion,
    ImportanceContext,
    ScoreFn,
    score_groups,
)
from fxopt.pruning.inplace import prune_in_place
from fxopt.pruning.plan_cost import CostModel, LatencyModel
from fxopt.pruning.planner import GroupDecision, make_plan, module_types, select_groups
from fxopt.pruning.prune_report import PruneReport
from fxopt.pruning.reconstruction import reconstruct
from fxopt.pruning.removal import Removed, copy_sharing_tensors, removal_masks, remove_units
from fxopt.pruning.units import graph_inputs, param_count
from fxopt.trace import propagate_shapes

log = logging.getLogger(__name__)


def resolve_round_to(round_to: int | None, target: Any) -> int:
    """The alignment: explicit ``round_to``, else the target's channel alignment, else 1."""
    if round_to is not None:
        return int(round_to)
    alignment = getattr(target, "alignment", None)
    if callable(alignment):
        return max(int(alignment("fp32")), 1)
    return 1


def make_criterion(spec: str | Criterion | ScoreFn, normalize: str | None) -> Criterion:
    """A criterion instance from a name, instance or function, with the normalization override applied."""
    crit = CRITERIA.create(spec)
    if normalize is not None:
        crit = dataclasses.replace(crit, normalize=normalize)
    return crit


def remove_robustly(editor: GraphEditor, analysis: Analysis, removals: dict[Group, list[int]]) \
        -> tuple[dict[Group, list[int]], dict[str, str], Removed | None]:
    """Remove every group's units through ``editor``; when that fails, find and drop the groups that make it fail.

    Failed attempts are rolled back, so ``editor.gm`` holds exactly the removals applied. Returns those removals,
    the error per dropped group, and what the removal changed (``None`` when nothing was removed).
    """

    def attempt(plan: dict[Group, list[int]], keep: bool = True) -> Removed:
        return remove_units(editor, analysis, removal_masks(analysis, plan), keep=keep)

    if not removals:
        return {}, {}, None
    try:
        return removals, {}, attempt(removals)
    except Exception as exc:  # any failure in removal is narrowed down to the groups causing it below
        log.info("removal of %d groups failed (%s); checking groups one by one", len(removals), exc)
    failed: dict[str, str] = {}
    kept: dict[Group, list[int]] = {}
    for g, units in removals.items():
        try:
            attempt({g: units}, keep=False)
        except Exception as exc:  # this group cannot be removed alone: report it, keep the rest going
            failed[g.id] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        else:
            kept[g] = units
    while kept:
        try:
            return kept, failed, attempt(kept)
        except Exception as exc:  # groups fine alone but not together: drop the last one and retry
            g = next(reversed(kept))
            failed[g.id] = f"fails in combination: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            del kept[g]
    return {}, failed, None


def unshare_buffers(editor: GraphEditor, original: torch.nn.Module) -> int:
    """Give ``editor.gm`` its own copy of every buffer it still shares with ``original`` (ties inside it kept).

    Removal replaces only the tensors it slices and shares the others with the analysed model, weights included,
    so pruning a 6 GB model does not copy 6 GB. Buffers are state that ``forward`` may write (running statistics
    in training mode, threaded state): those are copied, so calls of the pruned model never change the model it
    came from. Returns the number of buffers copied.
    """
    theirs = {id(t) for t in original.buffers()}
    copied: set[int] = set()
    for name, t in list(editor.gm.named_buffers(remove_duplicate=False)):
        if id(t) in theirs and id(t) not in copied:
            copied.add(id(t))
            editor.set_tensor(name, t.detach().clone(), "own copy")
    return len(copied)


@overload
def prune(model: torch.nn.Module | Analysis, example_inputs: Any = None, config: PruneConfig | None = None, *,
          calibration: Iterable[Any] | Calibration | None = None, loss_fn: LossFn | None = None,
          target: Any = None, criterion: str | Criterion | ScoreFn | None = None, inplace: Literal[False] = False,
          **options: Any) -> tuple[fx.GraphModule, PruneReport]: ...


@overload
def prune(model: torch.nn.Module | Analysis, example_inputs: Any = None, config: PruneConfig | None = None, *,
          calibration: Iterable[Any] | Calibration | None = None, loss_fn: LossFn | None = None,
          target: Any = None, criterion: str | Criterion | ScoreFn | None = None, inplace: bool,
          **options: Any) -> tuple[torch.nn.Module, PruneReport]: ...


def prune(model: torch.nn.Module | Analysis, example_inputs: Any = None, config: PruneConfig | None = None, *,
          calibration: Iterable[Any] | Calibration | None = None, loss_fn: LossFn | None = None,
          target: Any = None, criterion: str | Criterion | ScoreFn | None = None, inplace: bool = False,
          **options: Any) -> tuple[torch.nn.Module, PruneReport]:
    """Structured pruning of ``model``: returns a physically smaller GraphModule (or the model pruned in place).

    Args:
        model: an ``nn.Module`` (traced and analysed here) or an Analysis from ``fxopt.analyze``.
        example_inputs: a tensor or tuple of positional inputs (not needed for an Analysis).
        config: a PruneConfig; alternatively pass its fields as keyword ``options``.
        calibration: batches of real inputs for data-aware criteria and reconstruction (with ``loss_fn``,
            ``(inputs, target)`` pairs).
        loss_fn: ``loss_fn(output, target)`` for the Taylor criterion.
        target: a Target (for its channel alignment and roofline numbers) or None.
        criterion: a criterion name, a Criterion instance or a function ``fn(ctx, group) -> scores``;
            overrides ``config.criterion``.
        inplace: prune ``model`` itself, keeping its class, size attributes and (transformers) config in step
            (``fxopt.pruning.inplace.apply_to``); where that cannot express the plan, the GraphModule is returned
            and ``report.path`` says why.
        **options: PruneConfig fields (``ratio=0.5``, ``round_to=8``, ``reconstruct="ls"`` ...).

    Returns:
        ``(pruned GraphModule, PruneReport)``; the input model is not modified. With ``inplace=True`` and
        ``report.path == "in place"``: ``(model, PruneReport)``, the model pruned in place. The parameters
        removal left whole are the input model's own tensors (no copy is made, so pruning needs little memory
        beyond the model): train a ``copy.deepcopy`` of the result if the input model must stay as it is.

    Raises:
        ValueError: invalid options, a data-aware criterion/reconstruction without calibration data, or
            ``inplace=True`` with an Analysis instead of the model.

    Example:
        >>> small, report = fxopt.pruning.prune(model, x, ratio=0.5, round_to=8)
        >>> print(report.to_text())
        >>> small, report = fxopt.pruning.prune(model, x, ratio=0.3, criterion="variance", reconstruct="ls",
        ...                                     calibration=[x1, x2, x3])
        >>> llm, report = fxopt.pruning.prune(llm, (ids,), ratio=0.5, inplace=True)  # report.path: "in place"
    """
    if inplace and isinstance(model, Analysis):
        raise ValueError("inplace=True prunes the model itself: pass the nn.Module, not an Analysis")
    if config is None:
        config = PruneConfig(**options)
    elif options:
        config = dataclasses.replace(config, **options)
    analysis = model if isinstance(model, Analysis) else analyze(model, example_inputs)
    types = module_types(None if isinstance(model, Analysis) else model)
    gm = copy_sharing_tensors(analysis.gm)
    editor = GraphEditor(gm)
    report, pruned = prune_graph(editor, analysis, config, calibration=calibration, loss_fn=loss_fn,
                                 target=target, criterion=criterion, types=types)
    meta = dict(gm.meta.get("fxopt", {}))
    if pruned is not None:
        meta["pruned"] = pruned
    meta["prune_report"] = report
    gm.meta["fxopt"] = meta
    if inplace and not isinstance(model, Analysis):  # an Analysis with inplace=True was refused above
        report = prune_in_place(model, gm, report, example_inputs)
        if report.path == "in place":
            return model, report
        meta["prune_report"] = report
    unshare_buffers(editor, analysis.gm)
    return gm, report


def prune_graph(editor: GraphEditor, analysis: Analysis, config: PruneConfig, *,
                calibration: Iterable[Any] | Calibration | None = None, loss_fn: LossFn | None = None,
                target: Any = None, criterion: str | Criterion | ScoreFn | None = None,
                types: Mapping[str, type] | None = None) -> tuple[PruneReport, dict[str, Any] | None]:
    """Score, plan, remove and reconstruct, editing ``editor.gm`` once through the editor.

    ``editor.gm`` is ``analysis.gm`` itself (the ``prune`` pass prunes its graph in place) or a copy of it with
    the same node and tensor names (``prune`` returns a new module). Arguments are those of ``prune``; ``types``
    adds module classes of the original model for ``ignore`` entries that name types.

    Returns:
        The PruneReport, and the record of what the removal changed (``Removed.record``; ``None`` when nothing was
        removed).
    """
    start = time.perf_counter()
    types = {**module_types(analysis.gm), **(types or {})}
    cal = Calibration.of(calibration, loss_fn)
    crit = make_criterion(criterion if criterion is not None else config.criterion, config.normalize)
    if crit.needs_data and cal is None:
        raise ValueError(f"criterion {config.criterion!r} needs calibration data: pass calibration=batches")
    if config.reconstruct is not None and cal is None:
        raise ValueError(f"reconstruct={config.reconstruct!r} needs calibration data: pass calibration=batches")
    round_to = resolve_round_to(config.round_to, target)
    eligible, decisions, ignored = select_groups(analysis, config, types)
    cache = CalibrationCache(analysis, cal)
    ctx = ImportanceContext(analysis, cache)
    scores = score_groups(ctx, eligible, crit)
    cost = CostModel(analysis, LatencyModel.from_target(target))
    removals, planned, achieved = make_plan(analysis, eligible, scores, config, round_to, types, cost)
    decisions.update(planned)
    params_before = param_count(analysis.gm)
    reference = analysis
    if config.reconstruct is not None and editor.gm is analysis.gm:
        # reconstruction compares with the unpruned model; removal replaces tensors, so a copy sharing them keeps it
        reference = dataclasses.replace(analysis, gm=copy_sharing_tensors(analysis.gm))
    applied, failures, removed = remove_robustly(editor, analysis, removals)
    for gid, why in failures.items():
        d = decisions[gid]
        decisions[gid] = GroupDecision(d.group, d.granularity, d.size, 0, d.exact, "failed", why)
    fixes = []
    gm = editor.gm
    if config.reconstruct is not None and applied:
        n_nodes = len(gm.graph.nodes)
        assert cal is not None
        fixes = reconstruct(reference, editor, applied, config.reconstruct, cal, config.ridge)
        if len(gm.graph.nodes) != n_nodes:
            propagate_shapes(gm, graph_inputs(analysis, analysis.example_inputs))
    dense, after = cost.evaluate(), cost.evaluate(cost.kept_after(applied))
    report = PruneReport(
        config=config, criterion=repr(crit), round_to=round_to,
        decisions=tuple(decisions[g.id] for g in analysis.groups if g.id in decisions),
        ignored={k: tuple(v) for k, v in ignored.items()},
        params_before=params_before, params_after=param_count(gm),
        macs_before=dense.macs, macs_after=after.macs, latency_ratio=after.latency / max(dense.latency, 1e-30),
        budget_achieved=achieved, reconstruction=tuple(fixes), notes=dict(ctx.notes),
        seconds=time.perf_counter() - start,
        static_dims=tuple(getattr(analysis.gm.meta.get("fxopt", {}).get("trace"), "static", ())),
    )
    log.info("%s", report.to_text())
    return report, (removed.record(applied) if removed is not None else None)


def plan_only(analysis: Analysis, config: PruneConfig, scores: Mapping[Group, Sequence[float]] | None = None,
              round_to: int = 1) -> dict[Group, list[int]]:
    """The removals ``prune`` would make with given (or L2) scores, without removing anything."""
    eligible, _, _ = select_groups(analysis, config, module_types(analysis.gm))
    import numpy as np

    if scores is None:
        ctx = ImportanceContext(analysis, CalibrationCache(analysis, None))
        arrays = score_groups(ctx, eligible, make_criterion("l2", None))
    else:
        arrays = {g: np.asarray(s) for g, s in scores.items()}
    removals, _, _ = make_plan(analysis, eligible, arrays, config, round_to, cost=CostModel(analysis))
    return removals


__all__ = ["PruneError", "plan_only", "prune", "prune_graph", "remove_robustly", "resolve_round_to"]
