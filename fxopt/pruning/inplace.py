"""In-place pruning: a pruned graph's sliced tensors and new sizes written back into the user's own modules.

The graph path (``fxopt.prune``) returns a GraphModule: the user's class, its ``generate``, ``save_pretrained`` and
size attributes are gone. ``apply_to`` takes that pruned graph module and the model it came from, and

1. gives every module whose parameter or buffer the graph sliced the sliced tensor (matched by name: the graph's
   ``get_attr`` and ``call_module`` targets are the model's module paths), ties kept;
2. updates each touched module's size attributes through its class's size rule (``fxopt.pruning.module_sizes``);
3. for a transformers model, writes ``config`` fields on which all modules agree, and checks that the class
   built from the new config has exactly the pruned model's parameter shapes (so ``from_pretrained`` reloads it);
4. runs the model and the pruned graph module on the traced inputs and requires the same outputs.

When any step fails the model is restored as it was and ``Inexpressible`` names the reason; ``prune(...,
inplace=True)`` then returns the graph module and its report says which path was taken.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from fxopt.equivalence import assert_equivalent
from fxopt.pruning.module_sizes import SIZE_RULES, Inexpressible
from fxopt.pruning.prune_report import PruneReport
from fxopt.trace import without_kv_cache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttributeChange:
    """One attribute written in place: ``owner`` is a module path (``""`` for the root) or ``"config"``."""

    owner: str
    name: str
    before: Any
    after: Any


@dataclass(frozen=True)
class InplaceRecord:
    """What ``apply_to`` changed in the user's model.

    Attributes:
        parameters: parameter and buffer names given sliced tensors (every tied name).
        attributes: module size attributes changed.
        config: config fields changed.
        unruled: modules with sliced tensors but no size rule (the output check covered them).
        max_abs_difference: largest output difference from the pruned graph module at the traced inputs.
    """

    parameters: tuple[str, ...]
    attributes: tuple[AttributeChange, ...]
    config: tuple[AttributeChange, ...]
    unruled: tuple[str, ...]
    max_abs_difference: float


class _Undo:
    """Old values of everything changed, restored in reverse order."""

    def __init__(self) -> None:
        self.steps: list[tuple[Any, str, Any, bool]] = []

    def set_item(self, table: dict[str, Any], key: str, value: Any) -> None:
        self.steps.append((table, key, table[key], True))
        table[key] = value

    def set_attr(self, obj: Any, name: str, value: Any) -> None:
        self.steps.append((obj, name, getattr(obj, name), False))
        setattr(obj, name, value)

    def restore(self) -> None:
        for obj, key, old, is_item in reversed(self.steps):
            if is_item:
                obj[key] = old
            else:
                setattr(obj, key, old)
        self.steps.clear()


def _tensor_slots(model: nn.Module) -> Iterator[tuple[str, str, dict[str, Any], str]]:
    """(full name, owning module path, the module's parameter or buffer table, key) for every tensor, ties too."""
    for path, module in model.named_modules(remove_duplicate=False):
        for table in (module._parameters, module._buffers):
            for key, t in table.items():
                if t is not None:
                    yield (f"{path}.{key}" if path else key), path, table, key


def _graph_tensor(gm: fx.GraphModule, name: str) -> torch.Tensor:
    owner, _, attr = name.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, attr)


def _swap_tensors(model: nn.Module, gm: fx.GraphModule, names: Sequence[str], undo: _Undo) -> \
        tuple[list[str], set[str]]:
    """Give the model the graph's sliced tensors; returns the names replaced and the paths of their modules."""
    slots = list(_tensor_slots(model))
    by_name = {name: table[key] for name, _, table, key in slots}
    new_by_id: dict[int, torch.Tensor] = {}
    for name in names:
        if name not in by_name:
            raise Inexpressible(f"the graph slices {name!r}, which is not a parameter or buffer of "
                                f"{type(model).__name__} (a constant of the trace); only the graph path has it")
        old = by_name[name]
        new = _graph_tensor(gm, name).detach()
        if id(old) in new_by_id:
            continue
        new_by_id[id(old)] = nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) \
            else new
    replaced, owners = [], set()
    for name, path, table, key in slots:
        swapped = new_by_id.get(id(table[key]))
        if swapped is not None:
            undo.set_item(table, key, swapped)
            replaced.append(name)
            owners.add(path)
    return replaced, owners


def _ancestors(paths: set[str]) -> set[str]:
    out = {""}
    for p in paths:
        parts = p.split(".") if p else []
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return out


def _resize_modules(model: nn.Module, owners: set[str], undo: _Undo) \
        -> tuple[list[AttributeChange], dict[str, dict[int, str]], list[str]]:
    """Apply the size rule of every touched module and its ancestors.

    Untouched modules with a rule only say which config values they need, so that layers pruned unevenly are
    found. Returns the changes, per config field the values modules need (value -> first module asking), and the
    modules with sliced tensors but no rule.
    """
    touched = _ancestors(owners)
    changes: list[AttributeChange] = []
    facts: dict[str, dict[int, str]] = {}
    unruled: list[str] = []
    for path, module in model.named_modules():
        rule = SIZE_RULES.rule_for(module)
        if rule is None:
            if path in owners:
                unruled.append(f"{path} ({type(module).__name__})")
            continue
        try:
            sizes = rule(module)
        except Inexpressible as exc:
            if path not in touched:
                continue  # left as it was: it needs no new sizes
            raise Inexpressible(f"{path or type(module).__name__}: {exc}") from exc
        for name, value in sizes.config.items():
            facts.setdefault(name, {}).setdefault(int(value), path)
        if path not in touched:
            continue
        for attr, value in sizes.attributes.items():
            before = getattr(module, attr)
            if before != value:
                undo.set_attr(module, attr, value)
                changes.append(AttributeChange(path, attr, before, value))
    return changes, facts, unruled


def _pretrained_class(model: nn.Module) -> bool:
    utils = sys.modules.get("transformers.modeling_utils")
    return utils is not None and isinstance(model, utils.PreTrainedModel)


def _update_config(model: nn.Module, facts: dict[str, dict[int, str]], undo: _Undo) -> list[AttributeChange]:
    """Write the config fields all modules agree on; check that the config rebuilds the pruned shapes."""
    config = getattr(model, "config", None)
    if config is None or not _pretrained_class(model):
        return []
    changes = []
    for name, values in facts.items():
        if not hasattr(config, name):
            continue
        if len(values) > 1:
            where = ", ".join(f"{v} at {p}" for v, p in sorted(values.items()))
            raise Inexpressible(f"modules disagree on config.{name} ({where}); {type(config).__name__} holds one "
                                "value, so from_pretrained could not rebuild layers pruned unevenly")
        (value,) = values
        before = getattr(config, name)
        if before != value:
            undo.set_attr(config, name, value)
            changes.append(AttributeChange("config", name, before, value))
    _check_rebuild(model, config)
    return changes


def _check_rebuild(model: nn.Module, config: Any) -> None:
    """Build the model's class from ``config`` on the meta device and compare every tensor's shape."""
    with torch.device("meta"):
        fresh = type(model)(copy.deepcopy(config))
    want = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [f"{k}: config gives {want[k]}, pruned {got[k]}" for k in got if k in want and want[k] != got[k]]
    if wrong:
        raise Inexpressible(f"{type(config).__name__} cannot express the pruned sizes ("
                            + "; ".join(wrong[:3]) + (" ..." if len(wrong) > 3 else "")
                            + "); from_pretrained would not reload the model")


def _graph_inputs(gm: fx.GraphModule, inputs: tuple[Any, ...]) -> list[Any]:
    flat, _ = torch.utils._pytree.tree_flatten(inputs)
    n_ph = sum(1 for n in gm.graph.nodes if n.op == "placeholder")
    return list(flat) if len(flat) == n_ph else list(inputs)


def _verify(model: nn.Module, gm: fx.GraphModule, inputs: tuple[Any, ...], unruled: Sequence[str]) -> float:
    """The largest output difference between the model and the graph; raises Inexpressible past the tolerance."""

    class _Flat(nn.Module):  # runs the graph on its flattened inputs, so both modules take ``inputs``
        def forward(self, *args: Any) -> Any:
            return gm(*_graph_inputs(gm, args))

    try:
        with without_kv_cache(model):
            return assert_equivalent(_Flat(), model, inputs).max_abs
    except Exception as exc:  # a wrong size attribute raises in forward or gives other numbers: both mean "no"
        hint = f"; modules without a size rule: {', '.join(unruled)}" if unruled else ""
        raise Inexpressible(f"the model changed in place does not compute what the pruned graph does "
                            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}){hint}") from exc


def apply_to(model: nn.Module, pruned: fx.GraphModule, example_inputs: Any) -> InplaceRecord:
    """Prune ``model`` in place as ``pruned`` (its pruned graph module) says, keeping the model's class.

    Args:
        model: the module ``pruned`` was traced from, unchanged since.
        pruned: the GraphModule ``fxopt.prune`` or ``fxopt.prune_groups`` returned for ``model``; the model takes
            its sliced tensors (shared with it, not copied).
        example_inputs: the inputs ``model`` was traced with (a tensor, or a tuple or list of positional inputs);
            the model's outputs on them must equal ``pruned``'s.

    Returns:
        An InplaceRecord of the tensors, size attributes and config fields changed.

    Raises:
        Inexpressible: (a PruneError) when the model's modules or config cannot hold the pruned sizes, naming the
            module or field; the model is then left exactly as it was.

    Example:
        >>> small, report = fxopt.prune(llm, (ids,), ratio=0.5)
        >>> record = fxopt.apply_to(llm, small, (ids,))
        >>> llm.generate(ids, max_new_tokens=8)
    """
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    names = pruned.meta.get("fxopt", {}).get("pruned", {}).get("parameters", [])
    undo = _Undo()
    try:
        replaced, owners = _swap_tensors(model, pruned, names, undo)
        attributes, facts, unruled = _resize_modules(model, owners, undo)
        config = _update_config(model, facts, undo)
        difference = _verify(model, pruned, inputs, unruled)
    except BaseException:
        undo.restore()
        raise
    log.info("pruned %s in place: %d tensors, %d attributes, %d config fields", type(model).__name__,
             len(replaced), len(attributes), len(config))
    return InplaceRecord(tuple(replaced), tuple(attributes), tuple(config), tuple(unruled), difference)


def prune_in_place(model: nn.Module, pruned: fx.GraphModule, report: PruneReport, example_inputs: Any) \
        -> PruneReport:
    """``apply_to`` for ``prune(..., inplace=True)``: the report with ``path`` saying whether it succeeded.

    Returns:
        ``report`` with ``path="in place"``, or ``path="graph (reason)"`` when the model was left alone.
    """
    try:
        apply_to(model, pruned, example_inputs)
    except Inexpressible as exc:
        log.info("in-place pruning of %s fell back to the graph path: %s", type(model).__name__, exc)
        return dataclasses.replace(report, path=f"graph ({exc})")
    return dataclasses.replace(report, path="in place")


__all__ = ["AttributeChange", "InplaceRecord", "Inexpressible", "apply_to", "prune_in_place"]
