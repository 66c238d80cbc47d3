"""The pass interface: ``Pass``, ``PassResult`` and its records, ``PassContext``, and the registry of pass names.

A pass is a frozen dataclass whose fields are its options; ``name``, ``lossless`` and ``requires`` are class
variables. ``run(gm, ctx)`` edits the graph module in place (through a ``GraphEditor``) and returns a
``PassResult``. Passes keep no state between runs: what they share travels in the ``PassContext``.

Example:
    >>> @register_pass
    ... @dataclass(frozen=True)
    ... class CountPass(Pass):
    ...     name: ClassVar[str] = "count"
    ...     def run(self, gm, ctx):
    ...         return PassResult(self.name, changed=False, metrics={"nodes": len(gm.graph.nodes)})
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
import torch.fx as fx

from fxopt.analysis.cost import Roofline
from fxopt.editor import Edit
from fxopt.errors import PassError
from fxopt.pruning.calibration import LossFn
from fxopt.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skip:
    """A place where a rule matched but did not fire, and why (the negative half of every rewrite)."""

    rule: str
    node: str
    reason: str


@dataclass(frozen=True)
class PassResult:
    """What one pass did.

    Attributes:
        pass_name: the pass's spec text (name and non-default options).
        changed: whether the graph or its tensors changed.
        edits: every edit, in order.
        skips: every match that did not fire, with its reason.
        metrics: numbers the pass or the manager measured (``nodes``/``params`` as (before, after) pairs, ...).
        notes: free-form remarks (a lowering fallback reason, a warning).
        duration_s: wall time of the pass, filled by the PassManager.
    """

    pass_name: str
    changed: bool
    edits: tuple[Edit, ...] = ()
    skips: tuple[Skip, ...] = ()
    metrics: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    duration_s: float = 0.0

    def replace(self, **changes: Any) -> PassResult:
        """A copy with ``changes`` applied (metrics are merged, not replaced)."""
        if "metrics" in changes:
            changes["metrics"] = {**self.metrics, **changes["metrics"]}
        return dataclasses.replace(self, **changes)

    def tables(self) -> dict[str, tuple[Mapping[str, Any], ...]]:
        """The metrics that are tables, by name: non-empty tuples of rows (mappings), such as the layers the
        ``substitute`` pass replaced. Reports print them one row per line."""
        return {k: v for k, v in self.metrics.items()
                if isinstance(v, tuple) and v and all(isinstance(row, Mapping) for row in v)}

    def counts(self) -> dict[str, int]:
        """Number of edits per action."""
        out: dict[str, int] = {}
        for e in self.edits:
            out[e.action] = out.get(e.action, 0) + 1
        return out

    def summary(self) -> str:
        """One line: the pass, whether it changed the graph, edit counts and skip count."""
        counts = ", ".join(f"{k} x{v}" for k, v in sorted(self.counts().items())) or "no edits"
        skipped = f", {len(self.skips)} skipped" if self.skips else ""
        return f"{self.pass_name}: {'changed' if self.changed else 'unchanged'} ({counts}{skipped})"


AnalysisFn = Callable[[fx.GraphModule, "PassContext"], Any]
ANALYSES: dict[str, AnalysisFn] = {}
"""Analyses a pass can declare in ``requires``, by name; extend with ``register_analysis``."""


def register_analysis(name: str) -> Callable[[AnalysisFn], AnalysisFn]:
    """Decorator registering an analysis ``fn(gm, ctx) -> value`` under ``name`` for ``Pass.requires``."""

    def deco(fn: AnalysisFn) -> AnalysisFn:
        ANALYSES[name] = fn
        return fn

    return deco


@register_analysis("views")
def _views(gm: fx.GraphModule, ctx: PassContext) -> dict[fx.Node, Any]:
    from fxopt.ops.registry import REGISTRY

    return {n: REGISTRY.view(n, gm) for n in gm.graph.nodes if n.op in ("call_module", "call_function",
                                                                        "call_method")}


@register_analysis("channels")
def _channels(gm: fx.GraphModule, ctx: PassContext) -> Any:
    from fxopt.analysis.analysis import analyze_graph

    return analyze_graph(gm, ctx.example_inputs)


@register_analysis("cost")
def _cost(gm: fx.GraphModule, ctx: PassContext) -> Any:
    from fxopt.analysis.cost import graph_cost

    return graph_cost(gm, ctx.example_inputs, target=ctx.target)


@dataclass(eq=False)
class PassContext:
    """What passes share during one pipeline run.

    Attributes:
        example_inputs: real inputs (or meta tensors) for shape propagation and checks.
        target: the hardware target (an ``fxopt.targets.Target``), when the pipeline was built for one.
        calibration: optional calibration data (an iterable of input tuples) for data-aware passes.
        loss_fn: ``loss_fn(output, target) -> scalar`` for gradient-based criteria (the prune pass's Taylor
            importance); with it, each calibration batch is an ``(inputs, target)`` pair.
        verbose: let compilers print their progress (autotuning, recompilation notices); off by default.
        timer: ``timer(modules, inputs) -> {label: ms}``, how the lowering pass times its candidates (None:
            ``fxopt.passes.lower_select.median_ms``; tests pass a fake one).
        version: graph version; bumped by every edit, it invalidates cached analyses.
        lowered: the compiled module, once a lowering pass ran.
        previous: names of the passes that already ran.
    """

    example_inputs: tuple[Any, ...] = ()
    target: Roofline | None = None
    calibration: Any = None
    loss_fn: LossFn | None = None
    verbose: bool = False
    timer: Callable[[Mapping[str, Callable[..., Any]], Sequence[Any]], Mapping[str, float]] | None = None
    version: int = 0
    lowered: torch.nn.Module | None = None
    previous: list[str] = field(default_factory=list)
    _cache: dict[str, tuple[int, int, Any]] = field(default_factory=dict)

    def bump(self) -> None:
        """Mark the graph as changed: every cached analysis is recomputed on next use."""
        self.version += 1

    def analysis(self, name: str, gm: fx.GraphModule) -> Any:
        """The analysis ``name`` of ``gm``, computed once per graph version.

        Raises:
            PassError: when no analysis of that name is registered.
        """
        fn = ANALYSES.get(name)
        if fn is None:
            raise PassError(f"unknown analysis {name!r}; registered analyses: {', '.join(sorted(ANALYSES))}")
        hit = self._cache.get(name)
        if hit is not None and hit[0] == id(gm) and hit[1] == self.version:
            return hit[2]
        value = fn(gm, self)
        self._cache[name] = (id(gm), self.version, value)
        return value

    def cached(self, name: str) -> bool:
        """Whether ``name`` is cached for the current graph version."""
        hit = self._cache.get(name)
        return hit is not None and hit[1] == self.version

    def module(self, gm: fx.GraphModule) -> torch.nn.Module:
        """The module to run: the lowered one when a lowering pass succeeded, else ``gm``."""
        return self.lowered if self.lowered is not None else gm


@dataclass(frozen=True)
class Pass:
    """Base class of every pass: a frozen dataclass whose fields are its options.

    Subclasses set ``name`` (the spec name), ``lossless`` (outputs are unchanged within float tolerance) and
    ``requires`` (analysis names the manager computes first, available through ``ctx.analysis(name, gm)``),
    and implement ``run``.
    """

    name: ClassVar[str] = ""
    lossless: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = ()

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        """Rewrite ``gm`` in place and report what was done."""
        raise NotImplementedError(f"{type(self).__name__} does not implement run()")

    def options(self) -> dict[str, Any]:
        """The pass's options by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def non_default_options(self) -> dict[str, Any]:
        """The options whose value differs from the field default."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                out[f.name] = value
                continue
            if value != default or type(value) is not type(default):
                out[f.name] = value
        return out

    def __str__(self) -> str:
        from fxopt.passes.spec import format_pass

        return format_pass(self)


P = TypeVar("P", bound=type[Pass])


class PassRegistry:
    """Pass classes by spec name: a ``Registry`` whose ``register`` checks that a class is a named, frozen Pass."""

    def __init__(self) -> None:
        self.passes: Registry[type[Pass]] = Registry("pass", PassError)

    def register(self, cls: P) -> P:
        """Register ``cls`` under ``cls.name``.

        Raises:
            PassError: if the class is not a frozen dataclass Pass with a name, or the name is taken by
                another class.
        """
        if not (isinstance(cls, type) and issubclass(cls, Pass)):
            raise PassError(f"{cls!r} is not a Pass subclass")
        if not cls.name:
            raise PassError(f"{cls.__name__} has no name; set `name: ClassVar[str] = \"...\"`")
        params = getattr(cls, "__dataclass_params__", None)
        if params is None or not params.frozen or "__dataclass_fields__" not in cls.__dict__:
            raise PassError(f"{cls.__name__} must be decorated with @dataclass(frozen=True)")
        old = self.passes.get(cls.name, None)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise PassError(f"pass name {cls.name!r} is already registered by {old.__module__}.{old.__qualname__}")
        self.passes.register(cls.name, cls)
        return cls

    def get(self, name: str) -> type[Pass]:
        """The pass class registered as ``name``.

        Raises:
            PassError: for unknown names, listing the valid ones.
        """
        return self.passes.get(name)

    def names(self) -> list[str]:
        """Registered pass names, sorted."""
        return self.passes.names()

    def __contains__(self, name: object) -> bool:
        return name in self.passes

    @contextlib.contextmanager
    def scoped(self) -> Iterator[PassRegistry]:
        """Context in which registrations are private and dropped at exit."""
        with self.passes.scoped():
            yield self


PASSES = PassRegistry()
"""The process-wide pass registry; use ``PASSES.scoped()`` in tests."""


def register_pass(cls: P) -> P:
    """Class decorator: register a pass under its ``name`` so pipeline specs can use it.

    Example:
        >>> @register_pass
        ... @dataclass(frozen=True)
        ... class MyPass(Pass):
        ...     name: ClassVar[str] = "mine"
        ...     def run(self, gm, ctx): ...
    """
    return PASSES.register(cls)


def make_pass(name: str, **options: Any) -> Pass:
    """Instantiate the registered pass ``name`` with ``options``.

    Raises:
        PassError: for an unknown pass or option, naming the valid ones.
    """
    return instantiate(PASSES.get(name), options)


def instantiate(cls: type[Pass], options: Mapping[str, Any]) -> Pass:
    """``cls(**options)``, with unknown options and invalid values reported as PassError."""
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise PassError(f"pass {cls.name!r} has no option {', '.join(unknown)}; its options: "
                        f"{', '.join(sorted(valid)) or '(none)'}")
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise PassError(f"invalid options for pass {cls.name!r}: {exc}") from exc
