"""The correctness oracle: zeroing a group's producers must equal removing the group.

For each group, one copy of the graph gets the group's producer slices (for a chosen subset of its units) set
to zero; another copy has those units removed with ``prune_groups``. Both run on the same real inputs: exact
groups must agree within float tolerance, approximate groups report their measured error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fxopt.analysis.analysis import Analysis, analyze
from fxopt.analysis.groups import Group
from fxopt.equivalence import TOLERANCES, Difference, compare, run
from fxopt.input_dims import Sizes, captured_dims, size_sets
from fxopt.ops.view import PARAM_PREFIX, Axis
from fxopt.pruning.removal import KeptIndices, copy_sharing_tensors, prune_groups, removal_masks


@dataclass(frozen=True)
class GroupCheck:
    """The outcome for one group: removed units, measured error, and whether it passed."""

    group: str
    exact: bool
    removed: int
    max_abs: float
    relative: float
    passed: bool
    error: str | None = None


def pick_units(group: Group, fraction: float = 0.5, seed: int = 0) -> list[int]:
    """A reproducible subset of ``group``'s units: ``fraction`` of them, at least one, never all."""
    n = max(1, min(group.size - 1, int(round(group.size * fraction))))
    rng = np.random.default_rng(seed + group.size)
    return sorted(rng.choice(group.size, size=n, replace=False).tolist())


def representative_groups(groups: Sequence[Group], limit: int) -> list[Group]:
    """At most ``limit`` groups, one of every (granularity, exact) kind first, then in order."""
    by_kind: dict[tuple[str, bool], Group] = {}
    for g in groups:
        by_kind.setdefault((g.granularity, g.exact), g)
    picked = list(by_kind.values())[:limit]
    chosen = {id(g) for g in picked}
    picked += [g for g in groups if id(g) not in chosen][: max(0, limit - len(picked))]
    return picked


def zero_producers(analysis: Analysis, removals: dict[Group, list[int]]) -> torch.nn.Module:
    """A copy of the analysed graph module with the producer slices of the given units set to zero."""
    producers = {m.qualname for g in removals for m in g.members if m.role == "producer"}
    gm = copy_sharing_tensors(analysis.gm, fresh=producers)
    kept = KeptIndices(analysis, removal_masks(analysis, removals))
    with torch.no_grad():
        for group in removals:
            for m in group.members:
                if m.role != "producer":
                    continue
                t = _tensor(gm, m.qualname)
                axis = Axis(PARAM_PREFIX + m.qualname, m.dim, t.shape[m.dim])
                drop = np.setdiff1d(np.arange(t.shape[m.dim]), kept.kept(axis))
                t.index_fill_(m.dim, torch.as_tensor(drop, device=t.device), 0.0)
    return gm


def _tensor(gm: torch.nn.Module, qualname: str) -> torch.Tensor:
    prefix, _, leaf = qualname.rpartition(".")
    owner = gm.get_submodule(prefix) if prefix else gm
    return getattr(owner, leaf)


def check_group(analysis: Analysis, group: Group, inputs: Sequence[Any], fraction: float = 0.5,
                tol: float | None = None, others: Sequence[Sequence[Any]] = ()) -> GroupCheck:
    """Zero vs remove one group's units; see ``check_zero_invariance``."""
    return check_jointly(analysis, [group], inputs, fraction, tol, others)


def check_jointly(analysis: Analysis, groups: Sequence[Group], inputs: Sequence[Any], fraction: float = 0.5,
                  tol: float | None = None, others: Sequence[Sequence[Any]] = ()) -> GroupCheck:
    """Zero vs remove a share of the units of several groups at once; one GroupCheck for all of them.

    The joint check is a fast screen for sweeps over large models (one removal instead of one per group);
    ``check_zero_invariance`` checks group by group. ``others`` are input sets of other sizes that both
    modules run as well; the worst error over all the sets counts.
    """
    plan = {g: pick_units(g, fraction) for g in groups}
    name = groups[0].id if len(groups) == 1 else f"{len(groups)} groups"
    exact = all(g.exact for g in groups)
    removed = sum(len(u) for u in plan.values())
    try:
        zeroed = zero_producers(analysis, plan)
        pruned = prune_groups(analysis, plan, verify=False)  # the real run below checks the shapes
        diff = compare(run(zeroed, inputs), run(pruned, inputs))
        for extra in others:
            diff = _worse(diff, compare(run(zeroed, extra), run(pruned, extra)))
    except Exception as exc:  # report, do not stop the sweep: the caller decides what a failure means
        return GroupCheck(name, exact, removed, float("inf"), float("inf"), False, f"{type(exc).__name__}: {exc}")
    limit = tol if tol is not None else _default_tol(inputs)
    passed = diff.relative <= limit or not exact
    return GroupCheck(name, exact, removed, diff.max_abs, diff.relative, passed)


def _worse(a: Difference, b: Difference) -> Difference:
    return b if b.relative > a.relative else a


def _default_tol(inputs: Sequence[Any]) -> float:
    dtypes = [x.dtype for x in inputs if isinstance(x, torch.Tensor) and x.is_floating_point()]
    rtol, _ = TOLERANCES.get(dtypes[0] if dtypes else torch.float32, TOLERANCES[torch.float32])
    return rtol


def run_inputs(analysis: Analysis, example_inputs: Any = None) -> list[Any]:
    """Inputs as the analysed graph's placeholders take them (pytree-flattened for exported graphs)."""
    inputs = analysis.example_inputs if example_inputs is None else example_inputs
    inputs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    flat, _ = torch.utils._pytree.tree_flatten(tuple(inputs))
    n_ph = sum(1 for n in analysis.gm.graph.nodes if n.op == "placeholder")
    return flat if len(flat) == n_ph else list(inputs)


def check_zero_invariance(model: torch.nn.Module | Analysis, example_inputs: Any = None,
                          analysis: Analysis | None = None, groups: Iterable[Group] | None = None,
                          tol: float | None = None, fraction: float = 0.5,
                          raise_on_failure: bool = True, sizes: Sizes = None) -> list[GroupCheck]:
    """Check group by group that zeroing producers equals physical removal.

    Args:
        model: the module (analysed here unless ``analysis`` is given) or an Analysis.
        example_inputs: real inputs to run; defaults to the analysis' example inputs.
        analysis: a precomputed analysis of ``model``.
        groups: the groups to check (default: all of them).
        tol: largest allowed error relative to the output's magnitude (default: the dtype's rtol, 1e-4 for fp32).
        fraction: share of each group's units removed.
        raise_on_failure: raise AssertionError when an exact group fails or any removal errors.
        sizes: other input sizes to run both modules at as well (``fxopt.input_dims.Sizes``: a list like
            ``[{"batch": 4, "sequence": 7}]``, or ``"other"`` for two sets), among the dims the graph was
            captured dynamic in.

    Returns:
        One GroupCheck per group; approximate groups carry their measured error and always pass unless the
        removal itself failed.
    """
    if isinstance(model, Analysis):
        analysis = model
    elif analysis is None:
        analysis = analyze(model, example_inputs)
    inputs = run_inputs(analysis, example_inputs)
    others = size_sets(inputs, captured_dims(analysis.gm, inputs), sizes)
    results = [check_group(analysis, g, inputs, fraction, tol, others)
               for g in (analysis.groups if groups is None else groups)]
    bad = [r for r in results if not r.passed or r.error]
    if bad and raise_on_failure:
        lines = [f"{r.group}: {'error ' + r.error if r.error else f'relative error {r.relative:.2e}'}" for r in bad]
        raise AssertionError(f"{len(bad)} of {len(results)} groups fail zero-invariance:\n" + "\n".join(lines[:20]))
    return results
