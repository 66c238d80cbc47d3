"""Lowering: compile the optimized graph with ``torch.compile`` for the target, behind the Pass interface.

The pass leaves the graph as it is; it compiles it, runs it once on the example inputs (compilation is lazy, so
this is where a missing C++ compiler or an unsupported op shows up) and stores the compiled module in
``ctx.lowered``. If compiling fails for any reason, the pipeline keeps the eager graph module and the result
records why: ``optimize()`` never fails because inductor is unavailable. Lowering is also skipped, with the reason,
when the target's device is not where the model runs (a GPU target asked for on a machine without that GPU):
the passes the target shapes still ran, but a GPU recipe is never compiled for a CPU model.

With several candidates (torch.compile's default and ``reduce-overhead`` on GPUs, max-autotune when asked) the
pass compiles each, and with ``select`` times them beside the eager graph module on the example inputs
(``fxopt.passes.lower_select``) and keeps the fastest, eager included; the result's first note gives every time.

Compilers talk while they work (autotuning tables, recompilation notices); the pass keeps them quiet unless
``ctx.verbose`` is set.

With ``freezing`` (the CPU recipe) inductor treats parameters as constants and prepacks them: the compiled
module is for inference. Fine-tune the graph module (``fast._orig_mod``) instead.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
import torch.fx as fx

from fxopt.analysis.cost import Roofline
from fxopt.module_state import state_buffers
from fxopt.passes.base import Pass, PassContext, PassResult, register_pass
from fxopt.passes.lower_select import EAGER, median_ms, select_fastest

log = logging.getLogger(__name__)


def _cxx_setting() -> Any:
    from torch._inductor import config

    return config.cpp.cxx


def compiler_missing(device: str) -> str | None:
    """Why inductor cannot compile for ``device`` here (no C++ compiler for CPU), or None."""
    if device != "cpu":
        return None
    try:
        cxx = _cxx_setting()
    except Exception as exc:  # a torch whose config cannot be read (or was left broken) must not fail optimize()
        return f"inductor's C++ compiler setting cannot be read ({type(exc).__name__}: {_first_line(exc)})"
    names = [c for c in (cxx if isinstance(cxx, (tuple, list)) else (cxx,)) if c]
    if not any(shutil.which(str(c)) for c in names):
        return f"no C++ compiler found (inductor looks for {', '.join(map(str, names))})"
    return None


def device_mismatch(target: Roofline | None, device: str) -> str | None:
    """Why a model on ``device`` must not be compiled with ``target``'s recipe, or None when they agree."""
    if target is None or target.device == device:
        return None
    if target.device == "cuda" and not torch.cuda.is_available():
        return (f"target {target.name!r} runs on cuda and this machine has no CUDA device: the model stays on "
                f"{device}, uncompiled (optimize on a machine with the GPU to lower for it)")
    return (f"target {target.name!r} runs on {target.device} but the model and inputs are on {device}: move them "
            f"with .to({target.device!r}) first, or pick a {device} target")


@contextlib.contextmanager
def quiet_torch_logs(level: int = logging.ERROR) -> Iterator[None]:
    """Raise every ``torch`` logger to ``level`` inside the block; their levels are restored on exit."""
    names = ["torch", *(n for n in logging.root.manager.loggerDict if n.startswith("torch."))]
    loggers = [logging.getLogger(n) for n in names]
    levels = [(lg, lg.level) for lg in loggers]
    try:
        for lg, _ in levels:
            lg.setLevel(level)
        yield
    finally:
        for lg, old in levels:
            lg.setLevel(old)


@contextlib.contextmanager
def quiet_compilers() -> Iterator[None]:
    """Keep torch's compiler logs (below ERROR) and printed progress (autotuning tables) off the terminal.

    Logger levels and ``sys.stdout``/``sys.stderr`` are restored on exit.
    """
    with quiet_torch_logs(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def device_of(module: torch.nn.Module, inputs: tuple[Any, ...]) -> str:
    """The device type ``module`` runs on: its first parameter's, else its first tensor input's, else cpu."""
    for t in [*module.parameters(), *(x for x in inputs if isinstance(x, torch.Tensor))]:
        return t.device.type
    return "cpu"


@register_pass
@dataclass(frozen=True)
class LowerPass(Pass):
    """Compile with torch.compile; fall back to eager (with the reason recorded) when compiling fails.

    With ``alternatives`` several candidates are compiled (``mode`` first); with ``select`` every compiled
    candidate is timed beside the eager module on the example inputs and the fastest is kept, eager included:
    the result never runs slower than eager there, and its note gives every time.

    Attributes:
        backend: torch.compile backend.
        mode: torch.compile mode (``"max-autotune"``, ...), merged into the inductor options.
        freezing: constant-fold and prepack parameters (inference only).
        cuda_graphs: capture CUDA graphs (GPU) with ``mode``.
        tf32: allow TF32 matmuls (GPU; lossy against fp32, so only when the precision option allows). This sets
            ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32`` process-wide.
        dynamic: torch.compile's ``dynamic`` flag (False: specialize to the example shapes).
        warmup: run the compiled module once on the example inputs to compile now, not on first use. The
            recipe's inductor options (freezing, autotuning) only apply to what is compiled during the warm-up;
            a later recompilation (other shapes, grad mode on) uses inductor's defaults.
        alternatives: further torch.compile modes to compile as candidates (``"reduce-overhead"``,
            ``"max-autotune"``), each with its own CUDA-graph setting.
        select: time the compiled candidates and eager on the example inputs; keep the fastest.
        budget_s: compile no further candidate once this many seconds were spent compiling (None: no limit).
    """

    name: ClassVar[str] = "lower"
    backend: str = "inductor"
    mode: str | None = None
    freezing: bool = False
    cuda_graphs: bool = False
    tf32: bool = False
    dynamic: bool | None = False
    warmup: bool = True
    alternatives: tuple[str, ...] = ()
    select: bool = False
    budget_s: float | None = None

    def candidates(self) -> list[tuple[str, str | None]]:
        """``(label, mode)`` of every candidate, in compile order: ``mode`` (``"default"`` when None) first."""
        modes = [self.mode, *(m for m in dict.fromkeys(self.alternatives) if m != self.mode)]
        return [(m or "default", m) for m in modes]

    def inductor_options(self, alternative: str | None = None) -> dict[str, Any]:
        """The inductor config patches of ``mode``, or of ``alternative`` (one of ``alternatives``, compiled
        with the CUDA graphs its mode implies: ``"reduce-overhead"`` is CUDA graphs)."""
        mode = alternative if alternative is not None else self.mode
        options: dict[str, Any] = {}
        if mode is not None:
            from torch._inductor import list_mode_options

            options.update(list_mode_options(mode))
        options["freezing"] = self.freezing
        if alternative is None:
            options["triton.cudagraphs"] = self.cuda_graphs
        else:
            options.setdefault("triton.cudagraphs", False)
        return options

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        """Compile ``gm``'s candidates, keep the fastest in ``ctx.lowered``, or record why eager is kept."""
        device = device_of(gm, ctx.example_inputs)
        reason = device_mismatch(ctx.target, device)
        if reason is None and self.backend == "inductor":
            reason = compiler_missing(device)
        if reason is not None:
            return self._fallback(reason)
        if self.tf32 and device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        stateful = state_buffers(gm)
        compiled, compile_s, notes, failures = self._compile_candidates(gm, ctx, bool(stateful))
        if not compiled:
            return self._fallback(failures[0] if failures else "no candidate was compiled")
        if not (self.warmup and ctx.example_inputs):
            notes.append("not warmed up: compiles on first call, without the recipe's options")
        if stateful and self.freezing:
            notes.append(f"without freezing: the graph writes its state ({', '.join(stateful)})")
        metrics: dict[str, Any] = {"compile_s": sum(compile_s.values()),
                                   **{f"compile_s[{k}]": v for k, v in compile_s.items()}}
        winner = next(iter(compiled))
        if self.select and ctx.example_inputs:
            selection = select_fastest(compiled, gm, ctx.example_inputs, timer=ctx.timer or median_ms)
            winner = selection.winner
            metrics.update({f"ms[{k}]": v for k, v in selection.times_ms.items()})
            notes.insert(0, selection.reason())
        metrics["winner"] = winner
        if winner == EAGER:
            return PassResult(str(self), changed=False,
                              metrics={**metrics, "lowered": False, "fallback_reason": "eager ran fastest"},
                              notes=tuple(notes))
        ctx.lowered = compiled[winner]
        return PassResult(str(self), changed=False, metrics={**metrics, "lowered": True}, notes=tuple(notes))

    def _compile_candidates(self, gm: fx.GraphModule, ctx: PassContext, stateful: bool) \
            -> tuple[dict[str, torch.nn.Module], dict[str, float], list[str], list[str]]:
        """Compile every candidate while the budget lasts: the compiled modules, their compile seconds, notes
        (one per candidate), and the reasons of the failures."""
        compiled: dict[str, torch.nn.Module] = {}
        compile_s: dict[str, float] = {}
        notes: list[str] = []
        failures: list[str] = []
        several = len(self.candidates()) > 1
        for label, mode in self.candidates():
            spent = sum(compile_s.values())
            if self.budget_s is not None and compiled and spent >= self.budget_s:
                notes.append(f"{label} not compiled: the compile budget of {self.budget_s:g} s was spent "
                             f"({spent:.1f} s)")
                continue
            options = self.inductor_options(None if mode == self.mode else mode)
            if stateful and options.get("freezing"):
                options["freezing"] = False  # freezing would fold the state buffers the graph writes as constants
            start = time.perf_counter()
            try:
                compiled[label] = self._compile(gm, options, ctx)
            except Exception as exc:  # inductor fails in many ways (compiler, unsupported op); all mean "skip it"
                log.warning("torch.compile (%s) failed: %s", label, exc)
                failures.append(f"{type(exc).__name__}: {_first_line(exc)}")
                notes.append(f"{label} not compiled: {failures[-1]}")
                continue
            compile_s[label] = time.perf_counter() - start
            enabled = [k for k, v in options.items() if v is True]
            notes.append(f"compiled with {self.backend}" + (f" {label}" if several else "")
                         + (f" ({', '.join(enabled)})" if enabled else ""))
        return compiled, compile_s, notes, failures

    def _compile(self, gm: fx.GraphModule, options: dict[str, Any], ctx: PassContext) -> torch.nn.Module:
        """``torch.compile(gm)`` under ``options``, warmed up on the example inputs (compilation is lazy)."""
        options = options if self.backend == "inductor" else {}
        # The config must be patched while the warm-up call compiles. (Passing these as torch.compile(options=...)
        # does not reach inductor's freezing.)
        with _inductor_patch(options), (contextlib.nullcontext() if ctx.verbose else quiet_compilers()):
            # torch.compile of a module returns an OptimizedModule (typed as a plain callable)
            compiled = cast(torch.nn.Module, torch.compile(gm, backend=self.backend, dynamic=self.dynamic))
            if self.warmup and ctx.example_inputs:
                with torch.no_grad():
                    compiled(*ctx.example_inputs)
        return compiled

    def _fallback(self, reason: str) -> PassResult:
        return PassResult(str(self), changed=False, metrics={"lowered": False, "fallback_reason": reason},
                          notes=(f"not compiled: {reason}",))


def _inductor_patch(options: dict[str, Any]) -> Any:
    if not options:
        return contextlib.nullcontext()
    from torch._inductor import config

    return config.patch(options)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
