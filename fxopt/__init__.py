"""fxopt: graph-based compiler passes for PyTorch models.

Capture a model as a torch.fx graph, find its zero-invariant channel groups, and remove them physically.

Example:
    >>> import fxopt, torch, torchvision
    >>> model = torchvision.models.resnet18().eval()
    >>> analysis = fxopt.analyze(model, torch.randn(1, 3, 64, 64))
    >>> print(analysis.summary())
"""

from fxopt import ops  # noqa: F401  (registers the op rules)
from fxopt.analysis.analysis import Analysis, analyze
from fxopt.analysis.groups import FrozenGroup, Group, Member
from fxopt.api import cost, measure, optimize, report
from fxopt.errors import AnalysisError, EditError, FxoptError, PassError, PruneError, TraceError
from fxopt.passes import Pass, PassManager, PassResult, register_pass
from fxopt.pruning import InplaceRecord, apply_to, prune, prune_groups, remove_zero_groups
from fxopt.serialization import load, save
from fxopt.trace import trace
from fxopt.viz import visualize

__all__ = [
    "Analysis",
    "Pass",
    "PassManager",
    "PassResult",
    "AnalysisError",
    "EditError",
    "FrozenGroup",
    "FxoptError",
    "InplaceRecord",
    "Group",
    "Member",
    "PassError",
    "PruneError",
    "TraceError",
    "analyze",
    "apply_to",
    "cost",
    "load",
    "measure",
    "optimize",
    "prune",
    "register_pass",
    "remove_zero_groups",
    "report",
    "save",
    "prune_groups",
    "trace",
    "visualize",
]
