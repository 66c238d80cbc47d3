"""Predicted time of one layer on a target: a roofline over the ATen ops its forward runs.

The forward runs once on fake tensors (no memory, no arithmetic) under a dispatch mode that records every ATen op
it reaches. Matrix products and convolutions count two FLOPs per multiply-add (plus the bias additions), views move
nothing, an ``fxopt::`` structured op (the layers' op path, ``fxopt.kernels.dispatch``) counts two FLOPs per token
and factor element, and every other op reads its inputs and writes its outputs. Each op then costs what
``fxopt.analysis.cost`` charges a graph node, ``max(flops / (peak * efficiency), bytes / bandwidth)`` plus the
target's per-op overhead. So the prediction sees what a structured layer's plain-torch forward does beyond its
FLOPs: Monarch's regrouping copies, BLAST's coupling step, several small kernels where dense runs one.

Example:
    >>> from fxopt.targets import get_target
    >>> dense = nn.Linear(768, 768, device="meta")
    >>> monarch = Monarch(blocks=4, rank=24).build(768, 768, device="meta")
    >>> [op.kind for op in forward_ops(monarch, (197, 768))]
    ['bmm', 'clone', 'bmm', 'clone', 'add']
    >>> h100 = get_target("h100")  # 197 tokens: five small kernels lose to one; 4096: a quarter of the FLOPs wins
    >>> layer_time(monarch, (197, 768), h100) > layer_time(dense, (197, 768), h100)
    True
    >>> layer_time(monarch, (4096, 768), h100) < layer_time(dense, (4096, 768), h100)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import sympy
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from fxopt.analysis.cost import DTYPE_NAMES, NodeCost, Roofline, roofline_time

aten = torch.ops.aten

VIEWS = frozenset({
    aten.view, aten._unsafe_view, aten._reshape_alias, aten.t, aten.transpose, aten.permute, aten.expand,
    aten.unsqueeze, aten.squeeze, aten.as_strided, aten.alias, aten.slice, aten.select, aten.detach, aten.split,
    aten.unbind, aten.diagonal, aten.view_as_real, aten.lift_fresh,
})
"""ATen ops that only make a new view of their input: they cost nothing."""
COPIES = frozenset({aten.clone, aten._to_copy, aten.copy_, aten.contiguous})
"""ATen ops that copy memory without arithmetic."""


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]


def _nbytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _flops(func: Any, args: Sequence[Any], out: list[torch.Tensor]) -> tuple[int, str]:
    """FLOPs and cost category of one ATen or ``fxopt::`` op that is not a view."""
    packet = func.overloadpacket
    if func.namespace == "fxopt":  # structured matmul (x, *factors, flags): a multiply-add per token and factor element
        x, factors = args[0], [a for a in args[1:] if isinstance(a, torch.Tensor)]
        return 2 * (x.numel() // x.shape[-1]) * sum(f.numel() for f in factors), "matmul"
    if packet in (aten.mm, aten.bmm):
        a = args[0]
        return 2 * out[0].numel() * a.shape[-1], "matmul"
    if packet in (aten.addmm, aten.baddbmm):
        a = args[1]
        return 2 * out[0].numel() * a.shape[-1] + out[0].numel(), "matmul"
    if packet is aten.convolution:
        weight, bias = args[1], args[2]
        per_output = weight[0].numel()
        return 2 * out[0].numel() * per_output + (out[0].numel() if bias is not None else 0), "conv"
    if packet in COPIES:
        return 0, "memory"
    return sum(t.numel() for t in out), "elementwise"


class _Recorder(TorchDispatchMode):
    """Records the cost of every ATen op that reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[NodeCost] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        packet, results = func.overloadpacket, _tensors(out)
        if packet not in VIEWS and results:  # ops without tensor results only query metadata (prim.device)
            flops, category = _flops(func, args, results)
            moved = _nbytes(_tensors((args, kwargs))) + _nbytes(results)
            dtype = DTYPE_NAMES.get(str(results[0].dtype).removeprefix("torch."), "fp32")
            self.rows.append(NodeCost(f"{packet.__name__}#{len(self.rows)}", packet.__name__, category,
                                      sympy.Integer(flops), sympy.Integer(moved), dtype))
        return out


def forward_ops(module: torch.nn.Module, input_shape: Sequence[int],
                dtype: torch.dtype = torch.float32) -> tuple[NodeCost, ...]:
    """The ATen ops one forward of ``module`` runs on an input of ``input_shape``, with their FLOPs and bytes.

    Args:
        module: any module taking one tensor; its parameters may be real, fake or on the meta device.
        input_shape: the input's shape.
        dtype: the input's dtype.

    Returns:
        One row per op that is not a view, in call order (``kind`` is the ATen op's name).
    """
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(tuple(input_shape), dtype=dtype, device=device)
        recorder = _Recorder()
        with recorder:
            module(x)
    return tuple(recorder.rows)


def layer_time(module: torch.nn.Module, input_shape: Sequence[int], target: Roofline,
               dtype: torch.dtype = torch.float32) -> float:
    """Predicted seconds of one forward of ``module`` on ``target`` (the roofline of ``forward_ops``)."""
    return math.fsum(roofline_time(target, op.category, op.dtype, float(op.flops), float(op.bytes))
                     for op in forward_ops(module, input_shape, dtype))
