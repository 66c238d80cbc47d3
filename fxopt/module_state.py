"""State a model keeps between calls: tensor attributes that ``forward`` reassigns (``self.h = tanh(...)``).

Symbolic tracing runs ``forward`` on proxies, so such an assignment would leave a proxy on the user's module and
lose the update from the graph. The fx front-end therefore snapshots every plain tensor attribute before tracing
(``tensor_attributes``), puts the user's values back afterwards (``restore``), and threads each reassigned
attribute through the graph as explicit state (``thread_state``): the graph module gets its own copy as a buffer,
reads it where ``forward`` read the attribute, and writes the new value into it (``copy_``) at the end of the
call, so the captured model behaves as the original across calls. A state whose new value changes shape from one
call to the next cannot be written in place: the attribute is reported instead, and capture falls back.

Copies of a model that passes will edit share its weights instead of duplicating them (``copy_sharing``,
``copy_sharing_parameters``): passes replace the tensors they change and never write into them, so a copy of the
modules and buffers is enough to leave the user's model as it was, at the cost of its buffers, not its weights.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.fx as fx

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)

STATE_KEY = "state"
"""Key of ``gm.meta["fxopt"]`` holding the initial value of every threaded state buffer."""


class StateError(ValueError):
    """A state ``forward`` keeps that the graph cannot carry (it changes shape from call to call)."""

    def __init__(self, attribute: str, message: str) -> None:
        super().__init__(message)
        self.attribute = attribute


@dataclass(frozen=True)
class StateWrite:
    """An attribute ``forward`` reassigned: the module's path, the attribute, and the value it assigned."""

    path: str
    name: str
    value: Any

    @property
    def qualname(self) -> str:
        """``path.name`` (``name`` on the root)."""
        return f"{self.path}.{self.name}" if self.path else self.name


def tensor_attributes(model: torch.nn.Module) -> dict[tuple[str, str], torch.Tensor]:
    """Every plain tensor attribute (not a parameter or a buffer) of every module, by (module path, name)."""
    return {(path, name): value for path, module in model.named_modules(remove_duplicate=False)
            for name, value in vars(module).items()
            if isinstance(value, torch.Tensor) and not name.startswith("_")}


def restore(model: torch.nn.Module, before: Mapping[tuple[str, str], torch.Tensor]) -> list[StateWrite]:
    """Put back the attributes tracing reassigned (and drop proxies it added); return what was assigned."""
    writes = []
    for path, module in model.named_modules(remove_duplicate=False):
        for name, value in list(vars(module).items()):
            old = before.get((path, name))
            if old is not None and value is not old:
                writes.append(StateWrite(path, name, value))
                module.__dict__[name] = old
            elif old is None and isinstance(value, fx.Proxy):
                writes.append(StateWrite(path, name, value))
                del module.__dict__[name]
    return writes


def thread_state(gm: fx.GraphModule, writes: list[StateWrite], before: Mapping[tuple[str, str], torch.Tensor]) \
        -> None:
    """Give ``gm`` a buffer per reassigned attribute and write the attribute's new value into it each call.

    Raises:
        ValueError: a write of something that is not a traced tensor of the attribute's shape and dtype.
    """
    output = next(n for n in gm.graph.nodes if n.op == "output")
    initial: dict[str, torch.Tensor] = {}
    for w in writes:
        old = before.get((w.path, w.name))
        if not isinstance(w.value, fx.Proxy) or old is None:
            raise ValueError(f"forward assigns {type(w.value).__name__} to {w.qualname}; only a tensor attribute "
                             "reassigned with a tensor of the same shape can be kept as state")
        owner = gm.get_submodule(w.path) if w.path else gm
        if isinstance(getattr(owner, w.name, None), torch.Tensor):
            delattr(owner, w.name)
        owner.register_buffer(w.name, old.detach().clone())
        initial[w.qualname] = old.detach().clone()
        with gm.graph.inserting_before(output):
            target = gm.graph.get_attr(w.qualname)
            gm.graph.call_function(torch.ops.aten.copy_.default, (target, w.value.node))
    gm.meta.setdefault("fxopt", {})[STATE_KEY] = initial
    gm.graph.lint()
    gm.recompile()


def check_state_shapes(gm: fx.GraphModule) -> None:
    """After shape propagation: every state write keeps the state's shape and dtype.

    Raises:
        StateError: a state that grows or changes (``self.history = torch.cat([self.history, y])``) cannot be
            written in place; the message names the attribute.
    """
    for node in gm.graph.nodes:
        if node.target is torch.ops.aten.copy_.default and node.args[0].op == "get_attr":
            name = str(node.args[0].target)
            if name not in state_buffers(gm):
                continue
            old, new = gm.get_buffer(name), node.args[1].meta.get("val")
            if not isinstance(new, torch.Tensor) or (tuple(new.shape), new.dtype) != (tuple(old.shape), old.dtype):
                got = f"{tuple(new.shape)} {new.dtype}" if isinstance(new, torch.Tensor) else type(new).__name__
                raise StateError(name, f"forward reassigns {name} ({tuple(old.shape)} {old.dtype}) with {got}: a "
                                       "state that changes shape cannot be kept in the graph")


def state_buffers(gm: torch.nn.Module) -> list[str]:
    """The qualified names of ``gm``'s threaded state buffers (empty for a model that keeps no state)."""
    meta = getattr(gm, "meta", {})
    return list(meta.get("fxopt", {}).get(STATE_KEY, {})) if isinstance(meta, dict) else []


def reset_state(gm: torch.nn.Module) -> list[str]:
    """Put every threaded state buffer of ``gm`` back to its value at capture (after calls made while optimizing).

    Returns:
        The buffers that could not be reset because pruning resized them; they keep the value they were sliced
        from.
    """
    meta = getattr(gm, "meta", {})
    resized = []
    for qualname, value in meta.get("fxopt", {}).get(STATE_KEY, {}).items():
        buffer = gm.get_buffer(qualname)
        if buffer.shape != value.shape:
            resized.append(qualname)
            continue
        with torch.no_grad():
            buffer.copy_(value)
    return resized


def copy_sharing(model: ModuleT, shared: Iterable[torch.Tensor]) -> ModuleT:
    """Deep-copy ``model`` (modules, buffers, graph, attributes) but keep the tensors in ``shared`` themselves.

    The copy holds the very tensor objects of ``shared`` (ties among them kept), so it costs no memory for them;
    it must not write into them: replace a shared tensor instead (``GraphEditor.set_tensor``).

    Example:
        >>> twin = copy_sharing(model, model.parameters())
        >>> twin.fc.weight is model.fc.weight
        True
    """
    memo: dict[int, Any] = {id(t): t for t in shared}
    return copy.deepcopy(model, memo)


def copy_sharing_parameters(model: ModuleT) -> ModuleT:
    """A deep copy of ``model`` whose parameters are ``model``'s own; buffers (mutable state) are copied.

    ``optimize`` edits this copy: its passes replace the parameters they change, and running statistics or
    threaded state written by the copy's ``forward`` stay out of the user's model.
    """
    return copy_sharing(model, model.parameters())
