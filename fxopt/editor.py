"""GraphEditor: the one way fxopt changes a graph module.

Every edit (insert a node, rewrite arguments, replace uses, erase, set a tensor or a module attribute) is logged
as an ``Edit`` and counts up ``version``; ``on_edit`` lets the editor's owner react to each one (the pass
framework's ``fxopt.passes.GraphEditor`` bumps its context's graph version, which invalidates cached analyses).
Edits that replace values, arguments or tensors, and nodes the editor inserted, are undone by ``rollback`` to a
``checkpoint``: pruning tries a removal in place and takes it back when the smaller graph does not check out.
``tidy()`` removes what the edits left unused (get_attr nodes, their tensors, submodules), lints and recompiles.

Example:
    >>> editor = GraphEditor(gm)
    >>> editor.set_tensor("fc.weight", gm.fc.weight[:8])
    >>> editor.set_module_attr("fc", "out_features", 8)
    >>> editor.tidy()
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from fxopt.errors import EditError
from fxopt.ops.forms import set_call_arg

log = logging.getLogger(__name__)

Undo = Callable[[], None]
_MISSING = object()


@dataclass(frozen=True)
class Edit:
    """One change to a graph module: what was done, to which node or tensor, and a short detail."""

    action: str
    target: str
    detail: str = ""


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


def _save_slot(owner: torch.nn.Module, leaf: str) -> Undo:
    """An undo that puts back whatever ``owner.leaf`` holds now: a parameter, a buffer or a plain attribute."""
    for table in (owner._parameters, owner._buffers):
        if leaf in table:
            old = table[leaf]

            def restore_entry(table: dict[str, Any] = table, old: Any = old) -> None:
                table[leaf] = old

            return restore_entry
    old_attr = owner.__dict__.get(leaf, _MISSING)

    def restore_attr() -> None:
        owner._parameters.pop(leaf, None)
        owner._buffers.pop(leaf, None)
        owner.__dict__.pop(leaf, None)
        if old_attr is not _MISSING:
            owner.__dict__[leaf] = old_attr

    return restore_attr


class GraphEditor:
    """Logged, undoable edits of one graph module.

    Args:
        gm: the graph module being rewritten (in place).
        on_edit: called after every edit (and after a rollback) with the edit.
        name: who edits (a pass's spec text), for the debug log.
    """

    def __init__(self, gm: fx.GraphModule, on_edit: Callable[[Edit], None] | None = None, name: str = "") -> None:
        self.gm = gm
        self.name = name
        self.edits: list[Edit] = []
        self.version = 0
        self._on_edit = on_edit
        self._undo: list[Undo | None] = []
        self._unused_at_start = {n for n in gm.graph.nodes if n.op == "get_attr" and not n.users}
        self._aliases: dict[int, list[str]] | None = None

    # ------------------------------------------------------------------ log
    def _changed(self, edit: Edit) -> None:
        self.version += 1
        if self._on_edit is not None:
            self._on_edit(edit)

    def _log(self, action: str, target: str, detail: str = "", undo: Undo | None = None) -> None:
        edit = Edit(action, target, detail)
        self.edits.append(edit)
        self._undo.append(undo)
        self._changed(edit)
        log.debug("%s: %s %s %s", self.name, action, target, detail)

    def record(self, action: str, target: str, detail: str = "") -> None:
        """Log an edit made by a helper this editor does not wrap (e.g. a module swap); it cannot be rolled back."""
        self._log(action, target, detail)

    def checkpoint(self) -> int:
        """A mark to ``rollback`` to: the number of edits so far."""
        return len(self.edits)

    def rollback(self, mark: int) -> None:
        """Undo every edit made after ``mark`` (latest first) and drop it from the log; recompiles.

        Raises:
            EditError: when one of those edits cannot be undone (an erase, a recorded helper edit); nothing is
                undone then.
        """
        stuck = [e for e, u in zip(self.edits[mark:], self._undo[mark:]) if u is None]
        if stuck:
            raise EditError(f"cannot roll back {stuck[0].action} {stuck[0].target}: roll back to a mark after it, "
                            "or work on a copy of the module")
        while len(self.edits) > mark:
            self.edits.pop()
            undo = self._undo.pop()
            assert undo is not None
            undo()
        self._aliases = None
        self.gm.recompile()
        self._changed(Edit("rollback", str(mark)))

    # ------------------------------------------------------------------ tensors
    def tensor(self, qualname: str) -> torch.Tensor | None:
        """The tensor stored at ``qualname``."""
        return get_tensor(self.gm, qualname)

    def aliases(self, qualname: str) -> list[str]:
        """Every qualified name holding the same tensor object as ``qualname`` (itself first)."""
        if self._aliases is None:
            table: dict[int, list[str]] = {}
            for name, stored in list(self.gm.named_parameters(remove_duplicate=False)) + list(
                    self.gm.named_buffers(remove_duplicate=False)):
                table.setdefault(id(stored), []).append(name)
            self._aliases = table
        t = self.tensor(qualname)
        names = self._aliases.get(id(t), [qualname]) if t is not None else [qualname]
        return [qualname, *(n for n in names if n != qualname)]

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
        """Replace the tensor at ``qualname`` and at every name tied to it by one new tensor, so ties stay.

        The new tensor keeps whether the old one was a parameter (and its requires_grad) or a buffer; a module
        attribute that was ``None`` (a conv without bias) becomes a parameter.
        """
        names = self.aliases(qualname)
        owner, leaf = _owner(self.gm, qualname)
        old = getattr(owner, leaf, None)
        if leaf in owner._buffers:
            new = value.detach()
        elif leaf in owner._parameters or isinstance(old, torch.nn.Parameter) or old is None:
            grad = old.requires_grad if isinstance(old, torch.Tensor) else True
            new = torch.nn.Parameter(value.detach(), requires_grad=grad)
        else:
            new = value.detach()
        undos = []
        for name in names:
            slot_owner, slot = _owner(self.gm, name)
            undos.append(_save_slot(slot_owner, slot))
            if slot in slot_owner._buffers:
                slot_owner._buffers[slot] = new
            else:
                setattr(slot_owner, slot, new)
        self._aliases = None
        tied = f" (tied: {', '.join(names[1:])})" if len(names) > 1 else ""

        def undo() -> None:
            for restore in reversed(undos):
                restore()

        self._log("set_tensor", qualname, (detail or f"shape {tuple(value.shape)}") + tied, undo)

    def add_tensor(self, hint: str, value: torch.Tensor, parameter: bool = True, owner: str = "") -> str:
        """Register a new parameter (or persistent buffer) on submodule ``owner``; returns its qualified name."""
        module = self.gm.get_submodule(owner) if owner else self.gm
        base = re.sub(r"\W", "_", hint).strip("_") or "tensor"
        name, i = base, 1
        while hasattr(module, name):
            name, i = f"{base}_{i}", i + 1
        undo = _save_slot(module, name)
        if parameter:
            module.register_parameter(name, torch.nn.Parameter(value.detach(), requires_grad=True))
        else:
            module.register_buffer(name, value.detach())
        qualname = f"{owner}.{name}" if owner else name
        self._aliases = None
        self._log("add_tensor", qualname, f"{'parameter' if parameter else 'buffer'} {tuple(value.shape)}", undo)
        return qualname

    def set_module_attr(self, module_path: str, attr: str, value: Any) -> None:
        """Set a plain attribute of a submodule (``in_features``, ``groups``, ...)."""
        module = self.gm.get_submodule(module_path)
        undo = _save_slot(module, attr)
        setattr(module, attr, value)
        self._log("set_attr", f"{module_path}.{attr}", repr(value), undo)

    def set_submodule(self, path: str, module: torch.nn.Module) -> None:
        """Install ``module`` at ``path`` (replacing what was there)."""
        owner, leaf = _owner(self.gm, path)
        had, old = leaf in owner._modules, owner._modules.get(leaf)
        setattr(owner, leaf, module)
        self._aliases = None

        def undo() -> None:
            if had:
                owner._modules[leaf] = old
            else:
                delattr(owner, leaf)

        self._log("set_module", path, type(module).__name__, undo)

    # ------------------------------------------------------------------ graph
    def _erase_inserted(self, node: fx.Node) -> Undo:
        return lambda: self.gm.graph.erase_node(node)

    def get_attr(self, qualname: str, before: fx.Node) -> fx.Node:
        """Insert a get_attr node for ``qualname`` before ``before``."""
        with self.gm.graph.inserting_before(before):
            node = self.gm.graph.get_attr(qualname)
        t = self.tensor(qualname)
        if t is not None:
            node.meta["val"] = _fake_like(t, before)
        self._log("insert", node.name, f"get_attr {qualname}", self._erase_inserted(node))
        return node

    def call(self, op: str, target: Any, args: Sequence[Any], kwargs: Mapping[str, Any] | None = None,
             before: fx.Node | None = None, after: fx.Node | None = None) -> fx.Node:
        """Insert a ``call_function``/``call_method``/``call_module`` node before or after a node."""
        graph = self.gm.graph
        ctx = graph.inserting_before(before) if before is not None else graph.inserting_after(after)
        with ctx:
            node = graph.create_node(op, target, tuple(args), dict(kwargs or {}))
        name = getattr(target, "__name__", str(target))
        self._log("insert", node.name, f"{op} {name}", self._erase_inserted(node))
        return node

    def replace_uses(self, old: fx.Node, new: fx.Node, detail: str = "") -> None:
        """Make every user of ``old`` read ``new`` instead."""
        old.replace_all_uses_with(new)
        self._log("replace", old.name, detail or f"uses now read {new.name}")

    def set_input(self, node: fx.Node, old: fx.Node, new: fx.Node) -> None:
        """Make ``node`` read ``new`` where it read ``old``."""
        node.replace_input_with(old, new)
        self._log("rewire", node.name, f"{old.name} -> {new.name}")

    def _save_call(self, node: fx.Node) -> Undo:
        args, kwargs, target = node.args, dict(node.kwargs), node.target

        def undo() -> None:
            node.target = target
            node.args, node.kwargs = args, kwargs

        return undo

    def set_arg(self, node: fx.Node, name: str, value: Any, argnames: Sequence[str]) -> None:
        """Set argument ``name`` of a call node, positionally if it was passed positionally."""
        undo = self._save_call(node)
        set_call_arg(node, name, value, argnames)
        shown = value.name if isinstance(value, fx.Node) else repr(value)
        self._log("set_arg", node.name, f"{name}={shown}", undo)

    def set_args(self, node: fx.Node, args: tuple[Any, ...], kwargs: Mapping[str, Any] | None = None,
                 target: Any = None, detail: str = "") -> None:
        """Replace ``node``'s arguments, and its keyword arguments and target when given."""
        undo = self._save_call(node)
        if target is not None:
            node.target = target
        node.args = tuple(args)
        if kwargs is not None:
            node.kwargs = dict(kwargs)
        self._log("set_args", node.name, detail or f"{node.args} {node.kwargs or ''}".rstrip(), undo)

    def erase(self, node: fx.Node) -> None:
        """Erase ``node``; it must have no users left.

        Raises:
            EditError: when ``node`` still has users (replace its uses first: ``replace_uses``).
        """
        if node.users:
            raise EditError(f"cannot erase {node.name}: still used by {[u.name for u in node.users]}; "
                            "point them elsewhere first (replace_uses)")
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

    # ------------------------------------------------------------------ tidy
    def _referenced(self, qualname: str) -> bool:
        for n in self.gm.graph.nodes:
            if n.op == "get_attr" and str(n.target) == qualname:
                return True
            if n.op == "call_module" and qualname.startswith(f"{n.target}."):
                return True
        return False

    def tidy(self) -> None:
        """Remove get_attr nodes (and their tensors) the edits left unused and unused submodules; lint, recompile."""
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
        graph.lint()
        self.gm.recompile()


def _fake_like(t: torch.Tensor, near: fx.Node) -> Any:
    """A fake tensor for a new get_attr node, made in the fake mode of a nearby node's value when there is one."""
    for n in [near, *near.all_input_nodes]:
        val = n.meta.get("val")
        mode = getattr(val, "fake_mode", None)
        if mode is not None:
            return mode.from_tensor(t, static_shapes=True)
    return None
