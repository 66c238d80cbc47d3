"""What a node costs, hardware-neutral: FLOPs, bytes moved, and the op category a roofline's efficiency reads.

Each op kind registers a cost function beside its channel rule and rewriter (``@REGISTRY.cost("conv")`` in the
family's module). It reads the node's ``OpView`` and the sizes of its tensors through a ``Sizes`` and returns an
``OpCost`` of sympy expressions. The caller decides what a size is: ``fxopt.cost`` passes sizes symbolic in the
batch and sequence length, the pruning cost model sizes that are products of kept channel counts. Turning FLOPs
and bytes into time is the target's business (``fxopt.analysis.cost.roofline_time``).

A kind without a cost function costs ``default_cost``: one FLOP per output element (category ``"other"``) plus
the bytes of every tensor it reads and writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import sympy
import torch
import torch.fx as fx

from fxopt.ops.view import OpView, TensorRef

CATEGORIES = ("matmul", "conv", "depthwise", "grouped", "attention", "norm", "elementwise", "memory", "view",
              "other")
"""The op categories a cost names; a target gives each its achievable fraction of peak compute."""

ZERO = sympy.Integer(0)


@dataclass(frozen=True)
class OpCost:
    """The cost of one node, as expressions in the sizes of its tensors.

    Attributes:
        category: one of ``CATEGORIES``; selects the target's efficiency. ``"view"`` nodes move nothing and take
            no time.
        flops: floating-point operations, a multiply-add counted as two.
        bytes_read: bytes of the tensors the node reads (activations and parameters, each once).
        bytes_written: bytes of the tensors the node writes.
        macs: the multiply-accumulates among ``flops`` (contractions only, as torch's FLOP counter counts them).
        aligned: channel counts that run at full speed only as multiples of the target's channel alignment (a
            matmul's or a conv's weight dims); the pruning cost model penalizes plans that miss it.
    """

    category: str
    flops: sympy.Expr
    bytes_read: sympy.Expr
    bytes_written: sympy.Expr
    macs: sympy.Expr = ZERO
    aligned: tuple[sympy.Expr, ...] = ()

    @property
    def bytes(self) -> sympy.Expr:
        """Bytes read and written."""
        return self.bytes_read + self.bytes_written


class Sizes:
    """Sizes of a node's tensors as sympy expressions; this base class gives the example shapes.

    Activations take their shapes from ``value(node)`` (``node.meta["val"]`` here), stored tensors from their
    ``TensorRef``. Subclasses override ``value`` (symbolic values) or ``size`` (sizes in other terms).

    Args:
        gm: the graph module the nodes belong to (for the dtypes of module parameters).
    """

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm

    def value(self, node: fx.Node) -> Any:
        """The value of ``node`` whose shapes count (a tensor, or a tuple of them)."""
        return node.meta.get("val")

    def tensor(self, ref: TensorRef) -> torch.Tensor | None:
        """The value of an activation (or ``get_attr``) ref; ``None`` for a module's parameter."""
        if ref.node is None:
            return None
        return _element(self.value(ref.node), ref.key)

    def size(self, ref: TensorRef, dim: int) -> sympy.Expr:
        """Size of axis ``dim`` of ``ref`` (negative dims count from the end)."""
        t = self.tensor(ref)
        if t is not None and t.ndim == ref.ndim:
            return _expr(t.shape[dim])
        return sympy.Integer(ref.shape[dim])

    def itemsize(self, ref: TensorRef) -> int:
        """Bytes per element of ``ref`` (4 when its dtype is unknown)."""
        t = self.tensor(ref)
        if t is None and ref.qualname is not None:
            t = _stored_tensor(self.gm, ref.qualname)
        return t.element_size() if isinstance(t, torch.Tensor) else 4

    def shape(self, ref: TensorRef) -> tuple[sympy.Expr, ...]:
        """Every axis' size."""
        return tuple(self.size(ref, d) for d in range(ref.ndim))

    def numel(self, ref: TensorRef, dims: Iterable[int] | None = None) -> sympy.Expr:
        """Elements of ``ref``, or the product of the sizes of ``dims`` only."""
        ds = range(ref.ndim) if dims is None else dims
        return sympy.Mul(*[self.size(ref, d) for d in ds])

    def nbytes(self, ref: TensorRef) -> sympy.Expr:
        """Bytes of ``ref``."""
        return self.numel(ref) * self.itemsize(ref)


CostRule = Callable[[OpView, Sizes], OpCost]


def _element(value: Any, key: str) -> torch.Tensor | None:
    """The tensor a TensorRef key names inside a node's value: ``"name#i"`` and ``"name#i.j"`` index tuples."""
    if isinstance(value, torch.Tensor):
        return value
    _, _, path = key.rpartition("#")
    for part in path.split(".") if path else ():
        if not (isinstance(value, (tuple, list)) and part.isdigit() and int(part) < len(value)):
            return None
        value = value[int(part)]
    return value if isinstance(value, torch.Tensor) else None


def _stored_tensor(gm: fx.GraphModule, qualname: str) -> Any:
    """The parameter or buffer ``qualname`` of ``gm``, or ``None``."""
    owner, _, name = qualname.rpartition(".")
    try:
        module = gm.get_submodule(owner) if owner else gm
    except AttributeError:
        return None
    return getattr(module, name, None)


def _expr(size: Any) -> sympy.Expr:
    """A (symbolic) size as a sympy expression."""
    if isinstance(size, torch.SymInt):
        return sympy.sympify(size.node.expr)
    return sympy.Integer(int(size))


def out_numel(view: OpView, sizes: Sizes) -> sympy.Expr:
    """Elements of everything the node writes."""
    return sympy.Add(*[sizes.numel(o) for o in view.outputs])


def traffic(view: OpView, sizes: Sizes) -> tuple[sympy.Expr, sympy.Expr]:
    """Bytes read (every distinct input and parameter once) and bytes written (every output)."""
    read = {r.key: r for r in [*view.inputs, *view.params.values()] if r is not None}
    return (sympy.Add(*[sizes.nbytes(r) for r in read.values()]),
            sympy.Add(*[sizes.nbytes(o) for o in view.outputs]))


def op_cost(view: OpView, sizes: Sizes, category: str, flops: sympy.Expr | int = 0, macs: sympy.Expr | int = 0,
            aligned: tuple[sympy.Expr, ...] = ()) -> OpCost:
    """An OpCost that reads every input and parameter and writes every output once."""
    read, written = traffic(view, sizes)
    return OpCost(category, sympy.sympify(flops), read, written, sympy.sympify(macs), aligned)


def default_cost(view: OpView, sizes: Sizes) -> OpCost:
    """One FLOP per output element (category ``"other"``) plus the memory traffic.

    The cost of a kind that registered none, and of unknown ops: a guess that keeps such nodes in the totals
    and their time at least that of their memory traffic, never zero.
    """
    return op_cost(view, sizes, "other", out_numel(view, sizes))


def elementwise_cost(view: OpView, sizes: Sizes) -> OpCost:
    """Elementwise: one FLOP per output element plus the memory traffic."""
    return op_cost(view, sizes, "elementwise", out_numel(view, sizes))


def memory_cost(view: OpView, sizes: Sizes) -> OpCost:
    """Data movement only: no FLOPs, the bytes of every tensor read and written."""
    return op_cost(view, sizes, "memory")


def view_cost(view: OpView, sizes: Sizes) -> OpCost:
    """A view of its input (or a size read): no FLOPs, no bytes, no time."""
    return OpCost("view", ZERO, ZERO, ZERO)
