"""Declarative local rewrites, and the driver that applies them with a round limit.

Two kinds of rule, both a match plus the checks that veto it:

- ``Pattern``: a node of kind ``second`` whose first tensor input is produced by a node of kind ``first``, and a
  rewrite function (batch norm folding, linear merging).
- ``Replacement``: one node running one of a set of op objects (a module class, a function, an ATen packet, a
  Tensor method) is replaced by a call of the module ``build`` returns, on the same arguments (module
  substitution; a subgraph is a module whose ``forward`` is that subgraph).

Each check returns ``None`` when the rewrite may fire or a reason when it must not (inductor's ``extra_check``);
the reasons are recorded as ``Skip`` records, so the "when not to fire" cases sit next to the rule and show up
in reports. ``run_patterns`` applies rules round after round until none fires, and stops after ``max_rounds``
with a note saying so: rules that keep firing on their own output do not hang a pipeline.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.fx as fx
from torch.fx.operator_schemas import normalize_function

from fxopt.ops.registry import REGISTRY
from fxopt.ops.view import OpView, TensorRef
from fxopt.passes.base import PassContext, PassResult
from fxopt.passes.editor import GraphEditor

log = logging.getLogger(__name__)

CALL_OPS = ("call_module", "call_function", "call_method")


def view_of(node: fx.Node, gm: fx.GraphModule) -> OpView | None:
    """The OpView of a call node, ``None`` for placeholders, get_attr and output nodes."""
    if node.op not in CALL_OPS:
        return None
    return REGISTRY.view(node, gm)


def op_of(node: fx.Node, gm: fx.GraphModule) -> Any:
    """The op object a call node runs: module class, function, ATen overload packet or Tensor method."""
    if node.op == "call_module":
        return type(gm.get_submodule(str(node.target)))
    if node.op == "call_method":
        return getattr(torch.Tensor, str(node.target), None)
    if node.op == "call_function":
        target = node.target
        return target.overloadpacket if isinstance(target, torch._ops.OpOverload) else target
    return None


def call_kwargs(node: fx.Node) -> dict[str, Any] | None:
    """All arguments of a call_function node by parameter name, defaults filled in (``None`` if unknown)."""
    if node.op != "call_function" or isinstance(node.target, str):
        return None
    try:
        pair = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True)
    except (TypeError, ValueError, RuntimeError):
        return None
    return dict(pair.kwargs) if pair is not None else None


def param_tensor(editor: GraphEditor, ref: TensorRef | None) -> torch.Tensor | None:
    """The stored tensor behind a parameter TensorRef (``None`` when absent or computed by the graph)."""
    if ref is None or ref.qualname is None:
        return None
    return editor.tensor(ref.qualname)


def stored_matrix(editor: GraphEditor, view: OpView) -> str | None:
    """Reason why ``view``'s weight is not a stored floating-point matrix (a linear's), else ``None``."""
    w = param_tensor(editor, view.params.get("weight"))
    if w is None or w.ndim != 2 or not w.is_floating_point():
        return f"{view.node.name}'s weight is not a stored floating-point matrix"
    return None


def exclusive(editor: GraphEditor, view: OpView, roles: Sequence[str]) -> str | None:
    """Reason why the parameters ``roles`` of ``view`` are not exclusively its own, else ``None``.

    A parameter is exclusive when it is stored (not computed), has no tied alias, and only ``view.node`` reads
    it (directly as a module call, or through get_attr nodes used by nothing else).
    """
    for role in roles:
        ref = view.params.get(role)
        if ref is None:
            continue
        if ref.qualname is None:
            return f"its {role} is computed by the graph, not a stored parameter"
        if len(editor.aliases(ref.qualname)) > 1:
            return f"its {role} is tied to {', '.join(a for a in editor.aliases(ref.qualname) if a != ref.qualname)}"
        for reader in editor.readers(ref.qualname):
            if reader is view.node:
                continue
            if reader.op == "get_attr" and set(reader.users) <= {view.node}:
                continue
            return f"its {role} {ref.qualname} is also read by {reader.name}"
    return None


def single_user(node: fx.Node) -> str | None:
    """Reason why ``node``'s output is read by more than one node, else ``None``."""
    if len(node.users) != 1:
        return f"{node.name} has {len(node.users)} users"
    return None


METADATA_ATTRIBUTES = frozenset({"ndim", "shape", "dtype", "device", "layout", "is_cuda"})


def reads_metadata_only(user: fx.Node, node: fx.Node) -> bool:
    """Whether ``user`` reads only ``node``'s shape, rank, dtype or device (``x.ndim``, ``x.size()``), not values."""
    if user.op == "call_function" and user.target is getattr:
        return user.args[0] is node and user.args[1] in METADATA_ATTRIBUTES
    return user.op == "call_method" and user.target in ("size", "dim") and user.args[0] is node


def single_value_user(node: fx.Node) -> str | None:
    """Reason why ``node``'s values are read by more than one node, else ``None``.

    Readers of metadata only (timm's ``x.ndim`` checks) do not count: a rewrite that changes ``node``'s values
    but not its shape, dtype or device leaves what they read unchanged.
    """
    readers = [u for u in node.users if not reads_metadata_only(u, node)]
    if len(readers) != 1:
        return f"{node.name} has {len(readers)} users"
    return None


def tuple_source(node: fx.Node | None) -> fx.Node | None:
    """For ``getitem(t, 0)`` of a tuple-valued node (ATen batch norm variants), the node ``t``; else ``node``."""
    if (node is not None and node.op == "call_function" and node.target is operator.getitem
            and isinstance(node.args[0], fx.Node) and node.args[1] == 0
            and isinstance(node.args[0].meta.get("val"), (tuple, list))):
        return node.args[0]
    return node


def main_output(node: fx.Node) -> fx.Node | str:
    """The node holding ``node``'s main tensor: itself, or ``getitem(node, 0)`` for tuple-valued ops.

    Returns a reason string when a tuple-valued node's other outputs are used or element 0 is read twice.
    """
    if not isinstance(node.meta.get("val"), (tuple, list)):
        return node
    firsts = [u for u in node.users if u.op == "call_function" and u.target is operator.getitem and u.args[1] == 0]
    others = [u for u in node.users if u not in firsts and u.users]
    if others:
        return f"{node.name}'s extra outputs are used by {others[0].name}"
    if len(firsts) != 1:
        return f"{node.name}'s output is read through {len(firsts)} getitem nodes"
    return firsts[0]


def erase_with_output(editor: GraphEditor, node: fx.Node, out: fx.Node) -> None:
    """Erase ``node`` and, for tuple-valued nodes, its main-output getitem and its unused getitem users."""
    if out is not node:
        editor.erase(out)
    for user in list(node.users):
        if not user.users:
            editor.erase(user)
    editor.erase(node)


@dataclass(frozen=True)
class Match:
    """Two adjacent ops: ``first`` produces the tensor ``second`` reads."""

    first: OpView
    second: OpView
    gm: fx.GraphModule


Check = Callable[[Match, GraphEditor], "str | None"]
Rewrite = Callable[[Match, GraphEditor], None]


@dataclass(frozen=True)
class Pattern:
    """A two-op rewrite: kinds to match, checks that veto it (first reason wins), and the rewrite."""

    name: str
    first: frozenset[str]
    second: frozenset[str]
    checks: tuple[Check, ...]
    rewrite: Rewrite

    def veto(self, match: Match, editor: GraphEditor) -> str | None:
        """The first check's reason not to fire, or ``None``."""
        return next((r for r in (check(match, editor) for check in self.checks) if r is not None), None)


def live_calls(gm: fx.GraphModule) -> Iterator[fx.Node]:
    """The call nodes of ``gm`` in graph order, skipping those that rewrites erased on the way."""
    for node in list(gm.graph.nodes):
        if not getattr(node, "_erased", False) and node.op in CALL_OPS:
            yield node


def apply_patterns(gm: fx.GraphModule, editor: GraphEditor, patterns: Sequence[Pattern]) -> int:
    """Apply ``patterns`` at every matching node, in graph order; return how many rewrites fired."""
    fired = 0
    for node in live_calls(gm):
        second = view_of(node, gm)
        if second is None or not second.inputs or second.inputs[0] is None:
            continue
        src = tuple_source(second.inputs[0].node)
        for pattern in patterns:
            if second.kind not in pattern.second or src is None:
                continue
            first = view_of(src, gm)
            if first is None or first.kind not in pattern.first:
                continue
            match = Match(first, second, gm)
            if fire(editor, node, pattern.name, pattern.veto(match, editor), partial(pattern.rewrite, match, editor)):
                fired += 1
                break
    return fired


def fire(editor: GraphEditor, node: fx.Node, rule: str, reason: str | None, rewrite: Callable[[], None]) -> bool:
    """Run ``rewrite`` unless a check gave a ``reason`` not to, which is then recorded as a Skip of ``rule``."""
    if reason is not None:
        editor.skip(rule, node, reason)
        return False
    rewrite()
    return True


NodeCheck = Callable[[OpView, GraphEditor], "str | None"]
Build = Callable[[OpView, GraphEditor], torch.nn.Module]


@dataclass(frozen=True)
class Replacement:
    """A one-node rewrite: a call of one of ``ops`` becomes a call of the module ``build(view, editor)`` returns.

    The new module is called with the node's arguments and must compute an output of the same shape and dtype.
    A ``call_module`` node keeps its target path (the module there is swapped); a function or method call becomes
    a ``call_module`` of a new submodule named after ``name`` and the node.

    Attributes:
        name: the rule's name in skips and edits.
        ops: op objects to match (``op_of``): module classes, functions, ATen overload packets, Tensor methods.
        build: the replacement module for a matched node (a fresh module per node).
        checks: vetoes, ``(view, editor) -> reason | None``; the first reason wins and is recorded as a Skip.

    Example:
        >>> relu_as_threshold = Replacement("relu_threshold", frozenset({nn.ReLU, torch.relu}),
        ...                                 lambda view, e: nn.Threshold(0.0, 0.0), (not_in_first_layer,))
        >>> run_patterns(gm, ctx, "swap", [relu_as_threshold])
    """

    name: str
    ops: frozenset[Any]
    build: Build
    checks: tuple[NodeCheck, ...] = ()

    def veto(self, view: OpView, editor: GraphEditor) -> str | None:
        """The first check's reason not to fire, or ``None``."""
        return next((r for r in (check(view, editor) for check in self.checks) if r is not None), None)

    def replace(self, view: OpView, editor: GraphEditor) -> None:
        """Put the built module in place of ``view.node``."""
        node, module = view.node, self.build(view, editor)
        if node.op == "call_module":
            editor.set_submodule(str(node.target), module)
            return
        path = f"{self.name}_{node.name}"
        editor.set_submodule(path, module)
        new = editor.call("call_module", path, node.args, node.kwargs, before=node)
        new.meta.update({k: v for k, v in node.meta.items() if k in ("val", "tensor_meta", "stack_trace")})
        editor.replace_uses(node, new, f"{node.name} replaced by {type(module).__name__} ({self.name})")
        editor.erase(node)


def apply_replacements(gm: fx.GraphModule, editor: GraphEditor, replacements: Sequence[Replacement]) -> int:
    """Apply ``replacements`` at every matching node, in graph order; return how many fired."""
    fired = 0
    for node in live_calls(gm):
        op = op_of(node, gm)
        for rule in replacements:
            if op not in rule.ops:
                continue
            view = REGISTRY.view(node, gm)
            if fire(editor, node, rule.name, rule.veto(view, editor), partial(rule.replace, view, editor)):
                fired += 1
                break
    return fired


MAX_ROUNDS = 16
"""Rounds of rewriting ``run_patterns`` does at most before it stops and says so."""


def run_patterns(gm: fx.GraphModule, ctx: PassContext, name: str, rules: Sequence[Pattern | Replacement],
                 max_rounds: int = MAX_ROUNDS) -> PassResult:
    """Apply ``rules`` round after round through one editor until none fires, at most ``max_rounds`` rounds.

    Returns:
        The pass's result, with a ``fired`` metric; when the round limit stopped it, a note saying so (the
        graph is valid, but some rule still matches: usually a rule that fires on its own output).
    """
    editor = GraphEditor(gm, ctx, name)
    patterns = [r for r in rules if isinstance(r, Pattern)]
    replacements = [r for r in rules if isinstance(r, Replacement)]
    fired = 0
    for _ in range(max_rounds):
        skips_before = len(editor.skips)
        n = apply_patterns(gm, editor, patterns) + apply_replacements(gm, editor, replacements)
        fired += n
        if n == 0:
            break
        del editor.skips[skips_before:]  # a later round re-checks them; keep the last round's reasons
    else:
        editor.note(f"stopped after {max_rounds} rounds with rules still firing ({fired} rewrites); a rule "
                    "probably matches its own output: make its checks refuse it")
        log.warning("%s: stopped after %d rounds of rewriting with rules still firing", name, max_rounds)
    return editor.finish({"fired": fired})
