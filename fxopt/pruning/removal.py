"""Physical removal of pruned units, written through a GraphEditor.

``remove_units`` is the only place fxopt changes a model's channel counts. Given the removed elements of each
atomic dim of an analysis, it slices every parameter and buffer along each axis to the kept indices (one new
tensor per tied tensor, so ties stay), lets each op kind's rewriter put the new sizes into module attributes and
graph constants (view sizes, split sizes, slice bounds, an SDPA's implicit scale) through an ``EditingResizer``,
and re-runs the graph under fake tensors to check that every tensor got exactly the size the analysis predicted.
Every write is an edit of the editor; a removal that does not check out is rolled back, leaving the graph as it
was, and its error raised.

``prune_groups`` is the public form: it copies the analysed graph module once (sharing every tensor, since
removal replaces the tensors it changes and never writes into them), removes the units from the copy and returns
it. The ``prune`` pass edits its own graph module in place through the same function.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import torch
from torch import fx

from fxopt.analysis.analysis import Analysis
from fxopt.analysis.groups import Group
from fxopt.editor import GraphEditor
from fxopt.errors import AnalysisError, PruneError
from fxopt.module_state import copy_sharing
from fxopt.ops.view import PARAM_PREFIX, Axis, OpView, output_refs
from fxopt.trace import propagate_shapes

log = logging.getLogger(__name__)

Removals = Mapping[Group, Sequence[int]] | Mapping[str, Sequence[int]] | Mapping[Group | str, Sequence[int]]
"""Unit indices to remove, per group or group id."""
_MISSING = object()


class KeptIndices:
    """New sizes and kept indices of every axis, given the removed elements of each atomic dim."""

    def __init__(self, analysis: Analysis, removed: Mapping[int, np.ndarray]) -> None:
        self.analysis = analysis
        self.removed = removed
        self._cache: dict[tuple[str, int, int], np.ndarray] = {}

    def kept(self, axis: Axis) -> np.ndarray:
        """Indices of ``axis`` that survive, ascending."""
        key = (axis.key, axis.dim, axis.size)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        dims = self.analysis.dims_of(axis)
        if not dims or not any(d in self.removed for d in dims):
            result = np.arange(axis.size)
        else:
            sizes = [self.analysis.size_of(d) for d in dims]
            grid = np.arange(axis.size).reshape(sizes)
            keep = [np.flatnonzero(~self.removed[d]) if d in self.removed else np.arange(s)
                    for d, s in zip(dims, sizes)]
            result = grid[np.ix_(*keep)].reshape(-1)
        self._cache[key] = result
        return result

    def new_size(self, axis: Axis) -> int:
        """Size of ``axis`` after removal."""
        return len(self.kept(axis))

    def changed(self, axis: Axis) -> bool:
        """Whether ``axis`` loses elements."""
        return self.new_size(axis) != axis.size


class EditingResizer(KeptIndices):
    """The ``fxopt.ops.Resizer`` rewriters get: new sizes, and writes that go through a GraphEditor."""

    def __init__(self, analysis: Analysis, removed: Mapping[int, np.ndarray], editor: GraphEditor) -> None:
        super().__init__(analysis, removed)
        self.editor = editor

    def set_arg(self, view: OpView, name: str, value: Any) -> None:
        """Set argument ``name`` of a functional call, positionally if it was passed positionally."""
        self.editor.set_arg(view.node, name, value, view.attrs.get("_argnames", ()))

    def set_args(self, node: fx.Node, args: tuple[Any, ...], kwargs: Mapping[str, Any] | None = None,
                 target: Any = None) -> None:
        """Replace ``node``'s arguments (and keyword arguments or target, when given); no edit when equal."""
        if args == node.args and kwargs in (None, node.kwargs) and target in (None, node.target):
            return
        self.editor.set_args(node, args, kwargs, target, "sizes rewritten by channel removal")

    def set_module_attr(self, view: OpView, attr: str, value: Any) -> None:
        """Set a plain attribute of the module ``view`` calls; no edit when it already holds ``value``."""
        if getattr(view.module, attr, _MISSING) != value:
            self.editor.set_module_attr(str(view.node.target), attr, value)

    def fail(self, node: fx.Node, why: str) -> NoReturn:
        """Stop: ``node`` cannot be rewritten."""
        raise PruneError(f"cannot rewrite {node.name}: {why}")


def removal_masks(analysis: Analysis, removals: Removals) -> dict[int, np.ndarray]:
    """Per atomic dim, a boolean mask of removed elements; validates the request."""
    removed: dict[int, np.ndarray] = {}
    known = {id(g) for g in analysis.groups}
    for key, units in removals.items():
        try:
            group: Group | str = analysis.group(key) if isinstance(key, str) else key
        except AnalysisError:
            group = key
        if not isinstance(group, Group) or id(group) not in known:
            frozen = next((f for f in analysis.frozen if f.id == getattr(group, "id", key)), None)
            if frozen is not None:
                raise PruneError(f"group {frozen.id} is frozen at {frozen.node}: {frozen.reason}")
            raise PruneError(f"{key!r} is not a group of this analysis")
        idx = np.asarray(sorted({int(u) for u in units}), dtype=np.int64)
        if idx.size == 0:
            continue
        if idx[0] < 0 or idx[-1] >= group.size:
            raise PruneError(f"group {group.id} has {group.size} units; indices must be in [0, {group.size})")
        if idx.size >= group.size:
            raise PruneError(f"removing all {group.size} units of group {group.id} would delete the layer; "
                             "keep at least one")
        for d, index in group.index.items():
            mask = removed.setdefault(d, np.zeros(analysis.size_of(d), dtype=bool))
            mask[index[idx].reshape(-1)] = True
    for d, mask in removed.items():
        if mask.all():
            raise PruneError(f"the request removes every channel of a dim of size {analysis.size_of(d)}")
    return removed


@dataclass(frozen=True)
class Removed:
    """What one removal changed: the sliced tensors (tied names included) and the nodes whose arguments changed."""

    parameters: tuple[str, ...]
    rewritten: tuple[str, ...]

    def record(self, removals: Removals) -> dict[str, Any]:
        """The ``gm.meta["fxopt"]["pruned"]`` entry: these lists and the units removed per group id."""
        return {"parameters": list(self.parameters), "rewritten": list(self.rewritten),
                "units": {(k.id if isinstance(k, Group) else k): len(v) for k, v in removals.items()}}


def _slice_tensor(t: torch.Tensor, kept: list[np.ndarray]) -> torch.Tensor:
    """``t`` at the ``kept`` indices of each dim, gathered in one step (no intermediate of a partly sliced ``t``)."""
    changed = [d for d, k in enumerate(kept) if len(k) != t.shape[d]]
    if len(changed) == 1:
        return t.detach().index_select(changed[0], torch.as_tensor(kept[changed[0]], device=t.device)).contiguous()
    index = tuple(torch.as_tensor(k, device=t.device).reshape([-1 if i == d else 1 for i in range(t.ndim)])
                  for d, k in enumerate(kept))
    return t.detach()[index].contiguous()


def _tensor_names(gm: fx.GraphModule) -> list[str]:
    named = [*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)]
    getters = [str(n.target) for n in gm.graph.nodes if n.op == "get_attr"]
    return list(dict.fromkeys([name for name, _ in named] + getters))


def _slice_tensors(editor: GraphEditor, kept: KeptIndices) -> list[str]:
    """Slice every tensor with a changed axis (once per tied tensor); returns the sliced names."""
    done: set[int] = set()
    sliced: list[str] = []
    tensors = [(name, editor.tensor(name)) for name in _tensor_names(editor.gm)]  # before any is replaced
    for name, t in tensors:
        if t is None or id(t) in done:
            continue
        keep = [kept.kept(Axis(PARAM_PREFIX + name, d, s)) for d, s in enumerate(t.shape)]
        if all(len(k) == s for k, s in zip(keep, t.shape)):
            continue  # an alias not read by the graph has no facts; the name the graph reads decides
        done.add(id(t))
        names = editor.aliases(name)
        editor.set_tensor(name, _slice_tensor(t, keep))
        sliced += names
    return sliced


def _verify_shapes(gm: fx.GraphModule, analysis: Analysis, kept: KeptIndices) -> None:
    """Propagate fake tensors through the pruned graph and compare every shape with the prediction."""
    expected = {n.name: [tuple(kept.new_size(a) for a in t.axes()) for t in output_refs(n)]
                for n in gm.graph.nodes if n.op != "output"}  # an output's shapes are its sources'; checked there
    try:
        propagate_shapes(gm, list(analysis.example_inputs))
    except Exception as exc:
        raise PruneError(f"the pruned graph does not run: {exc}") from exc
    for node in gm.graph.nodes:
        got = [t.shape for t in output_refs(node)]
        want = expected.get(node.name)
        if want is not None and got and got != want:
            raise PruneError(f"{node.name} produced shape {got} but the analysis expected {want}; "
                             "an op rule or rewriter is wrong for this node")


def _remove(editor: GraphEditor, analysis: Analysis, removed: Mapping[int, np.ndarray], verify: bool) -> Removed:
    gm = editor.gm
    resizer = EditingResizer(analysis, removed, editor)
    views = [analysis.registry.view(n, gm) for n in gm.graph.nodes
             if n.op in ("call_module", "call_function", "call_method")]
    mark = editor.checkpoint()
    sliced = _slice_tensors(editor, resizer)
    for view in views:
        rewriter = analysis.registry.rewriters.get(view.kind, None)
        if rewriter is not None:
            rewriter(view, resizer)
    gm.graph.lint()
    gm.recompile()
    if verify:
        _verify_shapes(gm, analysis, resizer)
    rewritten = dict.fromkeys(e.target for e in editor.edits[mark:] if e.action in ("set_arg", "set_args"))
    return Removed(tuple(sliced), tuple(rewritten))


def remove_units(editor: GraphEditor, analysis: Analysis, removed: Mapping[int, np.ndarray], verify: bool = True,
                 keep: bool = True) -> Removed:
    """Remove the ``removed`` elements (``removal_masks``) from ``editor.gm`` through the editor.

    Args:
        editor: edits ``analysis.gm`` itself or a copy of it (the same node and tensor names).
        analysis: the analysis the masks refer to.
        removed: per atomic dim, a mask of removed elements.
        verify: re-run the graph on fake tensors and check every tensor's new shape against the analysis.
        keep: ``False`` rolls the edits back even when the removal checks out (a trial).

    Raises:
        PruneError: a rewriter that cannot rewrite its node, or a graph that does not take the new sizes (naming
            the node); any error rolls the edits back first.
    """
    mark = editor.checkpoint()
    values = {n: n.meta.get("val", _MISSING) for n in editor.gm.graph.nodes}
    try:
        done = _remove(editor, analysis, removed, verify)
    except Exception:
        _roll_back(editor, mark, values)
        raise
    if not keep:
        _roll_back(editor, mark, values)
    return done


def _roll_back(editor: GraphEditor, mark: int, values: Mapping[fx.Node, Any]) -> None:
    editor.rollback(mark)
    for node, val in values.items():
        if val is _MISSING:
            node.meta.pop("val", None)
        else:
            node.meta["val"] = val


def copy_sharing_tensors(gm: fx.GraphModule, fresh: frozenset[str] | set[str] = frozenset()) -> fx.GraphModule:
    """Deep-copy ``gm``'s modules and graph but share every parameter and buffer except those named in ``fresh``.

    Shared tensors must not be mutated through the copy; removal replaces the tensors it changes instead.
    """
    named = [*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)]
    return copy_sharing(gm, [t for name, t in named if name not in fresh])


def prune_groups(analysis: Analysis, removals: Removals, verify: bool = True) -> fx.GraphModule:
    """Remove the given units of the given groups and return a smaller GraphModule that runs.

    Args:
        analysis: the result of ``fxopt.analyze``; its graph module is copied, never changed.
        removals: for each group (or group id), the unit indices to remove.
        verify: re-run the graph on fake tensors and check every tensor's new shape against the analysis
            (skip only when the caller runs the model on real inputs right away).

    Returns:
        A new GraphModule with sliced parameters and rewritten shapes; ``gm.meta["fxopt"]["pruned"]`` lists
        what was removed.

    Raises:
        PruneError: for frozen or unknown groups, out-of-range indices, a group emptied, or a graph that does
            not take the new sizes (naming the node).

    Example:
        >>> a = fxopt.analyze(model, x)
        >>> g = a.groups[0]
        >>> small = fxopt.prune_groups(a, {g: range(g.size // 2)})
    """
    removed = removal_masks(analysis, removals)
    gm = copy_sharing_tensors(analysis.gm)
    if not removed:
        return gm
    done = remove_units(GraphEditor(gm), analysis, removed, verify)
    gm.meta["fxopt"] = {**gm.meta.get("fxopt", {}), "pruned": done.record(removals)}
    return gm
