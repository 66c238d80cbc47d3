"""Which dims of a model's inputs may change from call to call, and example inputs at other sizes.

A captured graph should run at any batch size, and a language model at any sequence length: its view, reshape
and expand arguments must read the input's sizes instead of repeating the example's numbers. This module
decides which dims are dynamic (``dynamic_dims``): dim 0 of every tensor input (the batch) and dim 1 of integer
or boolean inputs of two or more dims (the sequence of ``input_ids``, ``attention_mask``, position ids); image
dims (``spatial_dims``) are only checked. It builds the ``torch.export`` ``dynamic_shapes`` for them
(``export_shapes``, with ``Dim.AUTO`` so a dim the model needs static stays static instead of failing the
capture), widens example dims of size 1 to 2 for export (a size-1 dim is specialized to 1: ``widened``), and
makes inputs of other sizes for the checks (``resized``, ``other_sizes``, ``size_sets``), among the dims a
captured graph was found to vary (``captured_dims``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

DimKind = Literal["batch", "sequence", "spatial"]
Sizes = Sequence[Mapping[str, int]] | Literal["other"] | None
"""Other input sizes to check: ``[{"batch": 2, "sequence": 7}, ...]`` (a kind left out keeps the example's
size), ``"other"`` for two sets picked by ``other_sizes``, or None for none."""


@dataclass(frozen=True)
class InputDim:
    """One dim of one input tensor: ``input`` indexes the pytree-flattened inputs, ``dim`` the tensor's dims."""

    input: int
    dim: int
    kind: DimKind

    def __str__(self) -> str:
        return f"input {self.input} dim {self.dim} ({self.kind})"


def flat_tensors(inputs: Any) -> list[Any]:
    """The pytree leaves of ``inputs``, the order in which ``InputDim.input`` counts them."""
    leaves, _ = torch.utils._pytree.tree_flatten(inputs)
    return leaves


def dynamic_dims(inputs: Any) -> tuple[InputDim, ...]:
    """The dims of ``inputs`` that the captured graph should keep symbolic.

    Dim 0 of every tensor of one or more dims is a batch dim, unless its size differs from the first tensor's
    (a bias or mask of leading size 1 broadcast over the batch stays as traced); dim 1 of an integer tensor of
    two or more dims is a sequence dim (token ids, integer or boolean attention masks, position ids). Float dims
    past the batch (channels, pixels, features) stay as traced.

    Args:
        inputs: the example inputs, a tensor or a (nested) tuple of them.

    Returns:
        The dynamic dims in input order.

    Example:
        >>> dynamic_dims((torch.zeros(1, 8, dtype=torch.long),))
        (InputDim(input=0, dim=0, kind='batch'), InputDim(input=0, dim=1, kind='sequence'))
    """
    dims: list[InputDim] = []
    batch: int | None = None  # the first tensor's dim 0; an input of another leading size broadcasts against it
    for i, x in enumerate(flat_tensors(inputs)):
        if not isinstance(x, torch.Tensor) or x.ndim == 0 or x.numel() == 0:  # an empty example cannot be tiled
            continue
        batch = x.shape[0] if batch is None else batch
        if x.shape[0] != batch:
            continue
        dims.append(InputDim(i, 0, "batch"))
        if x.ndim >= 2 and not x.is_floating_point() and not x.is_complex():
            dims.append(InputDim(i, 1, "sequence"))
    return tuple(dims)


def spatial_dims(inputs: Any) -> tuple[InputDim, ...]:
    """The height and width of every 4-d floating input (images): dims checked, never made dynamic at export."""
    return tuple(InputDim(i, d, "spatial") for i, x in enumerate(flat_tensors(inputs))
                 if isinstance(x, torch.Tensor) and x.ndim == 4 and x.is_floating_point() and x.numel()
                 for d in (2, 3))


def resized(inputs: Any, sizes: dict[InputDim, int]) -> Any:
    """``inputs`` with the given dims set to new sizes; the values are the example's, tiled or cut.

    Tiling keeps integer inputs valid (token ids stay in the vocabulary, masks stay 0/1).

    Args:
        inputs: the example inputs.
        sizes: the new size of each dim.

    Returns:
        The inputs with the same pytree structure.
    """
    leaves, spec = torch.utils._pytree.tree_flatten(inputs)
    out = list(leaves)
    for dim, n in sizes.items():
        x = out[dim.input]
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{dim} is not a tensor input")
        have = x.shape[dim.dim]
        if have == 0:
            raise ValueError(f"{dim} has size 0 in the example; cannot tile it to {n}")
        reps = [1] * x.ndim
        reps[dim.dim] = -(-n // have)
        out[dim.input] = x.repeat(*reps).narrow(dim.dim, 0, n).contiguous()
    return torch.utils._pytree.tree_unflatten(out, spec)


def widened(inputs: Any, dims: Sequence[InputDim]) -> Any:
    """``inputs`` with every dynamic dim of example size 1 tiled to 2 (export specializes size-1 dims to 1)."""
    leaves = flat_tensors(inputs)
    return resized(inputs, {d: 2 for d in dims if leaves[d.input].shape[d.dim] == 1})


def export_shapes(inputs: tuple[Any, ...], dims: Sequence[InputDim]) -> tuple[Any, ...]:
    """``torch.export``'s ``dynamic_shapes`` for positional ``inputs``: ``Dim.AUTO`` on each dynamic dim.

    Returns:
        A tuple matching ``inputs``: for each tensor leaf a ``{dim: Dim.AUTO}`` dict (empty when static), None
        for non-tensor leaves.
    """
    leaves, spec = torch.utils._pytree.tree_flatten(inputs)
    per_leaf: list[Any] = [{} if isinstance(x, torch.Tensor) else None for x in leaves]
    for d in dims:
        per_leaf[d.input][d.dim] = torch.export.Dim.AUTO
    return tuple(torch.utils._pytree.tree_unflatten(per_leaf, spec))


def other_size(have: int, dim: InputDim) -> int:
    """One size other than the example's ``have`` and never 1: a batch of 2 (3 when the example's is 2), half the
    sequence (at least 2; the example's plus one when that is the example's), twice the image size."""
    if dim.kind == "batch":
        return 3 if have == 2 else 2
    if dim.kind == "spatial":
        return 2 * have
    n = max(2, have // 2)
    return n if n != have else have + 1


def other_sizes(inputs: Any, dims: Sequence[InputDim], count: int = 2) -> list[Any]:
    """``count`` input sets at sizes other than the example's, every dynamic dim changed in each.

    The first set takes ``other_size`` of each dim; in the second, batch dims become 3 (2 when the example's is
    3), sequence dims grow by 3 and image dims keep the example's size (odd sizes break models that halve
    them). The sizes avoid 1, which would hide broadcasting errors.

    Args:
        inputs: the example inputs.
        dims: the dims to change (usually ``dynamic_dims(inputs)``, less those the capture kept static).
        count: how many input sets, 1 to 2.

    Returns:
        The resized input sets; empty when ``dims`` is.
    """
    if not dims:
        return []
    leaves = flat_tensors(inputs)
    sets: list[Any] = []
    for k in range(count):
        sizes: dict[InputDim, int] = {}
        for d in dims:
            have = leaves[d.input].shape[d.dim]
            if k == 0:
                sizes[d] = other_size(have, d)
            elif d.kind != "spatial":
                sizes[d] = (2 if have == 3 else 3) if d.kind == "batch" else have + 3
        sets.append(resized(inputs, sizes))
    return sets


def captured_dims(module: Any, inputs: Any) -> tuple[InputDim, ...]:
    """The dims a captured graph module runs at any size (its ``TraceInfo.dynamic``); for any other module, the
    dims ``dynamic_dims`` picks."""
    meta = getattr(module, "meta", None)
    info = meta.get("fxopt", {}).get("trace") if isinstance(meta, dict) else None
    dims = getattr(info, "dynamic", None)
    return tuple(dims) if dims is not None else dynamic_dims(inputs)


def size_sets(inputs: Any, dims: Sequence[InputDim], sizes: Sizes) -> list[Any]:
    """The input sets that ``sizes`` asks for, built from ``inputs`` by ``resized``.

    Args:
        inputs: the example inputs.
        dims: the dims that may change (``captured_dims``); a kind in ``sizes`` changes all of its dims.
        sizes: see ``Sizes``.

    Returns:
        One input set per entry of ``sizes`` (two for ``"other"``, none for None).

    Raises:
        ValueError: for a kind no dim of ``dims`` has, naming the kinds there are.
    """
    if sizes is None:
        return []
    if isinstance(sizes, str):
        if sizes != "other":
            raise ValueError(f"sizes={sizes!r}: pass 'other' or a list like [{{'batch': 2, 'sequence': 7}}]")
        return other_sizes(inputs, dims)
    kinds = {d.kind for d in dims}
    sets = []
    for size in sizes:
        unknown = set(size) - kinds
        if unknown:
            raise ValueError(f"no dynamic {', '.join(sorted(unknown))} dim in the inputs; dynamic kinds: "
                             f"{', '.join(sorted(kinds)) or 'none'}")
        sets.append(resized(inputs, {d: size[d.kind] for d in dims if d.kind in size}))
    return sets
