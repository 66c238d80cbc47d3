"""OpView: one normalized description of what an FX node computes.

``call_module`` nodes (``nn.Conv2d``), ``call_function`` nodes (``F.conv2d``, ``torch.cat``, ``aten.conv2d``) and
``call_method`` nodes (``x.view``) that compute the same thing get the same ``kind`` and the same canonical
inputs, parameters and attributes, so channel rules, pruning edits, fusion and cost are written once.

Tensors are named by ``TensorRef.key``: a node's name for activations (``"name#i"`` for element ``i`` of a
tuple-valued node) and ``"param:<qualified name>"`` for parameters and buffers, whether they reach the graph
through a module or through a ``get_attr`` node.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

PARAM_PREFIX = "param:"


@dataclass(frozen=True)
class Axis:
    """One dimension of one tensor: the unit channel rules speak about."""

    key: str
    dim: int
    size: int


@dataclass(frozen=True)
class TensorRef:
    """A tensor an op reads or writes: an activation node or a parameter/buffer of the root module."""

    key: str
    shape: tuple[int, ...]
    node: fx.Node | None = None
    qualname: str | None = None

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    @property
    def is_param(self) -> bool:
        """Whether this is a parameter or buffer of the root module."""
        return self.qualname is not None

    def axis(self, dim: int) -> Axis:
        """The axis ``dim`` (negative dims count from the end)."""
        d = dim % self.ndim if self.ndim else 0
        return Axis(self.key, d, self.shape[d])

    def axes(self) -> list[Axis]:
        """All axes in order."""
        return [Axis(self.key, d, s) for d, s in enumerate(self.shape)]


@dataclass(frozen=True)
class OpView:
    """What a node computes, in canonical form.

    Attributes:
        node: the FX node.
        kind: the op family member, e.g. ``"conv"``, ``"linear"``, ``"add"``, ``"view"``.
        inputs: tensor operands in canonical order (``None`` where an optional operand is absent).
        params: parameter tensors by role (``"weight"``, ``"bias"``, ...), ``None`` when absent.
        attrs: non-tensor attributes (stride, groups, dims, sizes, ...), canonical names.
        outputs: the tensors the node produces (several for split-like ops).
        module: the leaf module for ``call_module`` nodes.
    """

    node: fx.Node
    kind: str
    inputs: tuple[TensorRef | None, ...]
    params: Mapping[str, TensorRef | None] = field(default_factory=dict)
    attrs: Mapping[str, Any] = field(default_factory=dict)
    outputs: tuple[TensorRef, ...] = ()
    module: torch.nn.Module | None = None

    @property
    def out(self) -> TensorRef:
        """The single output (first output of multi-output ops)."""
        return self.outputs[0]

    def module_tensor(self, name: str) -> torch.Tensor:
        """The tensor attribute ``name`` (parameter or buffer) of this node's leaf module.

        Raises:
            ValueError: the node is not a ``call_module`` node, or its module has no tensor ``name``.
        """
        if self.module is None:
            raise ValueError(f"{self.node.name} is not a call_module node: it has no module tensor {name!r}")
        tensor = tensor_attr(self.module, name)
        if tensor is None:
            raise ValueError(f"{self.node.name}'s {type(self.module).__name__} has no tensor {name!r}")
        return tensor

    def tensors(self) -> list[TensorRef]:
        """Every tensor the node touches: inputs, parameters and outputs."""
        found = [t for t in self.inputs if t is not None]
        found += [t for t in self.params.values() if t is not None]
        return found + list(self.outputs)


def tensor_attr(module: torch.nn.Module, name: str) -> torch.Tensor | None:
    """A module's tensor attribute (parameter or buffer), ``None`` when it is absent or set to ``None``.

    Raises:
        TypeError: the attribute exists but holds something other than a tensor.
    """
    value = getattr(module, name, None)
    if value is None or isinstance(value, torch.Tensor):
        return value
    raise TypeError(f"{type(module).__name__}.{name} is a {type(value).__name__}, not a tensor")


def shape_of(value: Any) -> tuple[int, ...] | None:
    """Static shape of a (fake) tensor value, ``None`` for non-tensors."""
    if isinstance(value, torch.Tensor):
        return tuple(int(s) for s in value.shape)
    return None


def output_refs(node: fx.Node) -> tuple[TensorRef, ...]:
    """TensorRefs for what ``node`` produces, from ``node.meta["val"]``."""
    val = node.meta.get("val")
    shape = shape_of(val)
    if shape is not None:
        if node.op == "get_attr":
            return (TensorRef(PARAM_PREFIX + str(node.target), shape, node, str(node.target)),)
        return (TensorRef(node.name, shape, node),)
    if isinstance(val, (tuple, list)):
        refs = []
        for i, v in enumerate(val):
            s = shape_of(v)
            if s is not None:
                refs.append(TensorRef(f"{node.name}#{i}", s, node))
            elif isinstance(v, (tuple, list)):  # one level of nesting: an LSTM's (output, (h_n, c_n))
                refs += [TensorRef(f"{node.name}#{i}.{j}", sj, node) for j, sj in enumerate(map(shape_of, v))
                         if sj is not None]
        return tuple(refs)
    return ()


def ref_of(value: Any) -> TensorRef | None:
    """TensorRef of an argument: the node's tensor output, or ``None`` if it is not a tensor node."""
    if isinstance(value, fx.Node):
        refs = output_refs(value)
        if len(refs) == 1 and shape_of(value.meta.get("val")) is not None:
            return refs[0]
    return None


def param_ref(module_path: str, name: str, tensor: torch.Tensor | None) -> TensorRef | None:
    """TensorRef for a module's parameter or buffer (``None`` when the module has none)."""
    if tensor is None:
        return None
    qualname = f"{module_path}.{name}" if module_path else name
    return TensorRef(PARAM_PREFIX + qualname, tuple(tensor.shape), None, qualname)


def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Positional-or-keyword argument of a call node."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)
