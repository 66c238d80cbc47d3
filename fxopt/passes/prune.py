"""The ``prune`` pass: structured pruning on zero-invariant groups (lossy, opt-in).

``prune(ratio=0.5,round_to=8)`` removes half of the units of every exact group (the least important under
``criterion``) and rounds each group's kept channels to a multiple of 8. Ratio, budget and ignore semantics are
those of ``fxopt.pruning.PruneConfig``; data-aware criteria and reconstruction read calibration batches from
``ctx.calibration`` (and a ``loss_fn`` from ``ctx.options`` for the Taylor criterion).

The pass computes the pruned module with ``fxopt.pruning.prune`` and then applies the differences to the graph
module it was given, through the GraphEditor: every resized tensor, every changed module attribute and every
rewritten node argument is a logged edit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import fx

from fxopt.analysis.analysis import analyze_graph
from fxopt.passes.base import Pass, PassContext, PassResult, register_pass
from fxopt.passes.editor import GraphEditor
from fxopt.passes.verify import shape_inputs
from fxopt.pruning.config import DEFAULT_GRANULARITY, PruneConfig
from fxopt.pruning.pruner import prune
from fxopt.pruning.report import PruneReport

Ratio = float | tuple[tuple[str, float], ...] | None


@register_pass
@dataclass(frozen=True)
class PrunePass(Pass):
    """Structured pruning: remove the least important units of every eligible group (see PruneConfig).

    Attributes:
        ratio: fraction of units removed per group (``scope="uniform"``) or overall (``"global"``); or
            ``(("layer4", 0.7), ("*", 0.3))`` pairs per group id, module name/prefix or ``re:`` regex.
        budget: keep at most this fraction of ``metric`` (instead of a ratio).
        metric: ``"params"``, ``"macs"``/``"flops"`` or ``"latency"`` (predicted on the target).
        scope: ``"uniform"`` or ``"global"``.
        criterion: importance criterion name (``l1``, ``l2``, ``bn_scale``, ``taylor``, ``variance``, ...).
        normalize: score normalization override for global ranking.
        round_to: kept channels are multiples of this (None: the target's alignment).
        floor: every group keeps at least this fraction of its units.
        ignore: module names, prefixes, ``re:`` regexes, group ids or module type names not to prune.
        granularity: kinds of group to prune (``channel``, ``head``, ``head_dim``, ``repeat``, ``block``).
        approximate: also prune groups that are not exactly zero-invariant.
        reconstruct: None, ``"bias"`` or ``"ls"`` (needs calibration data in the context).
        ridge: ridge strength of the least-squares reconstruction.

    Example:
        >>> run = PassManager("prune(ratio=0.5,round_to=8)").run(fxopt.trace(model, x), (x,))
    """

    name: ClassVar[str] = "prune"
    lossless: ClassVar[bool] = False

    ratio: Ratio = None
    budget: float | None = None
    metric: str = "params"
    scope: str = "uniform"
    criterion: str = "l2"
    normalize: str | None = None
    round_to: int | None = None
    floor: float = 0.1
    ignore: tuple[str, ...] = ()
    granularity: tuple[str, ...] = DEFAULT_GRANULARITY
    approximate: bool = False
    reconstruct: str | None = None
    ridge: float = 1e-3

    def __post_init__(self) -> None:
        if isinstance(self.ratio, Mapping):
            object.__setattr__(self, "ratio", tuple((str(k), float(v)) for k, v in self.ratio.items()))
        elif isinstance(self.ratio, list):
            object.__setattr__(self, "ratio", tuple(tuple(p) for p in self.ratio))
        for name in ("ignore", "granularity"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        self.config()  # validates: invalid options fail when the pass is built, not when it runs

    def config(self) -> PruneConfig:
        """The equivalent PruneConfig."""
        options = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if isinstance(options["ratio"], tuple):
            options["ratio"] = dict(options["ratio"])
        return PruneConfig(**options)

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        """Prune ``gm`` in place; the result carries the PruneReport's figures and each skipped group's reason."""
        editor = GraphEditor(gm, ctx, str(self))
        analysis = analyze_graph(gm, shape_inputs(gm, ctx.example_inputs))
        pruned, report = prune(analysis, config=self.config(), calibration=ctx.calibration,
                               loss_fn=ctx.options.get("loss_fn"), target=ctx.target)
        apply_pruned(editor, pruned)
        for d in report.decisions:
            if d.status not in ("pruned", "unchanged"):
                editor.skip(f"prune:{d.status}", d.group, d.reason)
        for line in report.to_text().splitlines():
            editor.note(line.strip())
        return editor.finish(metrics=report_metrics(report))


def report_metrics(report: PruneReport) -> dict[str, Any]:
    """The PassResult metrics of a pruning run: (before, after) pairs and ratios."""
    return {
        "prune_params": (report.params_before, report.params_after),
        "prune_macs": (report.macs_before, report.macs_after),
        "predicted_latency_ratio": report.latency_ratio,
        "groups_pruned": len(report.pruned),
        "groups_failed": len(report.failed),
        "ignored": {k: list(v) for k, v in report.ignored.items()},
    }


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    named = list(module.named_parameters(remove_duplicate=False)) + list(module.named_buffers(remove_duplicate=False))
    return dict(named)


def _plain_attrs(module: torch.nn.Module) -> dict[str, Any]:
    return {k: v for k, v in vars(module).items()
            if not k.startswith("_") and isinstance(v, (int, float, bool, tuple, str)) and k != "training"}


def apply_pruned(editor: GraphEditor, pruned: fx.GraphModule) -> None:
    """Make ``editor.gm`` equal to ``pruned`` (a pruned copy of it) with logged edits.

    Tensors that changed are replaced (tied tensors stay tied), module attributes that changed are set, nodes
    the copy added (get_attr of a new bias) are inserted, and node arguments that changed are rewritten.
    """
    gm = editor.gm
    old, new = _tensors(gm), _tensors(pruned)
    placed: dict[int, str] = {}
    for name, value in new.items():
        before = old.get(name)
        if before is not None and before.shape == value.shape and torch.equal(before, value):
            continue
        first = placed.get(id(value))
        if first is None:
            editor.set_tensor(name, value.detach().clone(), f"shape {tuple(value.shape)}")
            placed[id(value)] = name
        else:  # an alias of a tensor already placed: point it at the same object to keep the tie
            shared = editor.tensor(first)
            owner_path, _, leaf = name.rpartition(".")
            owner = gm.get_submodule(owner_path) if owner_path else gm
            setattr(owner, leaf, shared)
            editor.record("tie", name, f"same tensor as {first}")
    for path, module in pruned.named_modules():
        if not path:
            continue
        try:
            target = gm.get_submodule(path)
        except AttributeError:
            continue
        mine = _plain_attrs(target)
        for attr, value in _plain_attrs(module).items():
            if attr in mine and mine[attr] != value:
                editor.set_module_attr(path, attr, value)
    _apply_nodes(editor, pruned)


def _apply_nodes(editor: GraphEditor, pruned: fx.GraphModule) -> None:
    gm = editor.gm
    by_name = {n.name: n for n in gm.graph.nodes}
    new_nodes = list(pruned.graph.nodes)
    for i, n in enumerate(new_nodes):
        if n.name in by_name:
            continue
        if n.op != "get_attr":
            raise RuntimeError(f"pruning added a {n.op} node {n.name}; only get_attr nodes can be transplanted")
        follower = next(m for m in new_nodes[i + 1:] if m.name in by_name)
        by_name[n.name] = editor.get_attr(str(n.target), before=by_name[follower.name])

    def local(a: Any) -> Any:
        return fx.node.map_arg(a, lambda x: by_name[x.name])

    for n in new_nodes:
        mine = by_name[n.name]
        args, kwargs = local(n.args), local(n.kwargs)
        if args != mine.args or kwargs != mine.kwargs:
            mine.args, mine.kwargs = args, kwargs
            editor.record("set_args", mine.name, "sizes rewritten by channel removal")
