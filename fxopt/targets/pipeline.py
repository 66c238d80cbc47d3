"""``pipeline_for(target, options)``: the pass pipeline for a target, built from data, not from the target's name.

The stages are listed once, in order, each with a condition on the target's fields and the caller's options
and a builder for its pass. Pruning and substitution passes come from the pass registry; when they are not
registered, asking for them raises an error that names the missing pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fxopt.errors import PassError
from fxopt.passes.base import PASSES, Pass, instantiate, make_pass
from fxopt.targets.spec import Target

PRECISIONS = ("bf16", "fp16", "int8", "int8_dynamic", "tf32", "auto")
RECIPES = (None, "default", "max-autotune")
"""Lowering recipes ``optimize(recipe=...)`` takes (None and ``"default"``: the target's own candidates)."""


@dataclass(frozen=True)
class OptimizeOptions:
    """The options of ``fxopt.optimize`` that shape the pipeline.

    Attributes:
        prune: None, a ratio in (0, 1), a dict of the prune pass's options, or a prune Pass.
        substitute: None, a structure name, a dict of the substitute pass's options, or a Pass.
        precision: None (fp32), ``"auto"`` (the target's choice), ``"bf16"``, ``"fp16"``, ``"int8"``, ``"tf32"``.
        compile: lower with torch.compile for the target.
        recipe: None (the target's candidates) or ``"max-autotune"`` (add max-autotune to them: slow to compile).
        compile_budget_s: seconds the lowering may spend compiling; giving one adds max-autotune as the last
            candidate, compiled only while the budget lasts.
    """

    prune: Any = None
    substitute: Any = None
    precision: str | None = None
    compile: bool = True
    recipe: str | None = None
    compile_budget_s: float | None = None


def _always(t: Target, o: OptimizeOptions) -> bool:
    return True


def _option_pass(name: str, value: Any, first_option: str, target: Target, options: OptimizeOptions) -> Pass:
    """A registered pass built from an optimize() option: a Pass, a dict of options, or one value."""
    if isinstance(value, Pass):
        return value
    if name not in PASSES:
        raise PassError(f"optimize({name}=...) needs a pass registered as {name!r}, and none is; registered "
                        f"passes: {', '.join(PASSES.names())}")
    cls = PASSES.get(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    values = dict(value) if isinstance(value, Mapping) else {first_option: value}
    if "round_to" in fields and "round_to" not in values:
        values["round_to"] = target.alignment(resolve_precision(target, options) or "fp32")
    return instantiate(cls, values)


def resolve_precision(target: Target, options: OptimizeOptions) -> str | None:
    """The dtype the precision pass converts to (None: stay fp32); refuses dtypes slow on the target.

    Raises:
        PassError: for unknown precisions and dtypes the target runs slower than fp32.
    """
    p = options.precision
    if p is None:
        return None
    if p not in PRECISIONS:
        raise PassError(f"unknown precision {p!r}; use one of {', '.join(PRECISIONS)}")
    if p == "auto":
        p = target.auto_precision
    if p is None or p == "tf32":
        return None
    if p in target.slow_dtypes:
        raise PassError(f"precision {p!r} runs slower than fp32 on target {target.name!r} "
                        f"(slow dtypes: {', '.join(target.slow_dtypes)}); keep fp32 or use 'int8'")
    return "int8_dynamic" if p == "int8" else p


def _lower(t: Target, o: OptimizeOptions) -> Pass:
    recipe = t.lowering
    if o.precision == "tf32" and not recipe.tf32:
        raise PassError(f"target {t.name!r} has no TF32 matmuls")
    if o.recipe not in RECIPES:
        raise PassError(f"unknown lowering recipe {o.recipe!r}; use one of {', '.join(map(repr, RECIPES))}")
    tf32 = recipe.tf32 and o.precision in ("tf32", "auto", "bf16", "fp16")
    autotune = ("max-autotune",) if o.recipe == "max-autotune" or o.compile_budget_s is not None else ()
    return make_pass("lower", backend=recipe.backend, mode=recipe.mode, freezing=recipe.freezing,
                     cuda_graphs=recipe.cuda_graphs, tf32=tf32, alternatives=recipe.alternatives + autotune,
                     select=True, budget_s=o.compile_budget_s)


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: when it applies and how its pass is built."""

    name: str
    applies: Callable[[Target, OptimizeOptions], bool]
    build: Callable[[Target, OptimizeOptions], Pass]


STAGES: tuple[Stage, ...] = (
    Stage("cleanup", _always, lambda t, o: make_pass("cleanup")),
    Stage("fuse", _always, lambda t, o: make_pass("fuse", siblings=t.horizontal_fusion)),
    Stage("prune", lambda t, o: o.prune is not None, lambda t, o: _option_pass("prune", o.prune, "ratio", t, o)),
    Stage("substitute", lambda t, o: o.substitute is not None,
          lambda t, o: _option_pass("substitute", o.substitute, "structure", t, o)),
    Stage("cleanup", lambda t, o: o.prune is not None or o.substitute is not None,
          lambda t, o: make_pass("cleanup")),
    Stage("sdpa", lambda t, o: t.device == "cuda", lambda t, o: make_pass("sdpa")),  # CPU: see docs/passes.md
    Stage("channels_last", lambda t, o: t.channels_last, lambda t, o: make_pass("channels_last")),
    Stage("precision", lambda t, o: resolve_precision(t, o) is not None,
          lambda t, o: make_pass("precision", dtype=str(resolve_precision(t, o)))),
    Stage("lower", lambda t, o: o.compile, _lower),
)
"""The stages in pipeline order."""


def pipeline_for(target: Target, options: OptimizeOptions | None = None) -> list[Pass]:
    """The pass pipeline for ``target`` and ``options``.

    Example:
        >>> pipeline_for(get_target("cpu"), OptimizeOptions(compile=False))
        [CleanupPass(...), FusePass(...), ChannelsLastPass(...)]
    """
    import fxopt.passes  # noqa: F401  (registers the built-in passes)

    options = options or OptimizeOptions()
    return [stage.build(target, options) for stage in STAGES if stage.applies(target, options)]
