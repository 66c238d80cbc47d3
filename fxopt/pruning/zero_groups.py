"""OTO-style construction: physically remove every unit whose producer slices are exactly zero.

A structured-sparsity optimizer (OTO, HESSO) drives whole zero-invariant groups to zero during training; the
smaller network is then *constructed* by removing them, and computes exactly what the trained network computes.
Only exact groups qualify: in an approximate group (a LayerNorm over the channels) a zero channel still changes
the normalization statistics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from fxopt.analysis.analysis import Analysis, analyze
from fxopt.analysis.groups import Group
from fxopt.pruning.removal import prune_groups
from fxopt.pruning.units import member_rows, param_count

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZeroGroupsReport:
    """What ``remove_zero_groups`` removed: units per group id, and parameters before and after."""

    removed: tuple[tuple[str, int], ...]
    params_before: int
    params_after: int

    @property
    def units(self) -> int:
        """Total units removed."""
        return sum(n for _, n in self.removed)


def zero_units(analysis: Analysis, group: Group, atol: float = 0.0, module: torch.nn.Module | None = None) -> list[int]:
    """Units of ``group`` whose every producer slice (parameters and buffers) is zero within ``atol``."""
    zero = torch.ones(group.size, dtype=torch.bool)
    seen = False
    for member, rows in member_rows(analysis, group, module, parameters_only=False):
        if member.role != "producer":
            continue
        seen = True
        zero &= rows.abs().amax(1) <= atol if rows.shape[1] else torch.ones_like(zero)
    return [int(u) for u in torch.nonzero(zero).ravel()] if seen else []


def _placeholder_inputs(gm: fx.GraphModule) -> tuple[Any, ...]:
    """Zero tensors shaped like the placeholders' recorded values (for graphs traced by fxopt)."""
    out = []
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            val = n.meta.get("val")
            if not isinstance(val, torch.Tensor):
                raise ValueError(f"placeholder {n.name} has no recorded shape: pass example_inputs")
            out.append(torch.zeros(val.shape, dtype=val.dtype))
    return tuple(out)


def remove_zero_groups(model: torch.nn.Module | Analysis, example_inputs: Any = None, *, atol: float = 0.0,
                       groups: Sequence[Group] | None = None) -> fx.GraphModule:
    """Remove every unit of every exact group whose producer slices are exactly zero.

    The result computes the same outputs as ``model`` (within float rounding): zeroed producers make the
    channel zero, and the group being zero-invariant means nothing downstream can tell it was there.

    Args:
        model: an ``nn.Module`` (with ``example_inputs``), a GraphModule traced by fxopt (inputs are taken from
            its placeholders' shapes when not given), or an Analysis.
        example_inputs: inputs for tracing.
        atol: slices with every magnitude at most ``atol`` count as zero (0.0: exactly zero).
        groups: restrict to these groups of the given Analysis.

    Returns:
        The smaller GraphModule; ``gm.meta["fxopt"]["zero_groups"]`` holds a ZeroGroupsReport. Each group keeps at
        least one unit even when all of its units are zero.

    Example:
        >>> with torch.no_grad():
        ...     model.conv1.weight[:4] = 0; model.bn1.weight[:4] = 0; model.bn1.bias[:4] = 0
        >>> small = fxopt.remove_zero_groups(model, x)   # conv1 loses 4 output channels, outputs unchanged
    """
    if isinstance(model, Analysis):
        analysis = model
    else:
        if example_inputs is None:
            if not (isinstance(model, fx.GraphModule) and "fxopt" in model.meta):
                raise ValueError("example_inputs are needed to trace a module")
            example_inputs = _placeholder_inputs(model)
        analysis = analyze(model, example_inputs)
    removals: dict[Group, list[int]] = {}
    for g in analysis.groups if groups is None else groups:
        if not g.exact:
            continue
        units = zero_units(analysis, g, atol)
        if len(units) >= g.size:
            units = units[1:]  # a layer keeps one channel: removing all of them would delete it
        if units:
            removals[g] = units
    gm = prune_groups(analysis, removals)
    report = ZeroGroupsReport(tuple((g.id, len(u)) for g, u in removals.items()), param_count(analysis.gm),
                              param_count(gm))
    meta = dict(gm.meta.get("fxopt", {}))
    meta["zero_groups"] = report
    gm.meta["fxopt"] = meta
    log.info("removed %d zero units in %d groups", report.units, len(removals))
    return gm
