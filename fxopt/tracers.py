"""The fx front-end's tracers: ``LeafTracer`` (symbolic, sizes stay symbolic) and ``ShapeTracer`` (the sizes of
the example inputs are plain ints).

``LeafTracer`` keeps every ``torch.nn`` layer as one call and every custom ``torch.autograd.Function`` as one
opaque call. Its graphs read sizes at run time (``x.size(0)``), so they run at other batch sizes, but Python code
that needs a size as a number (``for t in range(x.size(1))``, ``torch.zeros(x.size(0), 64)``) stops it.

``ShapeTracer`` carries a fake tensor beside every proxy, computed as the graph is recorded, so ``x.shape``,
``x.size()``, ``x.dim()`` and ``len(x)`` are the example's ints: loops unroll, factories get sizes, and the graph
is specialized to the example's shapes (as ``torch.export`` would make it, in a fraction of the time). Values
that depend on data (``if x.sum() > 0``) still stop it. The front-end uses it only where ``LeafTracer`` fails.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode

_AUTOGRAD_FUNCTIONS: dict[str, type[torch.autograd.Function]] = {}


def apply_autograd_function(name: str, *args: Any, **kwargs: Any) -> Any:
    """Graph target for a custom ``torch.autograd.Function`` kept opaque by the fx front-end.

    ``name`` is the class's ``module:qualname``; calling ``apply`` keeps the function's own backward. The analysis
    has no rule for this call: it is a barrier and the dims it touches stay unpruned.
    """
    function = _AUTOGRAD_FUNCTIONS.get(name)
    if function is None:  # a graph loaded in a fresh process: import the class
        module, _, qualname = name.partition(":")
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        function = _AUTOGRAD_FUNCTIONS.setdefault(name, obj)
    return function.apply(*args, **kwargs)


class LeafTracer(fx.Tracer):
    """Symbolic tracer that keeps every module defined in ``torch.nn`` (but not containers) as a leaf, and every
    custom ``torch.autograd.Function`` as one opaque call (tracing through it would drop its backward)."""

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        """Standard torch.nn layers and classes that declare ``fxopt_leaf = True`` (fxopt's structured layers)
        are leaves; containers and user/third-party modules are traced through."""
        if isinstance(m, (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)):
            return False
        if getattr(type(m), "fxopt_leaf", False):
            return True
        return type(m).__module__.startswith("torch.nn") and type(m).__module__ != "torch.nn.modules.container"

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        """Trace ``root`` with ``torch.autograd.Function.apply`` recording a call node when given proxies."""
        original = torch.autograd.Function.__dict__["apply"]
        tracer = self

        def apply(cls: type[torch.autograd.Function], *args: Any, **kwargs: Any) -> Any:
            leaves = torch.utils._pytree.tree_leaves((args, kwargs))
            if any(isinstance(a, fx.Proxy) and a.tracer is tracer for a in leaves):
                name = f"{cls.__module__}:{cls.__qualname__}"
                _AUTOGRAD_FUNCTIONS[name] = cls
                return tracer.create_proxy("call_function", apply_autograd_function, (name, *args), kwargs)
            return original.__func__(cls, *args, **kwargs)

        torch.autograd.Function.apply = classmethod(apply)
        try:
            return super().trace(root, concrete_args)
        finally:
            torch.autograd.Function.apply = original


class ShapeProxy(fx.Proxy):
    """A proxy that knows its value's sizes: ``shape``, ``size()``, ``dim()``, ``numel()`` and ``len()`` are ints."""

    def _value(self) -> torch.Tensor | None:
        value = self.node.meta.get("val")
        return value if isinstance(value, torch.Tensor) else None

    def _unknown(self, name: str, *args: Any) -> Any:
        return self.tracer.create_proxy("call_method", name, (self, *args), {})

    @property
    def shape(self) -> Any:
        """The example's sizes (a proxy when the value is unknown)."""
        v = self._value()
        return v.shape if v is not None else self._unknown("size")

    @property
    def ndim(self) -> Any:
        """The number of dims."""
        v = self._value()
        return v.dim() if v is not None else self._unknown("dim")

    @property
    def dtype(self) -> Any:
        """The value's dtype."""
        v = self._value()
        return v.dtype if v is not None else fx.Proxy.__getattr__(self, "dtype")

    @property
    def device(self) -> Any:
        """The value's device."""
        v = self._value()
        return v.device if v is not None else fx.Proxy.__getattr__(self, "device")

    def size(self, dim: int | None = None) -> Any:
        """The example's size of ``dim`` (all sizes without one)."""
        v = self._value()
        if v is None:
            return self._unknown("size", *(() if dim is None else (dim,)))
        return v.size() if dim is None else v.size(dim)

    def dim(self) -> Any:
        """The number of dims."""
        return self.ndim

    def numel(self) -> Any:
        """The number of elements."""
        v = self._value()
        return v.numel() if v is not None else self._unknown("numel")

    def __len__(self) -> int:
        v = self._value()
        if v is None:
            raise RuntimeError("len() of a value whose size is unknown")
        return len(v)


_CONCRETE = (int, float, bool, torch.Size, torch.dtype, torch.device)

SHAPE_PRESERVING = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.GELU, torch.nn.SiLU, torch.nn.Sigmoid, torch.nn.Tanh,
                    torch.nn.Hardswish, torch.nn.Hardsigmoid, torch.nn.LeakyReLU, torch.nn.ELU, torch.nn.Mish,
                    torch.nn.Identity, torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d)
"""Leaf modules whose output has their input's shape, dtype and strides."""


def known_output(module: torch.nn.Module, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """A leaf module's output as fresh (fake) tensors built from its input's shape, or None to run the module.

    Running a fake batch norm, linear or recurrent cell decomposes it into a dozen ops (two thirds of ResNet-50's
    capture, nearly all of an unrolled RNN's), and a fake convolution still costs its dispatch; their outputs'
    shapes are known without that. A module whose input does not
    fit it (a batch norm of other channels) is run, so that it raises its own error.
    """
    x = args[0] if args and not kwargs else None
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return None
    if isinstance(module, SHAPE_PRESERVING) and len(args) == 1:
        return torch.empty_like(x)
    if isinstance(module, torch.nn.Linear) and len(args) == 1 and x.dim() >= 1:
        w, b = module.weight, module.bias
        if w.dim() != 2 or w.shape[1] != x.shape[-1] or (b is not None and tuple(b.shape) != (w.shape[0],)):
            return None
        return x.new_empty(*x.shape[:-1], w.shape[0], dtype=torch.promote_types(x.dtype, w.dtype))
    if isinstance(module, _PLAIN_CONVS) and type(module) in _PLAIN_CONVS and len(args) == 1:  # not subclasses
        return _conv_output(module, x)
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and len(args) == 1 and x.dim() >= 2:
        stats = [t for t in (module.weight, module.bias, module.running_mean, module.running_var) if t is not None]
        return torch.empty_like(x) if all(tuple(t.shape) == (x.shape[1],) for t in stats) else None
    if isinstance(module, torch.nn.RNNCellBase) and x.dim() in (1, 2) and _cell_fits(module, x):
        states = args[1] if len(args) > 1 else None
        if states is not None and not all(isinstance(s, torch.Tensor) and s.shape[-1] == module.hidden_size
                                          for s in (states if isinstance(states, tuple) else (states,))):
            return None
        h = x.new_empty(*x.shape[:-1], module.hidden_size)
        return (h, torch.empty_like(h)) if isinstance(module, torch.nn.LSTMCell) else h
    return None


class ShapeTracer(LeafTracer):
    """LeafTracer that computes every node's fake value while recording it, so sizes are the example's ints.

    Args:
        example_inputs: the forward's positional inputs (real, meta or fake tensors, or other values).
    """

    def __init__(self, example_inputs: Sequence[Any]) -> None:
        super().__init__()
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        self._inputs = iter([self.mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in example_inputs])
        self._evaluating = False

    def call_module(self, m: torch.nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Record the call, except while a node's value is computed: then just run the module."""
        if self._evaluating:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        """A module attribute as a proxy, except while a node's value is computed: then the attribute itself."""
        if self._evaluating:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        """Proxies that know their sizes."""
        return ShapeProxy(node, self)

    def create_arg(self, a: Any) -> Any:
        """Tensors the Python code made from the example's sizes: zeros stay a ``torch.zeros`` call (resizable,
        and known to be zero) instead of a constant copied into the graph."""
        if isinstance(a, torch.Tensor) and not isinstance(a, torch.nn.Parameter) and a.dim() > 0 and (
                a.device.type != "meta" and not self._is_attribute(a) and not a.any()):
            return self.create_node("call_function", torch.zeros, (tuple(a.shape),),
                                    {"dtype": a.dtype, "device": a.device})
        return super().create_arg(a)

    def _is_attribute(self, t: torch.Tensor) -> bool:
        return any(t is v for v in getattr(self, "tensor_attrs", {}))

    def create_node(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                    name: str | None = None, type_expr: Any = None) -> fx.Node:
        """Record the node and compute its fake value (unknown when fake tensors cannot compute it)."""
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        try:
            node.meta["val"] = self._evaluate(node)
        except Exception:  # data-dependent or unsupported under fake tensors: the value stays unknown
            node.meta.pop("val", None)
        return node

    def create_proxy(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                     name: str | None = None, type_expr: Any = None, proxy_factory_fn: Any = None) -> Any:
        """A proxy, or the plain value where the op computes a size, a dtype or a number from sizes."""
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        node = proxy.node
        value = node.meta.get("val")
        if kind != "placeholder" and not node.users and _is_concrete(value):
            self.graph.erase_node(node)
            return value
        return proxy

    def _evaluate(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            return next(self._inputs, None)
        if node.op == "get_attr":
            value: Any = self.root
            for part in str(node.target).split("."):
                value = getattr(value, part)
            return self.mode.from_tensor(value) if isinstance(value, torch.Tensor) else value

        def val(a: Any) -> Any:
            if isinstance(a, fx.Node):
                if "val" not in a.meta:
                    raise ValueError(f"{a.name} has no value")
                return a.meta["val"]
            return a

        args = fx.node.map_aggregate(node.args, val)
        kwargs = fx.node.map_aggregate(node.kwargs, val)
        self._evaluating = True
        try:
            with self.mode:
                if node.op == "call_function" and callable(node.target):
                    return node.target(*args, **kwargs)
                if node.op == "call_method":
                    return getattr(args[0], str(node.target))(*args[1:], **kwargs)
                if node.op == "call_module":
                    module = self.root.get_submodule(str(node.target))
                    known = known_output(module, args, kwargs)
                    return known if known is not None else module(*args, **kwargs)
        finally:
            self._evaluating = False
        return None


_PLAIN_CONVS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _conv_output(conv: torch.nn.Conv1d | torch.nn.Conv2d | torch.nn.Conv3d, x: torch.Tensor) -> torch.Tensor | None:
    """A batched convolution's output from the usual size formula, in its input's memory format (None where the
    input does not fit the weight, or where its memory format is ambiguous: then the kernel runs)."""
    w = conv.weight
    spatial = w.dim() - 2
    if x.dim() != w.dim() or x.shape[1] != w.shape[1] * conv.groups:
        return None
    channels_last = _CHANNELS_LAST.get(x.dim())
    if channels_last is not None and x.is_contiguous(memory_format=channels_last) and x.is_contiguous():
        return None
    if conv.padding == "same":
        sizes = list(x.shape[2:])
    else:
        padding = (0,) * spatial if isinstance(conv.padding, str) else tuple(conv.padding)  # str: "valid"
        sizes = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
                 zip(x.shape[2:], padding, conv.dilation, w.shape[2:], conv.stride)]
    if min(sizes) < 1:
        return None
    out = x.new_empty(x.shape[0], w.shape[0], *sizes, dtype=torch.promote_types(x.dtype, w.dtype))
    if channels_last is not None and x.is_contiguous(memory_format=channels_last):
        out = out.contiguous(memory_format=channels_last)
    return out


def _cell_fits(cell: torch.nn.RNNCellBase, x: torch.Tensor) -> bool:
    w_ih, w_hh = cell.weight_ih, cell.weight_hh
    return (w_ih.shape[1] == x.shape[-1] and w_hh.shape[1] == cell.hidden_size and w_ih.shape[0] == w_hh.shape[0]
            and w_hh.shape[0] % cell.hidden_size == 0)


def _is_concrete(value: Any) -> bool:
    if isinstance(value, _CONCRETE):
        return True
    return isinstance(value, (tuple, list)) and bool(value) and all(isinstance(v, _CONCRETE) for v in value)
