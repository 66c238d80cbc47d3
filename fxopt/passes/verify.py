"""Checks the PassManager runs after every pass: graph lint, fxopt lint, shape re-propagation, output checks."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx

from fxopt.equivalence import TOLERANCES, Difference, compare, tensors_of
from fxopt.errors import PassError, TraceError
from fxopt.trace import _flat_inputs, propagate_shapes


def fxopt_lint(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """Problems fx's own lint does not see, as ``(node, message)`` pairs; empty when the graph is sound.

    Every get_attr target resolves to a tensor or module, every call_module target to a module, and
    ``node.meta["fxopt"]`` holds typed records (dataclass instances) only.
    """
    problems = []
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            prefix, _, leaf = str(n.target).rpartition(".")
            try:
                owner = gm.get_submodule(prefix) if prefix else gm
            except AttributeError:
                problems.append((n.name, f"get_attr target {n.target} has no owner module"))
                continue
            if not hasattr(owner, leaf):
                problems.append((n.name, f"get_attr target {n.target} does not exist"))
        elif n.op == "call_module":
            try:
                gm.get_submodule(str(n.target))
            except AttributeError:
                problems.append((n.name, f"call_module target {n.target} does not exist"))
        records = n.meta.get("fxopt")
        if records is not None:
            values = records.values() if isinstance(records, dict) else [records]
            for v in values:
                if not dataclasses.is_dataclass(v):
                    problems.append((n.name, f"node.meta['fxopt'] holds a {type(v).__name__}, not a typed record"))
    return problems


def shape_inputs(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> list[Any]:
    """Inputs for shape propagation: the example inputs, else meta tensors built from the placeholders' values."""
    if example_inputs:
        return _flat_inputs(gm, tuple(example_inputs))
    out = []
    for n in gm.graph.nodes:
        if n.op != "placeholder":
            continue
        val = n.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise PassError(f"placeholder {n.name} has no tensor value; pass example_inputs", node=n.name)
        out.append(torch.empty(val.shape, dtype=val.dtype, device="meta"))
    return out


def repropagate(gm: fx.GraphModule, inputs: Sequence[Any]) -> None:
    """Re-fill ``node.meta["val"]``; raise PassError naming the node whose shape no longer computes."""
    try:
        propagate_shapes(gm, list(inputs))
    except TraceError as exc:
        found = re.search(r"While executing %(\w+)", str(exc.__cause__ or exc))
        raise PassError(f"shapes no longer propagate: {exc}", node=found.group(1) if found else None) from exc


def outputs_of(module: torch.nn.Module, inputs: Sequence[Any]) -> list[torch.Tensor]:
    """Run ``module`` without gradients; its output tensors in pytree order."""
    with torch.no_grad():
        return [t.detach().clone() for t in tensors_of(module(*inputs))]


def check_outputs(reference: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor]) -> Difference:
    """Assert outputs match the reference within fxopt's per-dtype tolerances.

    Raises:
        AssertionError: naming the worst difference.
    """
    diff = compare(reference, outputs)
    for r, o in zip(reference, outputs, strict=True):
        if not r.is_floating_point():
            continue
        rtol, atol = TOLERANCES.get(r.dtype, TOLERANCES[torch.float32])
        torch.testing.assert_close(o, r, rtol=rtol, atol=atol * max(1.0, diff.scale))
    return diff
