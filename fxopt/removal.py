"""Physical removal of pruned units: slice every member parameter and rewrite every shape constant.

``prune_groups`` is the only place fxopt changes a model's channel counts. It works on a copy of the analysed
graph module: parameters and buffers are sliced along each axis to the kept indices of the atomic classes that
axis is made of, module attributes (``in_channels``, ``num_features``, ...) and graph constants (view sizes,
split sizes, slice bounds, an SDPA's implicit scale) are rewritten by each op kind's rewriter, and the result
is re-run under fake tensors to check that every tensor got exactly the size the analysis predicted.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import numpy as np
import torch
import torch.fx as fx

from fxopt.analysis.analysis import Analysis
from fxopt.analysis.groups import Group
from fxopt.errors import PruneError
from fxopt.ops.forms import set_call_arg
from fxopt.ops.view import PARAM_PREFIX, Axis, OpView, output_refs
from fxopt.trace import propagate_shapes

log = logging.getLogger(__name__)


class Resizer:
    """New sizes and kept indices of every axis, given the removed elements of each atomic class."""

    def __init__(self, analysis: Analysis, removed: Mapping[int, np.ndarray]) -> None:
        self.analysis = analysis
        self.removed = removed
        self.edited: list[str] = []
        self._cache: dict[tuple[str, int, int], np.ndarray] = {}

    def kept(self, axis: Axis) -> np.ndarray:
        """Indices of ``axis`` that survive, ascending."""
        key = (axis.key, axis.dim, axis.size)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        atoms = self.analysis.axes.of(axis)
        if not atoms or not any(a in self.removed for a in atoms):
            result = np.arange(axis.size)
        else:
            sizes = [self.analysis.facts.table.size[a] for a in atoms]
            grid = np.arange(axis.size).reshape(sizes)
            keep = [np.flatnonzero(~self.removed[a]) if a in self.removed else np.arange(s)
                    for a, s in zip(atoms, sizes)]
            result = grid[np.ix_(*keep)].reshape(-1)
        self._cache[key] = result
        return result

    def new_size(self, axis: Axis) -> int:
        """Size of ``axis`` after removal."""
        return int(len(self.kept(axis)))

    def changed(self, axis: Axis) -> bool:
        """Whether ``axis`` loses elements."""
        return self.new_size(axis) != axis.size

    def set_arg(self, view: OpView, name: str, value: Any) -> None:
        """Set argument ``name`` of a functional call, positional if it was passed positionally."""
        set_call_arg(view.node, name, value, view.attrs.get("_argnames", ()))
        self.touched(view.node)

    def set_args(self, node: fx.Node, args: tuple[Any, ...], kwargs: Mapping[str, Any] | None = None,
                 target: Any = None) -> None:
        """Replace ``node``'s arguments (and keyword arguments or target, when given)."""
        node.args = args
        if kwargs is not None:
            node.kwargs = dict(kwargs)
        if target is not None:
            node.target = target
        self.touched(node)

    def set_module_attr(self, view: OpView, attr: str, value: Any) -> None:
        """Set a plain attribute of the module ``view`` calls."""
        setattr(view.module, attr, value)

    def touched(self, node: fx.Node) -> None:
        """Record that ``node``'s arguments were rewritten."""
        self.edited.append(node.name)

    def fail(self, node: fx.Node, why: str) -> NoReturn:
        """Stop: ``node`` cannot be rewritten."""
        raise PruneError(f"cannot rewrite {node.name}: {why}")


def removal_masks(analysis: Analysis, removals: Mapping[Group | str, Sequence[int]]) -> dict[int, np.ndarray]:
    """Per atomic class, a boolean mask of removed elements; validates the request."""
    table = analysis.facts.table
    removed: dict[int, np.ndarray] = {}
    known = {id(g) for g in analysis.groups}
    for key, units in removals.items():
        try:
            group = analysis.group(key) if isinstance(key, str) else key
        except KeyError:
            group = key
        if id(group) not in known:
            frozen = next((f for f in analysis.frozen if f.id == getattr(group, "id", key)), None)
            if frozen is not None:
                raise PruneError(f"group {frozen.id} is frozen at {frozen.node}: {frozen.reason}")
            raise PruneError(f"{key!r} is not a group of this analysis")
        idx = np.asarray(sorted(set(int(u) for u in units)), dtype=np.int64)
        if idx.size == 0:
            continue
        if idx[0] < 0 or idx[-1] >= group.size:
            raise PruneError(f"group {group.id} has {group.size} units; indices must be in [0, {group.size})")
        if idx.size >= group.size:
            raise PruneError(f"removing all {group.size} units of group {group.id} would delete the layer; "
                             "keep at least one")
        for c, index in group.index.items():
            mask = removed.setdefault(c, np.zeros(table.size[c], dtype=bool))
            mask[index[idx].reshape(-1)] = True
    for c, mask in removed.items():
        if mask.all():
            raise PruneError(f"the request removes every channel of a dim of size {table.size[c]}")
    return removed


def _slice_tensor(t: torch.Tensor, kept: list[np.ndarray]) -> torch.Tensor:
    out = t
    for d, k in enumerate(kept):
        if len(k) != t.shape[d]:
            out = out.index_select(d, torch.as_tensor(k, device=t.device))
    return out.contiguous() if out is not t else t


def _set_tensor(gm: fx.GraphModule, qualname: str, value: torch.Tensor, old: torch.Tensor) -> None:
    prefix, _, leaf = qualname.rpartition(".")
    owner = gm.get_submodule(prefix) if prefix else gm
    if isinstance(value, torch.nn.Parameter):
        setattr(owner, leaf, value)
    elif leaf in getattr(owner, "_buffers", {}):
        owner._buffers[leaf] = value
    else:
        setattr(owner, leaf, value)


def slice_parameters(gm: fx.GraphModule, analysis: Analysis, resizer: Resizer) -> list[str]:
    """Slice every parameter/buffer with a changed axis; tied tensors stay tied. Returns the sliced names."""
    dims: dict[str, int] = {}
    for key, dim in analysis.facts.vars:
        if key.startswith(PARAM_PREFIX):
            dims[key] = max(dims.get(key, -1), dim)
    done: dict[int, torch.Tensor] = {}
    sliced = []
    for key in dims:
        qualname = key[len(PARAM_PREFIX):]
        try:
            old = gm.get_parameter(qualname)
        except AttributeError:
            try:
                old = gm.get_buffer(qualname)
            except AttributeError:
                old = getattr(gm, qualname, None)
        if not isinstance(old, torch.Tensor):
            continue
        kept = [resizer.kept(Axis(key, d, s)) for d, s in enumerate(old.shape)]
        if all(len(k) == s for k, s in zip(kept, old.shape)):
            continue
        new = done.get(id(old))
        if new is None:
            new = _slice_tensor(old.data if isinstance(old, torch.nn.Parameter) else old, kept)
            if isinstance(old, torch.nn.Parameter):
                new = torch.nn.Parameter(new.detach(), requires_grad=old.requires_grad)
            done[id(old)] = new
        _set_tensor(gm, qualname, new, old)
        sliced.append(qualname)
    return sliced


def copy_sharing_tensors(gm: fx.GraphModule, fresh: set[str] = frozenset()) -> fx.GraphModule:  # type: ignore[assignment]
    """Deep-copy ``gm``'s modules and graph but share every parameter and buffer except those named in ``fresh``.

    Shared tensors must not be mutated through the copy; removal replaces the tensors it changes instead.
    """
    memo: dict[int, Any] = {}
    for name, t in [*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)]:
        if name not in fresh:
            memo[id(t)] = t
    return copy.deepcopy(gm, memo)


def prune_groups(analysis: Analysis, removals: Mapping[Group | str, Sequence[int]],
                 verify: bool = True) -> fx.GraphModule:
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
    resizer = Resizer(analysis, removed)
    if not removed:
        return gm
    views = [analysis.registry.view(n, gm) for n in gm.graph.nodes
             if n.op in ("call_module", "call_function", "call_method")]
    sliced = slice_parameters(gm, analysis, resizer)
    for view in views:
        rewriter = analysis.registry.rewriters.get(view.kind)
        if rewriter is not None:
            rewriter(view, resizer)
    gm.graph.lint()
    gm.recompile()
    if verify:
        _verify_shapes(gm, analysis, resizer)
    meta = dict(gm.meta.get("fxopt", {}))
    meta["pruned"] = {"parameters": sliced, "rewritten": resizer.edited,
                      "units": {(k.id if isinstance(k, Group) else k): len(v) for k, v in removals.items()}}
    gm.meta["fxopt"] = meta
    return gm


def _verify_shapes(gm: fx.GraphModule, analysis: Analysis, resizer: Resizer) -> None:
    """Propagate fake tensors through the pruned graph and compare every shape with the prediction."""
    expected = {n.name: [tuple(resizer.new_size(a) for a in t.axes()) for t in output_refs(n)]
                for n in gm.graph.nodes}
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

