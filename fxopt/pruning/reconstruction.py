"""Reconstruction without retraining (METHODS.md section 4): repair the layers that read pruned channels.

A *reader* (linear, conv, addmm) computes ``W x``. After pruning it sees only the kept channels ``x'_K`` of its
input, and those may themselves have shifted because layers upstream were pruned. Readers are repaired one at a
time in graph order, each from calibration batches run through both the original model (``x``, the full input)
and the pruned model as repaired so far (``x'_K``), so every repair accounts for the ones before it:

- ``"bias"`` (bias compensation): ``x ~ P x'_K + c`` where ``P`` puts each kept channel back in its place and
  ``c = E[x] - P E[x'_K]``; the reader's bias gains ``W c`` (summed over kernel taps). For a removed channel
  ``c`` is its mean (variance-based pruning folds the mean into the bias); for a kept one, the mean shift that
  upstream pruning caused. Exact for constant channels; for a kxk conv with zero padding, exact away from borders.
- ``"ls"`` (least squares, LIAR-style): ``x ~ M^T [x'_K; 1]`` fitted on the calibration activations with a
  ridge that pulls ``M`` towards ``P`` (so with little data it falls back to plain pruning); the reader's kept
  columns become ``W M_K^T`` and its bias gains ``W m_1``. Removed channels are re-expressed through kept ones
  and the intercept carries bias compensation. A conv is linear in its input channels at every tap, so the
  update is applied per tap.

Each reader's record gives the relative error ``E||W x - W' z||^2 / E||W x||^2`` (square-rooted) before and after
repair, computed from the same moments (kernel taps treated as independent for convs).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx

from fxopt.analysis.analysis import Analysis
from fxopt.analysis.groups import Group
from fxopt.editor import GraphEditor
from fxopt.ops.view import PARAM_PREFIX, Axis
from fxopt.pruning.calibration import Calibration, capture, eval_mode
from fxopt.pruning.readers import Reader, find_readers, node_of
from fxopt.pruning.removal import KeptIndices, removal_masks
from fxopt.pruning.units import get_tensor, graph_inputs, split_batch

log = logging.getLogger(__name__)

MAX_ERROR_CHANNELS = 4096  # above this many input channels the I x I second moment for error figures is skipped


@dataclass(frozen=True)
class ReaderFix:
    """What reconstruction did at one reader.

    Attributes:
        reader: the reader node's name.
        removed: input channels the reader lost.
        kept: input channels it kept.
        applied: whether weights or bias changed.
        error_before: relative error of the reader's output with plain pruning (at this point of the repair).
        error_after: the same after repair.
        reason: the method, or why nothing was applied.
    """

    reader: str
    removed: int
    kept: int
    applied: bool
    error_before: float | None = None
    error_after: float | None = None
    reason: str = ""


@dataclass
class Moments:
    """Sums over calibration rows of the original input ``x`` and the pruned input ``z = [x'_K; 1]``."""

    n: int
    zz: torch.Tensor
    zx: torch.Tensor
    xx: torch.Tensor | None


def _rows(t: torch.Tensor, channel_dim: int) -> torch.Tensor:
    return t.detach().movedim(channel_dim, -1).reshape(-1, t.shape[channel_dim]).double()


def moments(analysis: Analysis, pruned: fx.GraphModule, reader: Reader, calibration: Calibration,
            with_xx: bool) -> Moments | None:
    """Accumulate the moments of one reader's inputs over every calibration batch."""
    acc: Moments | None = None
    with eval_mode(analysis.gm), eval_mode(pruned), torch.no_grad():
        for batch in calibration.batches:
            for args, _ in split_batch(analysis, graph_inputs(analysis, calibration.inputs(batch))):
                x = capture(analysis.gm, args, reader.input_key)
                xp = capture(pruned, args, reader.input_key)
                if x is None or xp is None:
                    return None
                rx, rz = _rows(x, reader.channel_dim), _rows(xp, reader.channel_dim)
                rz = torch.cat([rz, torch.ones(rz.shape[0], 1, dtype=rz.dtype)], 1)
                part = Moments(rx.shape[0], rz.T @ rz, rz.T @ rx, rx.T @ rx if with_xx else None)
                if acc is None:
                    acc = part
                    continue
                acc.n += part.n
                acc.zz += part.zz
                acc.zx += part.zx
                if acc.xx is not None and part.xx is not None:
                    acc.xx += part.xx
    return acc


def placement(keep: np.ndarray, size: int) -> torch.Tensor:
    """``P`` as a ``(K + 1, I)`` matrix: kept channel k goes back to position ``keep[k]``; intercept row zero."""
    p = torch.zeros(len(keep) + 1, size, dtype=torch.float64)
    p[torch.arange(len(keep)), torch.as_tensor(keep)] = 1.0
    return p


def solve(m: Moments, keep: np.ndarray, size: int, method: str, ridge: float) -> torch.Tensor:
    """The map ``M`` (``(K + 1, I)``) with ``x ~ M^T z``, for ``"bias"`` or ``"ls"``."""
    n = float(max(m.n, 1))
    prior = placement(keep, size)
    if method == "bias":
        mean_x, mean_z = m.zx[-1] / n, m.zz[-1, :-1] / n  # the ones column sums x and x'
        prior[-1] = mean_x - mean_z @ prior[:-1]
        return prior
    a, c = m.zz / n, m.zx / n
    k = len(keep)
    lam = ridge * float(torch.diagonal(a)[:k].mean()) if k else 0.0
    reg = torch.diag(torch.cat([torch.full((k,), lam, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)]))
    return torch.linalg.solve(a + reg, c + reg @ prior)


def _error(w: torch.Tensor, m: Moments, mapping: torch.Tensor) -> float | None:
    """``sum over taps of E||W_t x - W_t M^T z||^2`` relative to ``E||W_t x||^2``, square-rooted."""
    if m.xx is None:
        return None
    n = float(max(m.n, 1))
    xx, zx, zz = m.xx / n, m.zx / n, m.zz / n
    resid = xx - mapping.T @ zx - zx.T @ mapping + mapping.T @ zz @ mapping
    taps = w.reshape(w.shape[0], w.shape[1], -1).permute(2, 0, 1)  # taps, out, in
    ref = float(torch.einsum("toi,ij,toj->", taps, xx, taps))
    err = float(torch.einsum("toi,ij,toj->", taps, resid, taps))
    return float(np.sqrt(max(err, 0.0) / ref)) if ref > 0 else None


def _as_out_in(w: torch.Tensor, reader: Reader) -> torch.Tensor:
    return w.movedim((reader.weight_out_dim, reader.weight_in_dim), (0, 1))


def _from_out_in(w: torch.Tensor, reader: Reader) -> torch.Tensor:
    return w.movedim((0, 1), (reader.weight_out_dim, reader.weight_in_dim))


def attach_bias(editor: GraphEditor, reader: Reader, value: torch.Tensor) -> str:
    """Give a bias-less reader a bias parameter; returns its qualname."""
    if reader.module is not None:
        editor.set_tensor(f"{reader.module}.bias", value, "bias compensation")
        return f"{reader.module}.bias"
    gm = editor.gm
    node = node_of(gm, reader.node)
    owner_path = reader.weight.rpartition(".")[0]
    owner = gm.get_submodule(owner_path) if owner_path else gm
    qualname = editor.add_tensor("bias" if not hasattr(owner, "bias") else "fxopt_bias", value, owner=owner_path)
    getter = editor.get_attr(qualname, before=node)
    if len(node.args) >= 3:
        editor.set_args(node, (*node.args[:2], getter, *node.args[3:]))
    elif len(node.args) == 2 and "bias" not in node.kwargs:
        editor.set_args(node, (*node.args, getter))
    else:
        editor.set_args(node, node.args, {**node.kwargs, "bias": getter})
    gm.graph.lint()
    gm.recompile()
    return qualname


def _shared_weights(analysis: Analysis, readers: Sequence[Reader]) -> set[str]:
    """Weights read by more than one node or reachable under several names (tied): repairing one breaks another."""
    uses = Counter(r.weight for r in readers)
    shared = {w for w, n in uses.items() if n > 1}
    names: dict[int, list[str]] = {}
    for name, p in analysis.gm.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    for group in names.values():
        if len(group) > 1:
            shared.update(group)
    return shared


def reconstruct(analysis: Analysis, editor: GraphEditor, removals: Mapping[Group, Sequence[int]], method: str,
                calibration: Calibration, ridge: float = 1e-3) -> list[ReaderFix]:
    """Repair, in graph order, every reader of ``editor.gm`` whose input lost channels, through the editor.

    Args:
        analysis: the analysis of the unpruned model (original weights and activations come from its ``gm``).
        editor: edits the pruned model: ``removals`` removed from a graph with the analysis' node names.
        removals: the units removed per group.
        method: ``"bias"`` or ``"ls"`` (see the module docstring).
        calibration: the batches.
        ridge: strength of the pull towards plain pruning, relative to the mean channel energy (``"ls"``).

    Returns:
        One ReaderFix per reader that lost input channels.

    Example:
        >>> small = fxopt.prune_groups(analysis, removals)
        >>> fixes = reconstruct(analysis, GraphEditor(small), removals, "ls", Calibration(tuple(batches)))
    """
    if method not in ("bias", "ls"):
        raise ValueError(f"unknown reconstruction {method!r}: use 'bias' or 'ls'")
    kept = KeptIndices(analysis, removal_masks(analysis, removals))
    readers = find_readers(analysis)
    shared = _shared_weights(analysis, readers)
    fixes: list[ReaderFix] = []
    for r in readers:
        axis = analysis.axis(r.input_key, r.channel_dim)
        if axis is None:
            continue
        size = axis.size
        keep = kept.kept(axis)
        if len(keep) == size:
            continue
        removed = size - len(keep)
        skip = ("grouped conv: not reconstructed" if r.groups > 1 else
                "weight is shared with another layer" if r.weight in shared else "")
        if skip:
            fixes.append(ReaderFix(r.node, removed, len(keep), False, reason=skip))
            continue
        m = moments(analysis, editor.gm, r, calibration, with_xx=size <= MAX_ERROR_CHANNELS)
        if m is None:
            fixes.append(ReaderFix(r.node, removed, len(keep), False, reason="input not observed in calibration"))
            continue
        w = get_tensor(analysis.gm, r.weight)
        assert w is not None
        wo = _as_out_in(w.detach().double(), r)
        mapping = solve(m, keep, size, method, ridge)
        plain = placement(keep, size)
        before, after = _error(wo, m, plain), _error(wo, m, mapping)
        new_w = torch.einsum("oi...,ki->ok...", wo, mapping[:-1])
        bias_add = torch.einsum("oi...,i->o...", wo, mapping[-1])
        if bias_add.ndim > 1:
            bias_add = bias_add.reshape(bias_add.shape[0], -1).sum(1)
        _write(editor, kept, r, w, new_w, bias_add)
        fixes.append(ReaderFix(r.node, removed, len(keep), True, before, after, method))
    return fixes


def _write(editor: GraphEditor, kept: KeptIndices, r: Reader, w: torch.Tensor, new_w: torch.Tensor,
           bias_add: torch.Tensor) -> None:
    """Store the repaired weight (rows sliced to the kept outputs) and add to (or create) the bias."""
    kept_out = torch.as_tensor(kept.kept(Axis(PARAM_PREFIX + r.weight, r.weight_out_dim, w.shape[r.weight_out_dim])))
    target = editor.tensor(r.weight)
    assert target is not None
    value = _from_out_in(new_w.index_select(0, kept_out), r)
    if value.shape != target.shape:
        raise ValueError(f"reconstructed weight of {r.node} has shape {tuple(value.shape)}, "
                         f"expected {tuple(target.shape)}")
    add = bias_add.index_select(0, kept_out)
    # a new tensor, never written in place: the pruned module may share unchanged tensors with the original model
    editor.set_tensor(r.weight, value.to(target.dtype), "reconstructed")
    if r.bias is not None:
        bias = editor.tensor(r.bias)
        assert bias is not None
        editor.set_tensor(r.bias, bias.detach() + add.to(bias.dtype), "bias compensation")
    elif bool(add.abs().max() > 0):
        attach_bias(editor, r, add.to(target.dtype))
