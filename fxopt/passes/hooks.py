"""Ready-made PassManager hooks: log each pass, dump the graph after each pass, collect results."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch.fx as fx

from fxopt.passes.base import Pass, PassContext, PassResult

log = logging.getLogger(__name__)


def log_before(p: Pass, gm: fx.GraphModule, ctx: PassContext) -> None:
    """Before-hook: log the pass about to run and the graph size."""
    log.info("running %s on %d nodes", p, len(gm.graph.nodes))


def log_after(p: Pass, gm: fx.GraphModule, ctx: PassContext, result: PassResult) -> None:
    """After-hook: log the pass's summary and duration."""
    log.info("%s in %.3fs", result.summary(), result.duration_s)


@dataclass
class DumpGraphs:
    """After-hook writing ``NN_<pass>.py`` (the generated code) and ``NN_<pass>.txt`` (the graph) per pass.

    Example:
        >>> PassManager("cleanup,fuse", after=[DumpGraphs(tmp_path)]).run(gm, x)
    """

    directory: Path | str
    count: int = field(default=0, init=False)

    def __call__(self, p: Pass, gm: fx.GraphModule, ctx: PassContext, result: PassResult) -> None:
        """Write the graph after pass ``p``."""
        out = Path(self.directory)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{self.count:02d}_{p.name}"
        (out / f"{stem}.py").write_text(gm.code)
        (out / f"{stem}.txt").write_text(str(gm.graph))
        self.count += 1


@dataclass
class Timeline:
    """After-hook collecting ``(pass spec, seconds, changed)`` for every pass that ran."""

    rows: list[tuple[str, float, bool]] = field(default_factory=list)

    def __call__(self, p: Pass, gm: fx.GraphModule, ctx: PassContext, result: PassResult) -> None:
        """Record one row."""
        self.rows.append((result.pass_name, result.duration_s, result.changed))
