"""Structured pruning on zero-invariant groups: importance, planning, removal (through a GraphEditor), reconstruction.

Example:
    >>> from fxopt.pruning import prune
    >>> small, report = prune(model, x, ratio=0.5, round_to=8)
    >>> print(report.to_text())
"""

from fxopt.pruning.calibration import Calibration
from fxopt.pruning.config import PruneConfig
from fxopt.pruning.importance import (
    CRITERIA,
    Criterion,
    ImportanceContext,
    score_groups,
)
from fxopt.pruning.inplace import InplaceRecord, apply_to
from fxopt.pruning.module_sizes import SIZE_RULES, Inexpressible, Sizes
from fxopt.pruning.plan_cost import Cost, CostModel, LatencyModel
from fxopt.pruning.planner import GroupDecision
from fxopt.pruning.prune_report import PruneReport
from fxopt.pruning.pruner import prune
from fxopt.pruning.reconstruction import ReaderFix
from fxopt.pruning.removal import prune_groups
from fxopt.pruning.zero_groups import ZeroGroupsReport, remove_zero_groups

__all__ = [
    "CRITERIA",
    "Calibration",
    "Cost",
    "CostModel",
    "Criterion",
    "GroupDecision",
    "ImportanceContext",
    "Inexpressible",
    "InplaceRecord",
    "LatencyModel",
    "PruneConfig",
    "PruneReport",
    "SIZE_RULES",
    "Sizes",
    "ReaderFix",
    "ZeroGroupsReport",
    "apply_to",
    "prune",
    "prune_groups",
    "remove_zero_groups",
    "score_groups",
]
