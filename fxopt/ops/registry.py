"""The op registry: which op objects form which kind, and each kind's channel rule, rewriter and cost.

Ops are registered on the real op objects (module classes, functions, ATen overload packets, Tensor methods),
never on strings; everything fxopt knows about a kind is registered under its name in one place, the family's
module in ``fxopt.ops``. ``scoped()`` gives tests a private copy to extend and throws it away afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from fxopt.ops.cost import CostRule, OpCost, Sizes, default_cost
from fxopt.ops.facts import Facts
from fxopt.ops.resize import Resizer
from fxopt.ops.view import OpView, output_refs, ref_of
from fxopt.registry import Registry

Normalizer = Callable[[fx.Node, fx.GraphModule, str], OpView]
ChannelRule = Callable[[OpView, Facts], None]
Rewriter = Callable[[OpView, Resizer], None]


@dataclass(frozen=True)
class OpSpec:
    """How one op object is normalized into an OpView of a kind."""

    kind: str
    normalize: Normalizer


class OpRegistry:
    """Maps op objects to kinds, and kinds to channel rules, rewriters and cost functions: one ``Registry`` per
    table, scoped together."""

    def __init__(self) -> None:
        self.ops: Registry[OpSpec] = Registry("op")
        self.rules: Registry[ChannelRule] = Registry("channel rule")
        self.rewriters: Registry[Rewriter] = Registry("rewriter")
        self.costs: Registry[CostRule] = Registry("cost rule")
        self.docs: Registry[str] = Registry("rule summary")

    def tables(self) -> tuple[Registry[Any], ...]:
        """Every table of the registry."""
        return self.ops, self.rules, self.rewriters, self.costs, self.docs

    def register_ops(self, kind: str, ops: Iterable[Any], normalize: Normalizer) -> None:
        """Declare that each op object in ``ops`` computes ``kind``, normalized by ``normalize``."""
        for op in ops:
            if op is None:
                continue
            self.ops.register(_op_key(op), OpSpec(kind, normalize))

    def rule(self, *kinds: str) -> Callable[[ChannelRule], ChannelRule]:
        """Decorator registering the channel rule for ``kinds``."""

        def deco(fn: ChannelRule) -> ChannelRule:
            for kind in kinds:
                self.rules.register(kind, fn)
                self.docs.register(kind, (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "")
            return fn

        return deco

    def rewriter(self, *kinds: str) -> Callable[[Rewriter], Rewriter]:
        """Decorator registering the function that fixes a node of ``kinds`` after channels are removed."""

        return self.rewriters.decorator(*kinds)

    def cost(self, *kinds: str) -> Callable[[CostRule], CostRule]:
        """Decorator registering the cost function (FLOPs, bytes, category) of ``kinds``.

        Example:
            >>> @REGISTRY.cost("scale_shift")
            ... def scale_shift_cost(view: OpView, sizes: Sizes) -> OpCost:
            ...     return op_cost(view, sizes, "elementwise", 2 * out_numel(view, sizes))
        """

        return self.costs.decorator(*kinds)

    def cost_of(self, view: OpView, sizes: Sizes) -> OpCost:
        """The cost of a node: its kind's cost function, ``fxopt.ops.cost.default_cost`` for kinds without one."""
        return self.costs.get(view.kind, default_cost)(view, sizes)

    def spec_for(self, node: fx.Node, gm: fx.GraphModule) -> OpSpec | None:
        """The OpSpec of a call node, or ``None`` if its op is unknown."""
        if node.op == "call_module":
            return self.ops.get(type(gm.get_submodule(str(node.target))), None)
        if node.op == "call_function":
            target = node.target
            spec = self.ops.get(_op_key(target), None)
            if spec is None and isinstance(target, torch._ops.OpOverload):
                spec = self.ops.get(target.overloadpacket, None)
            return spec
        if node.op == "call_method":
            return self.ops.get(_op_key(getattr(torch.Tensor, str(node.target), None)), None)
        return None

    def view(self, node: fx.Node, gm: fx.GraphModule) -> OpView:
        """Normalize ``node``; unknown ops get kind ``"unknown"`` with their tensor arguments as inputs."""
        spec = self.spec_for(node, gm)
        if spec is None:
            return unknown_view(node)
        return spec.normalize(node, gm, spec.kind)

    @contextlib.contextmanager
    def scoped(self) -> Iterator[OpRegistry]:
        """Context in which registrations are private; everything registered inside is dropped at exit."""
        with contextlib.ExitStack() as stack:
            for table in self.tables():
                stack.enter_context(table.scoped())
            yield self


def _op_key(op: Any) -> Any:
    return op


def unknown_view(node: fx.Node) -> OpView:
    """OpView for an op without a registered rule: every tensor argument is an input."""
    flat = [a for a in node.all_input_nodes]
    inputs = tuple(r for r in (ref_of(a) for a in flat) if r is not None)
    return OpView(node, "unknown", inputs, outputs=output_refs(node))


REGISTRY = OpRegistry()
"""The process-wide registry that fxopt's own rules populate; use ``REGISTRY.scoped()`` in tests."""
