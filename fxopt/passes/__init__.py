"""fxopt's pass framework and passes.

Passes are frozen dataclasses registered by name (``register_pass``); pipelines are lists of passes or text
specs (``"cleanup,fuse,channels_last,lower"``) run by a ``PassManager`` that verifies the graph after each pass.
Importing this package registers the built-in passes; a ``prune`` pass registers itself from
``fxopt.passes.prune`` when that module is present.

Example:
    >>> from fxopt.passes import PassManager
    >>> run = PassManager("cleanup,fuse", checked=True).run(fxopt.trace(model, x), (x,))
"""

import importlib
import importlib.util

from fxopt.passes.base import (
    ANALYSES,
    PASSES,
    Edit,
    Pass,
    PassContext,
    PassRegistry,
    PassResult,
    Skip,
    make_pass,
    register_analysis,
    register_pass,
)
from fxopt.passes.cleanup import CleanupPass
from fxopt.passes.editor import GraphEditor
from fxopt.passes.fold_bn import FoldBatchNormInputPass, FoldBatchNormPass
from fxopt.passes.fuse import FusePass
from fxopt.passes.hooks import DumpGraphs, Timeline, log_after, log_before
from fxopt.passes.layout import ChannelsLastPass
from fxopt.passes.lower import LowerPass
from fxopt.passes.manager import PassManager, PipelineRun
from fxopt.passes.merge_linear import MergeLinearPass
from fxopt.passes.permute import PermutePass
from fxopt.passes.precision import PrecisionPass
from fxopt.passes.sdpa import SdpaPass
from fxopt.passes.siblings import HorizontalFusePass
from fxopt.passes.spec import format_pipeline, parse_pass, parse_pipeline

for _optional in ("fxopt.passes.prune", "fxopt.passes.substitute"):
    if importlib.util.find_spec(_optional) is not None:
        importlib.import_module(_optional)

LOSSLESS_PASSES = ("cleanup", "fold_bn", "fold_bn_input", "merge_linear", "fuse_siblings", "fuse", "channels_last",
                   "sdpa")
"""The built-in lossless passes that rewrite the graph (lowering aside)."""

__all__ = [
    "ANALYSES", "LOSSLESS_PASSES", "PASSES", "ChannelsLastPass", "CleanupPass", "DumpGraphs", "Edit",
    "FoldBatchNormInputPass", "FoldBatchNormPass", "FusePass", "GraphEditor", "HorizontalFusePass", "LowerPass",
    "MergeLinearPass", "Pass", "PassContext", "PassManager", "PassRegistry", "PassResult", "PermutePass", "PipelineRun",
    "PrecisionPass", "SdpaPass", "Skip", "Timeline", "format_pipeline", "log_after", "log_before", "make_pass",
    "parse_pass", "parse_pipeline", "register_analysis", "register_pass",
]
