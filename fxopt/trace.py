"""Front-ends: capture an nn.Module as a torch.fx GraphModule with fake-tensor shapes in ``node.meta["val"]``.

Two front-ends are offered. ``fx`` runs torch.fx symbolic tracing (standard ``torch.nn`` modules stay leaves, so
the graph keeps ``call_module`` nodes that pruning can resize in place; a custom ``torch.autograd.Function`` stays
one opaque call, so the captured module keeps its backward and the analysis treats it as a barrier). ``export``
runs non-strict ``torch.export`` and unlifts the result to a GraphModule of ATen ops with parameters as
``get_attr`` nodes; it follows data-dependent Python (transformers, most timm models) that symbolic tracing cannot.
``auto`` tries ``fx`` and falls back to ``export``, recording which one it used and why in ``gm.meta["fxopt"]``.

Batch and sequence dims stay symbolic (``fxopt.input_dims``): export runs with ``Dim.AUTO`` on them, and fx
reads sizes at run time anyway. ``static_dims`` finds the dims the graph cannot vary and the node that fixes each;
``TraceInfo.dynamic`` and ``TraceInfo.static`` record both.

Shapes are filled by running the graph under a ``FakeTensorMode``: no real compute happens, so a model whose
parameters live on the meta device (a 7B-shaped config) traces in seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from fxopt.errors import TraceError
from fxopt.input_dims import (
    InputDim,
    dynamic_dims,
    export_shapes,
    flat_tensors,
    other_size,
    resized,
    spatial_dims,
    widened,
)
from fxopt.module_state import StateError, check_state_shapes, restore, tensor_attributes, thread_state
from fxopt.tracers import LeafTracer, ShapeTracer, known_output

log = logging.getLogger(__name__)

Frontend = Literal["auto", "fx", "export"]


@dataclass(frozen=True)
class TraceInfo:
    """How a graph was captured: the front-end used, for ``auto`` why the first choice failed, and the state the
    model keeps between calls that the graph does not (``dropped_state``: attributes ``forward`` reassigns with
    tensors of another shape), whether the graph's sizes are the example's (``specialized``: traced by
    ``ShapeTracer`` because Python code needed sizes as numbers), and whether a Hugging Face model was captured
    without its key/value cache (``cache_disabled``: its ``config.use_cache`` was off during capture)."""

    frontend: str
    fallback_reason: str | None = None
    dropped_state: tuple[str, ...] = ()
    specialized: bool = False
    cache_disabled: bool = False
    dynamic: tuple[InputDim, ...] = ()
    static: tuple[StaticDim, ...] = ()


@dataclass(frozen=True)
class StaticDim:
    """An input dim the captured graph cannot vary, the first node that fixes it (``""`` when the graph takes it
    at a fixed size) and why, naming that node."""

    dim: InputDim
    node: str
    reason: str

    def __str__(self) -> str:
        return f"{self.dim} because {self.reason}"


def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


def _trace_fx(model: torch.nn.Module, tracer: LeafTracer) -> fx.GraphModule:
    before = tensor_attributes(model)
    try:
        graph = tracer.trace(model)
    finally:
        writes = restore(model, before)  # the user's module keeps its own values, never a proxy
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    if writes:
        thread_state(gm, writes, before)
    return gm


def _trace_export(model: torch.nn.Module, inputs: tuple[Any, ...]) -> fx.GraphModule:
    """Export with symbolic batch and sequence dims (``fxopt.input_dims``); statically when that fails."""
    dims = dynamic_dims(inputs)
    try:
        program = torch.export.export(model, widened(inputs, dims), dynamic_shapes=export_shapes(inputs, dims),
                                      strict=False)
    except Exception:  # a model export cannot trace symbolically may still export at the example's sizes
        log.debug("export with dynamic dims failed; exporting at the example's sizes", exc_info=True)
        program = torch.export.export(model, inputs, strict=False)
    gm = program.module()
    # fxopt keeps the example's concrete shapes in the placeholders' values, which export's input check would
    # read as constraints: the graph would refuse every other batch size once its guard call is cleaned up.
    gm.validate_inputs = False  # type: ignore[assignment]  # an attribute of export's unlifted module
    _inline_regions(gm)
    _drop_export_guards(gm)
    _drop_dropped_results(gm)
    return gm


def _drop_dropped_results(gm: fx.GraphModule) -> None:
    """Erase pure calls whose results nobody reads (MHA's head-averaged attention weights, when the model drops
    them): they would otherwise count as readers of channels. Parameter reads stay for the cleanup pass."""
    changed = False
    for node in reversed(list(gm.graph.nodes)):
        if node.op == "call_function" and not node.users and not node.is_impure():
            gm.graph.erase_node(node)
            changed = True
    if changed:
        gm.recompile()


def _drop_export_guards(gm: fx.GraphModule) -> None:
    """Remove the unused guard call and tensor-metadata asserts that export inserts; they carry no compute."""
    changed = False
    for node in list(gm.graph.nodes):
        is_guard = node.op == "call_module" and str(node.target).startswith("_guards")
        is_assert = node.op == "call_function" and getattr(node.target, "__name__", "").startswith(
            "_assert_tensor_metadata"
        )
        if (is_guard or is_assert) and not node.users:
            gm.graph.erase_node(node)
            changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()


def _inlinable_region(gm: fx.GraphModule, node: fx.Node) -> tuple[fx.GraphModule, tuple[Any, ...]] | None:
    """The submodule and operands of an export region call that can be inlined without changing the model.

    * ``wrap_with_set_grad_enabled`` (a ``with torch.no_grad():`` block): when the block reads only buffers and
      inputs (rotary tables, masks), inlining changes no gradient.
    * ``wrap_with_autocast`` with autocast *disabled* (timm's fp32 attention islands): export already wrote the
      region's casts into it, so inlined it computes the same in the model's own dtype. (Run the captured graph
      under an outer ``torch.autocast`` and those ops would autocast too; fxopt's graphs run in their own dtype.)

    Regions that enable autocast, or no_grad blocks that read trainable parameters, stay as they are (barriers).
    """
    from torch._higher_order_ops.wrap import wrap_with_autocast, wrap_with_set_grad_enabled

    if node.op != "call_function":
        return None
    if node.target is wrap_with_set_grad_enabled:
        sub_arg, operands = node.args[1], node.args[2:]
    elif node.target is wrap_with_autocast and node.args[2] is False:
        sub_arg, operands = node.args[4], node.args[5:]
    else:
        return None
    sub = getattr(gm, str(sub_arg.target), None) if isinstance(sub_arg, fx.Node) else None
    if not isinstance(sub, fx.GraphModule) or any(n.op == "get_attr" for n in sub.graph.nodes):
        return None
    if any(isinstance(o, fx.Node) and o.op == "get_attr" and _is_param(gm, str(o.target))
           and gm.get_parameter(str(o.target)).requires_grad for o in operands):
        return None
    return sub, tuple(operands)


def _inline_regions(gm: fx.GraphModule) -> None:
    """Inline the region calls export leaves (``_inlinable_region``) so the channel rules see through them."""
    changed = False
    for node in list(gm.graph.nodes):
        region = _inlinable_region(gm, node)
        if region is None:
            continue
        sub, operands = region
        env: dict[fx.Node, fx.node.Argument] = {}
        placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
        for ph, value in zip(placeholders, operands):
            env[ph] = value
        outputs: object = None
        with gm.graph.inserting_before(node):
            for inner in sub.graph.nodes:
                if inner.op == "placeholder":
                    continue
                if inner.op == "output":
                    outputs = torch.fx.node.map_arg(inner.args[0], env.__getitem__)
                    continue
                env[inner] = gm.graph.node_copy(inner, env.__getitem__)
        results = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        for user in list(node.users):
            if user.op == "call_function" and user.target is operator.getitem:
                user.replace_all_uses_with(results[user.args[1]])
                gm.graph.erase_node(user)
        if not node.users:
            gm.graph.erase_node(node)
            changed = True
    if changed:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.graph.lint()
        gm.recompile()


def _is_param(gm: fx.GraphModule, name: str) -> bool:
    try:
        gm.get_parameter(name)
    except AttributeError:
        return False
    return True


def check_input_count(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> None:
    """Raise a TraceError when there are more example inputs than the graph has placeholders."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(example_inputs) > len(placeholders):
        raise TraceError(f"{len(example_inputs)} example inputs for a graph of {type(gm).__name__} that takes "
                         f"{len(placeholders)} ({', '.join(n.name for n in placeholders)}); "
                         "pass forward()'s inputs only")


def propagate_shapes(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> None:
    """Fill ``node.meta["val"]`` with fake tensors by running ``gm`` under a FakeTensorMode.

    Args:
        gm: the graph module; its parameters may be real or on the meta device.
        example_inputs: real, meta or fake tensors (and other Python values) for the placeholders.

    Raises:
        TraceError: naming the node whose shape could not be computed.
    """
    check_input_count(gm, example_inputs)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake_inputs = [mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in example_inputs]
    prop = _TrackingProp(gm, mode)
    try:
        with mode:
            prop.propagate_dont_convert_inputs(*fake_inputs)
    except Exception as exc:  # the interpreter wraps the node's own error; keep it as the cause
        node = prop.current.name if prop.current is not None else "?"
        raise TraceError(f"shape propagation failed at node {node}: {_first_line(exc)}") from exc


class _TrackingProp(FakeTensorProp):
    """FakeTensorProp that remembers the node it is running, to name it when it fails, and knows the output of
    shape-preserving leaf modules without running them (a fake batch norm decomposes into a dozen ops: it was
    two thirds of ResNet-50's capture)."""

    current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        """Run ``n`` under fake tensors, recording it first."""
        self.current = n
        return super().run_node(n)

    def call_module(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The output's fake value from its shape alone where that is known (``known_output``); else run it."""
        module = self.fetch_attr(str(target))
        known = known_output(module, args, kwargs)
        return known if known is not None else super().call_module(target, args, kwargs)


def static_dims(gm: fx.GraphModule, example_inputs: Sequence[Any], dims: Sequence[InputDim]) -> tuple[StaticDim, ...]:
    """The dims among ``dims`` that ``gm`` cannot vary, each with the first node that fails when it varies.

    Runs the graph on fake tensors (no compute) with every dim of ``dims`` changed at once (``other_size``); when
    that runs, all of them may vary. Otherwise each dim is tried alone, and the node where a run fails (a
    flatten into a Linear for the image size, a position table of fixed length for the sequence) is the reason.

    Args:
        gm: the captured graph module; its ``node.meta`` is left alone.
        example_inputs: its inputs, as its placeholders take them (pytree-flattened for exported graphs).
        dims: the dims to check; ``InputDim.input`` indexes ``example_inputs``.

    Returns:
        The static dims in the order of ``dims``.
    """
    if not dims or _fake_run(gm, example_inputs, dims) is None:
        return ()
    found = []
    for d in dims:
        failure = _fake_run(gm, example_inputs, [d])
        if failure is not None:
            found.append(StaticDim(d, *failure))
    return tuple(found)


def _fake_run(gm: fx.GraphModule, example_inputs: Sequence[Any],
              dims: Sequence[InputDim]) -> tuple[str, str] | None:
    """Run ``gm`` on fake inputs with ``dims`` at other sizes; the failing node's name and why, or None."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    inputs = resized(list(example_inputs), {d: other_size(example_inputs[d.input].shape[d.dim], d) for d in dims})
    runner = _FakeRun(gm)
    try:
        with mode, _expected_failures():
            runner.run(*[mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in inputs])
    except Exception as exc:  # any failure at the new sizes means the graph fixes one of them
        node = runner.current
        where = _describe(gm, node) if node is not None else "the graph's inputs"
        return (node.name if node is not None else "", f"{where} fails at another size: {_first_line(exc)}")
    return None


@contextlib.contextmanager
def _expected_failures() -> Iterator[None]:
    """Keep fake tensors from logging, at error level, the failure that ``_fake_run`` is looking for (it is
    caught and reported as a static dim); the filter is removed on the way out."""
    logger = logging.getLogger("torch._subclasses.fake_tensor")
    drop = logging.Filter("no record passes a filter named so")
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


class _FakeRun(fx.Interpreter):
    """Runs a graph on fake tensors without touching ``node.meta``, remembering the node it is running; layers
    whose output shape follows from their input's are not run (``known_output``)."""

    current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        """Run ``n``, recording it first."""
        self.current = n
        return super().run_node(n)

    def call_module(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The output from the input's shape where that is known; else run the module."""
        known = known_output(self.fetch_attr(str(target)), args, kwargs)
        return known if known is not None else super().call_module(target, args, kwargs)


def _describe(gm: fx.GraphModule, n: fx.Node) -> str:
    if n.op == "call_module":
        return f"{n.name} ({type(gm.get_submodule(str(n.target))).__name__})"
    target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
    return f"{n.name} ({target})"


def _flat_inputs(gm: fx.GraphModule, inputs: tuple[Any, ...]) -> list[Any]:
    """Example inputs as the graph's placeholders see them (export graphs take the pytree-flattened inputs)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    flat, _ = torch.utils._pytree.tree_flatten(inputs)
    if len(flat) == len(placeholders):
        return flat
    return list(inputs)


@contextlib.contextmanager
def without_kv_cache(model: torch.nn.Module) -> Iterator[bool]:
    """Hugging Face models build a key/value cache object by default (``config.use_cache``), which no front-end
    can return from a graph: switch it off while capturing (yields whether it did), and back on after."""
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None
               and getattr(c, "use_cache", False) is True}
    for c in configs.values():
        c.use_cache = False
    try:
        yield bool(configs)
    finally:
        for c in configs.values():
            c.use_cache = True


def trace(model: torch.nn.Module, example_inputs: Any, frontend: Frontend = "auto") -> fx.GraphModule:
    """Capture ``model`` as a GraphModule whose nodes carry fake-tensor values in ``node.meta["val"]``.

    Args:
        model: the module to capture; it is not modified.
        example_inputs: a tensor or a tuple of positional inputs.
        frontend: ``"fx"`` (symbolic tracing), ``"export"`` (non-strict torch.export) or ``"auto"``
            (fx first, export when fx fails or its graph cannot propagate shapes).

    Returns:
        The graph module; ``gm.meta["fxopt"]["trace"]`` is a TraceInfo saying which front-end was used.

    Raises:
        TraceError: when no front-end can capture the model; the message names each front-end's failure.

    Example:
        >>> gm = fxopt.trace(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
    """
    if frontend not in ("auto", "fx", "export"):
        raise TraceError(f"unknown frontend {frontend!r}: use 'auto', 'fx' or 'export'")
    with without_kv_cache(model) as cache_disabled:
        gm = _capture(model, _as_tuple(example_inputs), frontend)
    if cache_disabled:
        info = gm.meta["fxopt"]["trace"]
        gm.meta["fxopt"]["trace"] = dataclasses.replace(info, cache_disabled=True)
    return gm


def _capture(model: torch.nn.Module, inputs: tuple[Any, ...], frontend: Frontend) -> fx.GraphModule:
    failures: list[str] = []
    dropped: tuple[str, ...] = ()
    if frontend in ("auto", "fx"):
        for sized in (False, True):  # symbolic sizes first; the example's sizes where Python needs numbers
            tracer = ShapeTracer(inputs) if sized else LeafTracer()
            try:
                gm = _trace_fx(model, tracer)
                if sized and all("val" in n.meta for n in gm.graph.nodes if n.op != "output"):
                    check_input_count(gm, _flat_inputs(gm, inputs))  # ShapeTracer's graphs already carry values
                else:
                    propagate_shapes(gm, _flat_inputs(gm, inputs))
                check_state_shapes(gm)
            except Exception as exc:  # symbolic tracing fails in many ways; all of them mean "try the next one"
                failures.append(f"fx{' with sizes' if sized else ''}: {type(exc).__name__}: {_first_line(exc)}")
                dropped = (exc.attribute,) if isinstance(exc, StateError) else dropped
                log.debug("symbolic tracing failed", exc_info=True)
                if isinstance(exc, StateError):
                    break  # the example's sizes would not change the state's
                continue
            dynamic, static = _dims(gm, inputs, specialized=sized)
            gm.meta.setdefault("fxopt", {})["trace"] = TraceInfo("fx", failures[0] if failures else None,
                                                                 specialized=sized, dynamic=dynamic, static=static)
            return gm
        if frontend == "fx":
            raise TraceError(f"symbolic tracing of {type(model).__name__} failed ({'; '.join(failures)}); "
                             "try frontend='export' or 'auto'")
    try:
        gm = _trace_export(model, inputs)
        symbolic = _symbolic_dims(gm)
        propagate_shapes(gm, _flat_inputs(gm, inputs))
    except Exception as exc:
        failures.append(f"export: {type(exc).__name__}: {_first_line(exc)}")
        raise TraceError(
            f"could not capture {type(model).__name__}: " + "; ".join(failures)
            + ". Check that the example inputs match forward()'s signature; data-dependent control flow "
            "needs torch.cond or a leaf module."
        ) from exc
    dynamic, static = _dims(gm, inputs, symbolic)
    gm.meta["fxopt"] = {"trace": TraceInfo("export", failures[0] if failures else None, dropped,
                                           dynamic=dynamic, static=static)}
    return gm


def _symbolic_dims(gm: fx.GraphModule) -> set[tuple[int, int]]:
    """``(placeholder index, dim)`` of every placeholder dim that export left symbolic."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    return {(i, d) for i, n in enumerate(placeholders) if isinstance(v := n.meta.get("val"), torch.Tensor)
            for d, s in enumerate(v.shape) if isinstance(s, torch.SymInt) and not s.node.expr.is_number}


def _dims(gm: fx.GraphModule, inputs: tuple[Any, ...],
          exported: set[tuple[int, int]] | None = None,
          specialized: bool = False) -> tuple[tuple[InputDim, ...], tuple[StaticDim, ...]]:
    """TraceInfo's ``dynamic`` and ``static`` fields: which batch, sequence and image dims the graph can vary.

    For an fx graph every batch, sequence and image dim is checked by a fake run (``static_dims``). Export
    already says which of the batch and sequence dims it kept symbolic (``exported``); only the others are run,
    to name the node that fixed them, and image dims, never requested from export, are not listed.
    """
    flat = _flat_inputs(gm, inputs)
    if len(flat) != len(flat_tensors(inputs)):
        return (), ()  # the placeholders do not take the flattened inputs: InputDim indices would not match
    wanted = dynamic_dims(inputs) + (spatial_dims(inputs) if exported is None else ())
    checked = [d for d in wanted if exported is None or (d.input, d.dim) not in exported]
    if specialized:  # sizes are numbers throughout: a run at other sizes proves nothing
        static = tuple(StaticDim(d, "", "forward() needs sizes as numbers, so the graph was traced with the "
                                        "example's (TraceInfo.specialized)") for d in checked)
    else:
        static = static_dims(gm, flat, checked)
    fixed = {s.dim for s in static}
    return tuple(d for d in wanted if d not in fixed), static


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
