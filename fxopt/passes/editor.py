"""GraphEditor: the one way passes change a graph module.

Every edit (insert, replace, erase, set a tensor, set an argument) is logged as an ``Edit`` of the pass's
result and bumps the graph version in the ``PassContext``, which invalidates cached analyses. ``finish()``
removes what the edits left unused (get_attr nodes, attributes, submodules), lints and recompiles, and returns
the ``PassResult``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx

from fxopt.ops.forms import set_call_arg
from fxopt.passes.base import Edit, PassContext, PassResult, Skip

log = logging.getLogger(__name__)


def _owner(gm: torch.nn.Module, qualname: str) -> tuple[torch.nn.Module, str]:
    prefix, _, leaf = qualname.rpartition(".")
    return (gm.get_submodule(prefix) if prefix else gm), leaf


def get_tensor(gm: torch.nn.Module, qualname: str) -> torch.Tensor | None:
    """The parameter, buffer or tensor attribute ``qualname`` of ``gm`` (``None`` if there is none)."""
    try:
        owner, leaf = _owner(gm, qualname)
    except AttributeError:
        return None
    value = getattr(owner, leaf, None)
    return value if isinstance(value, torch.Tensor) else None


class GraphEditor:
    """Logged, version-bumping edits of one graph module during one pass.

    Args:
        gm: the graph module being rewritten (in place).
        ctx: the pipeline context; its version is bumped by every edit.
        pass_name: the pass's spec text, used in the result.
    """

    def __init__(self, gm: fx.GraphModule, ctx: PassContext, pass_name: str) -> None:
        self.gm = gm
        self.ctx = ctx
        self.pass_name = pass_name
        self.edits: list[Edit] = []
        self.skips: list[Skip] = []
        self.notes: list[str] = []
        self._unused_at_start = {n for n in gm.graph.nodes if n.op == "get_attr" and not n.users}
        self._aliases: dict[int, list[str]] | None = None

    # ------------------------------------------------------------------ records
    def _log(self, action: str, target: str, detail: str = "") -> None:
        self.edits.append(Edit(action, target, detail))
        self.ctx.bump()
        log.debug("%s: %s %s %s", self.pass_name, action, target, detail)

    def skip(self, rule: str, node: fx.Node | str, reason: str) -> None:
        """Record that ``rule`` matched at ``node`` but did not fire, and why."""
        self.skips.append(Skip(rule, node if isinstance(node, str) else node.name, reason))

    def note(self, text: str) -> None:
        """Record a free-form remark in the result."""
        self.notes.append(text)

    def record(self, action: str, target: str, detail: str = "") -> None:
        """Log an edit made by a helper this editor does not wrap (e.g. a module swap)."""
        self._log(action, target, detail)

    # ------------------------------------------------------------------ tensors
    def tensor(self, qualname: str) -> torch.Tensor | None:
        """The tensor stored at ``qualname``."""
        return get_tensor(self.gm, qualname)

    def aliases(self, qualname: str) -> list[str]:
        """Every qualified name holding the same tensor object as ``qualname`` (itself included)."""
        if self._aliases is None:
            table: dict[int, list[str]] = {}
            for name, t in list(self.gm.named_parameters(remove_duplicate=False)) + list(
                    self.gm.named_buffers(remove_duplicate=False)):
                table.setdefault(id(t), []).append(name)
            self._aliases = table
        t = self.tensor(qualname)
        return self._aliases.get(id(t), [qualname]) if t is not None else [qualname]

    def readers(self, qualname: str) -> list[fx.Node]:
        """Nodes that read the tensor ``qualname`` or any alias of it: get_attr nodes and owning module calls."""
        names = set(self.aliases(qualname))
        found = []
        for n in self.gm.graph.nodes:
            if n.op == "get_attr" and str(n.target) in names:
                found.append(n)
            elif n.op == "call_module" and any(q.startswith(f"{n.target}.") for q in names):
                found.append(n)
        return found

    def set_tensor(self, qualname: str, value: torch.Tensor, detail: str = "") -> None:
        """Replace the tensor at ``qualname``, keeping whether it is a parameter (and its requires_grad) or a buffer.

        A module attribute that was ``None`` (a conv without bias) becomes a parameter.
        """
        owner, leaf = _owner(self.gm, qualname)
        old = getattr(owner, leaf, None)
        if leaf in owner._buffers:
            owner._buffers[leaf] = value.detach()
        elif leaf in owner._parameters or isinstance(old, torch.nn.Parameter) or old is None:
            grad = old.requires_grad if isinstance(old, torch.Tensor) else True
            setattr(owner, leaf, torch.nn.Parameter(value.detach(), requires_grad=grad))
        else:
            setattr(owner, leaf, value.detach())
        self._aliases = None
        self._log("set_tensor", qualname, detail or f"shape {tuple(value.shape)}")

    def add_tensor(self, hint: str, value: torch.Tensor, parameter: bool = True, owner: str = "") -> str:
        """Register a new parameter (or persistent buffer) on submodule ``owner``; returns its qualified name."""
        module = self.gm.get_submodule(owner) if owner else self.gm
        base = re.sub(r"\W", "_", hint).strip("_") or "tensor"
        name, i = base, 1
        while hasattr(module, name):
            name, i = f"{base}_{i}", i + 1
        if parameter:
            module.register_parameter(name, torch.nn.Parameter(value.detach(), requires_grad=True))
        else:
            module.register_buffer(name, value.detach())
        qualname = f"{owner}.{name}" if owner else name
        self._aliases = None
        self._log("add_tensor", qualname, f"{'parameter' if parameter else 'buffer'} {tuple(value.shape)}")
        return qualname

    def set_module_attr(self, module_path: str, attr: str, value: Any) -> None:
        """Set a plain attribute of a submodule (``in_features``, ``groups``, ...)."""
        setattr(self.gm.get_submodule(module_path), attr, value)
        self._log("set_attr", f"{module_path}.{attr}", repr(value))

    def set_submodule(self, path: str, module: torch.nn.Module) -> None:
        """Install ``module`` at ``path`` (replacing what was there)."""
        owner, leaf = _owner(self.gm, path)
        setattr(owner, leaf, module)
        self._aliases = None
        self._log("set_module", path, type(module).__name__)

    # ------------------------------------------------------------------ graph
    def get_attr(self, qualname: str, before: fx.Node) -> fx.Node:
        """Insert a get_attr node for ``qualname`` before ``before``."""
        with self.gm.graph.inserting_before(before):
            node = self.gm.graph.get_attr(qualname)
        t = self.tensor(qualname)
        if t is not None:
            node.meta["val"] = _fake_like(t, before)
        self._log("insert", node.name, f"get_attr {qualname}")
        return node

    def call(self, op: str, target: Any, args: Sequence[Any], kwargs: Mapping[str, Any] | None = None,
             before: fx.Node | None = None, after: fx.Node | None = None) -> fx.Node:
        """Insert a ``call_function``/``call_method``/``call_module`` node before or after a node."""
        graph = self.gm.graph
        ctx = graph.inserting_before(before) if before is not None else graph.inserting_after(after)
        with ctx:
            node = graph.create_node(op, target, tuple(args), dict(kwargs or {}))
        name = getattr(target, "__name__", str(target))
        self._log("insert", node.name, f"{op} {name}")
        return node

    def replace_uses(self, old: fx.Node, new: fx.Node, detail: str = "") -> None:
        """Make every user of ``old`` read ``new`` instead."""
        old.replace_all_uses_with(new)
        self._log("replace", old.name, detail or f"uses now read {new.name}")

    def set_input(self, node: fx.Node, old: fx.Node, new: fx.Node) -> None:
        """Make ``node`` read ``new`` where it read ``old``."""
        node.replace_input_with(old, new)
        self._log("rewire", node.name, f"{old.name} -> {new.name}")

    def set_arg(self, node: fx.Node, name: str, value: Any, argnames: Sequence[str]) -> None:
        """Set argument ``name`` of a call node, positionally if it was passed positionally."""
        set_call_arg(node, name, value, argnames)
        shown = value.name if isinstance(value, fx.Node) else repr(value)
        self._log("set_arg", node.name, f"{name}={shown}")

    def erase(self, node: fx.Node) -> None:
        """Erase ``node``; it must have no users left."""
        if node.users:
            raise RuntimeError(f"cannot erase {node.name}: still used by {[u.name for u in node.users]}")
        name = node.name
        self.gm.graph.erase_node(node)
        self._log("erase", name)

    def erase_get_attr(self, node: fx.Node) -> None:
        """Erase an unused get_attr node and delete its tensor when nothing else refers to it."""
        target = str(node.target)
        self.erase(node)
        if not self._referenced(target):
            owner, leaf = _owner(self.gm, target)
            if hasattr(owner, leaf):
                delattr(owner, leaf)
                self._aliases = None
                self._log("drop_tensor", target)

    def erase_chain(self, nodes: Iterable[fx.Node]) -> None:
        """Erase ``nodes`` that have no users, in reverse order (users before producers)."""
        for n in reversed(list(nodes)):
            if not n.users and n.graph is self.gm.graph:
                self.erase(n)

    # ------------------------------------------------------------------ finish
    def _drop_unused(self) -> None:
        graph = self.gm.graph
        for n in list(graph.nodes):
            if n.op == "get_attr" and not n.users and n not in self._unused_at_start:
                target = str(n.target)
                graph.erase_node(n)
                if not self._referenced(target):
                    owner, leaf = _owner(self.gm, target)
                    delattr(owner, leaf)
                    self._log("drop_tensor", target)
        self.gm.delete_all_unused_submodules()

    def _referenced(self, qualname: str) -> bool:
        for n in self.gm.graph.nodes:
            if n.op == "get_attr" and str(n.target) == qualname:
                return True
            if n.op == "call_module" and qualname.startswith(f"{n.target}."):
                return True
        return False

    def finish(self, metrics: Mapping[str, Any] | None = None, changed: bool | None = None) -> PassResult:
        """Remove leftovers of the edits, lint and recompile; return the pass's result."""
        if self.edits:
            self._drop_unused()
            self.gm.graph.lint()
            self.gm.recompile()
        return PassResult(self.pass_name, bool(self.edits) if changed is None else changed, tuple(self.edits),
                          tuple(self.skips), dict(metrics or {}), tuple(self.notes))


def _fake_like(t: torch.Tensor, near: fx.Node) -> Any:
    """A fake tensor for a new get_attr node, made in the fake mode of a nearby node's value when there is one."""
    for n in [near, *near.all_input_nodes]:
        val = n.meta.get("val")
        mode = getattr(val, "fake_mode", None)
        if mode is not None:
            return mode.from_tensor(t, static_shapes=True)
    return None
