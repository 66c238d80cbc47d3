"""Reading a group's units out of tensors: parameter slices and activation channels per unit.

``Analysis.unit_indices`` gives the indices of each unit along any tensor axis, parameter or activation (the
input of the layer that reads a group's channels). Importance criteria and reconstruction also need the parameter
values themselves, per unit and per member; they are read here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import fx

from fxopt.analysis.analysis import Analysis
from fxopt.analysis.groups import Group, Member
from fxopt.ops.view import PARAM_PREFIX


def get_tensor(module: torch.nn.Module, qualname: str) -> torch.Tensor | None:
    """The parameter or buffer ``qualname`` of ``module`` (``None`` when there is no such tensor)."""
    prefix, _, leaf = qualname.rpartition(".")
    try:
        owner = module.get_submodule(prefix) if prefix else module
    except AttributeError:
        return None
    value = getattr(owner, leaf, None)
    return value if isinstance(value, torch.Tensor) else None


def is_parameter(module: torch.nn.Module, qualname: str) -> bool:
    """Whether ``qualname`` names an ``nn.Parameter`` (buffers such as running statistics are not weights)."""
    return isinstance(get_tensor(module, qualname), torch.nn.Parameter)


def unit_slices(analysis: Analysis, group: Group) -> dict[Member, np.ndarray]:
    """``Analysis.unit_slices`` for the members, vectorized (members whose axis has no atoms are left out)."""
    out = {}
    for m in group.members:
        idx = analysis.unit_indices(group, PARAM_PREFIX + m.qualname, m.dim)
        if idx is not None:
            out[m] = idx
    return out


def unit_rows(tensor: torch.Tensor, dim: int, indices: np.ndarray) -> torch.Tensor:
    """``tensor``'s slices of each unit as a ``(units, k * rest)`` matrix; ``indices`` is ``(units, k)``."""
    flat = torch.as_tensor(indices.reshape(-1), device=tensor.device, dtype=torch.long)
    picked = tensor.detach().index_select(dim, flat).movedim(dim, 0)
    return picked.reshape(indices.shape[0], -1)


def dim_sums(tensor: torch.Tensor, dim: int) -> np.ndarray:
    """Sum of ``tensor`` over every dim but ``dim``: one value per index along ``dim`` (float64 numpy)."""
    t = tensor.detach()
    return t.movedim(dim, 0).reshape(t.shape[dim], -1).sum(1).double().cpu().numpy()


SLAB_BYTES = 64 * 2 ** 20
"""Largest temporary ``transformed_sums`` makes: a slab of a tensor's leading rows, transformed."""

Transform = Callable[[torch.Tensor], torch.Tensor] | float
"""An elementwise function of a tensor, or an exponent ``p`` standing for ``|t| ** p``."""


def power_sums(tensor: torch.Tensor, p: float, dims: Iterable[int]) -> dict[int, np.ndarray]:
    """For each dim in ``dims``, the sum of ``|tensor| ** p`` over every other dim, as a norm reduction.

    ``torch.linalg.vector_norm`` reduces without making any temporary of the tensor's size, and so leaves no
    freed scratch memory behind in the allocator's heap either.

    Example:
        >>> power_sums(torch.ones(4, 3), 1, (0, 1))
        {0: array([3., 3., 3., 3.]), 1: array([4., 4., 4.])}
    """
    t = tensor.detach()
    out = {}
    for d in sorted(set(dims)):
        others = [i for i in range(t.ndim) if i != d]
        norms = torch.linalg.vector_norm(t, ord=p, dim=others) if others else t.abs()
        out[d] = (norms.double() ** p).cpu().numpy()
    return out


def transformed_sums(tensor: torch.Tensor, transform: Transform, dims: Iterable[int],
                     slab_bytes: int = SLAB_BYTES) -> dict[int, np.ndarray]:
    """For each dim in ``dims``, ``dim_sums(transform(tensor), dim)``, without materializing ``transform(tensor)``.

    An exponent ``p`` is summed by ``power_sums``. A function is applied and reduced slab by slab along dim 0
    (about ``slab_bytes`` each), so scoring a 2 GB weight needs 64 MB of scratch memory, not another 2 GB; it
    must be elementwise (``abs``, squaring, a power).

    Example:
        >>> transformed_sums(torch.ones(4, 3), torch.square, (0, 1))
        {0: array([3., 3., 3., 3.]), 1: array([4., 4., 4.])}
    """
    if not callable(transform):
        return power_sums(tensor, transform, dims)
    t = tensor.detach()
    wanted = sorted(set(dims))
    row_bytes = max(t[0].numel() * t.element_size(), 1) if t.ndim and t.shape[0] else 1
    step = max(1, slab_bytes // row_bytes)
    sums = {d: torch.zeros(t.shape[d], dtype=torch.float64) for d in wanted}
    for start in range(0, t.shape[0] if t.ndim else 0, step):
        part = transform(t[start:start + step])
        for d in wanted:
            reduced = part.movedim(d, 0).reshape(part.shape[d], -1).sum(1).double().cpu()
            if d == 0:
                sums[d][start:start + part.shape[0]] = reduced
            else:
                sums[d] += reduced
    return {d: v.numpy() for d, v in sums.items()}


def member_sums(analysis: Analysis, group: Group, transform: Transform,
                module: torch.nn.Module | None = None, roles: tuple[str, ...] = ("producer", "consumer"),
                parameters_only: bool = True, cache: dict[tuple[str, int], np.ndarray] | None = None) \
        -> Iterator[tuple[Member, np.ndarray]]:
    """Per member, ``sum over each unit's slices of transform(tensor)``: an array of ``group.size`` values.

    Reduces each tensor to its member dim once (cached per ``(qualname, dim)`` in ``cache``), then sums the
    unit's indices: no copy of the sliced weights is made. ``transform`` is an exponent ``p`` (``|t| ** p``,
    summed as a norm reduction) or an elementwise function (applied slab by slab): see ``transformed_sums``.
    """
    source = analysis.gm if module is None else module
    for member, idx in unit_slices(analysis, group).items():
        if member.role not in roles:
            continue
        key = (member.qualname, member.dim)
        vec = cache.get(key) if cache is not None else None
        if vec is None:
            t = get_tensor(source, member.qualname)
            if t is None or (parameters_only and not isinstance(t, torch.nn.Parameter)) or t.device.type == "meta":
                continue
            # other members may read this tensor along another dim: with a cache, reduce along those too
            dims = {member.dim} | ({m.dim for m in group.members} | {0, 1} if cache is not None else set())
            sums = transformed_sums(t, transform, [d for d in dims if d < t.ndim])
            vec = sums[member.dim]
            if cache is not None:
                for d, v in sums.items():
                    cache.setdefault((member.qualname, d), v)
        yield member, vec[idx].sum(1)


def member_rows(analysis: Analysis, group: Group, module: torch.nn.Module | None = None,
                parameters_only: bool = True) -> Iterator[tuple[Member, torch.Tensor]]:
    """Each member's values per unit, ``(group.size, -1)``, from ``module`` (default: analysis.gm).

    Buffers (running statistics, rotary tables) are skipped unless ``parameters_only`` is False.
    """
    source = analysis.gm if module is None else module
    for member, idx in unit_slices(analysis, group).items():
        t = get_tensor(source, member.qualname)
        if t is None or (parameters_only and not isinstance(t, torch.nn.Parameter)):
            continue
        if t.device.type == "meta" or idx.size == 0:
            continue
        yield member, unit_rows(t, member.dim, idx)


def owner_module(qualname: str) -> str:
    """The module path owning a parameter: ``"layer1.0.conv1"`` for ``"layer1.0.conv1.weight"``."""
    return qualname.rpartition(".")[0]


def graph_inputs(analysis: Analysis, inputs: Any) -> list[Any]:
    """A batch of model inputs as ``analysis.gm``'s placeholders take them (flattened for export graphs)."""
    as_tuple = inputs if isinstance(inputs, tuple) else tuple(inputs) if isinstance(inputs, list) else (inputs,)
    flat, _ = torch.utils._pytree.tree_flatten(as_tuple)
    n_ph = sum(1 for n in analysis.gm.graph.nodes if n.op == "placeholder")
    return list(flat) if len(flat) == n_ph else list(as_tuple)


def static_batch(analysis: Analysis) -> int | None:
    """The batch size baked into an exported graph (``None`` for symbolic-traced graphs, which take any batch)."""
    info = analysis.gm.meta.get("fxopt", {}).get("trace")
    if getattr(info, "frontend", None) != "export":
        return None
    for n in analysis.gm.graph.nodes:
        val = n.meta.get("val") if n.op == "placeholder" else None
        if isinstance(val, torch.Tensor) and val.ndim:
            return int(val.shape[0])
    return None


def split_batch(analysis: Analysis, args: Sequence[Any], *extra: Any) -> list[tuple[list[Any], tuple[Any, ...]]]:
    """Graph inputs (and per-sample ``extra`` values such as targets) cut into chunks an exported graph accepts.

    Exported graphs have the example's batch size baked into their shape constants; a calibration batch that is a
    multiple of it is run in pieces. Symbolic-traced graphs take the batch whole.
    """
    size = static_batch(analysis)
    tensors = [a for a in args if isinstance(a, torch.Tensor) and a.ndim]
    if size is None or not tensors or tensors[0].shape[0] == size:
        return [(list(args), extra)]
    total = int(tensors[0].shape[0])
    if total % size:
        raise ValueError(f"calibration batch of {total} does not split into the exported graph's batch of {size}")

    def cut(v: Any, i: int) -> Any:
        return v[i:i + size] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == total else v

    return [([cut(a, i) for a in args], tuple(cut(e, i) for e in extra)) for i in range(0, total, size)]


def param_count(module: torch.nn.Module) -> int:
    """Number of parameter elements (tied parameters counted once)."""
    return sum(p.numel() for p in module.parameters())


def node_by_name(gm: fx.GraphModule, names: Sequence[str]) -> dict[str, fx.Node]:
    """The nodes of ``gm`` with the given names."""
    wanted = set(names)
    return {n.name: n for n in gm.graph.nodes if n.name in wanted}
