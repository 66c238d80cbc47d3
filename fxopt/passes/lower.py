"""Lowering: compile the optimized graph with ``torch.compile`` for the target, behind the Pass interface.

The pass leaves the graph as it is; it compiles it, runs it once on the example inputs (compilation is lazy, so
this is where a missing C++ compiler or an unsupported op shows up) and stores the compiled module in
``ctx.lowered``. If compiling fails for any reason, the pipeline keeps the eager graph module and the result
records why: ``optimize()`` never fails because inductor is unavailable.

With ``freezing`` (the CPU recipe) inductor treats parameters as constants and prepacks them: the compiled
module is for inference. Fine-tune the graph module (``fast._orig_mod``) instead.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.fx as fx

from fxopt.passes.base import Pass, PassContext, PassResult, register_pass

log = logging.getLogger(__name__)


def compiler_missing(device: str) -> str | None:
    """Why inductor cannot compile for ``device`` here (no C++ compiler for CPU), or None."""
    if device != "cpu":
        return None
    from torch._inductor import config

    cxx = config.cpp.cxx
    names = [c for c in (cxx if isinstance(cxx, (tuple, list)) else (cxx,)) if c]
    if not any(shutil.which(str(c)) for c in names):
        return f"no C++ compiler found (inductor looks for {', '.join(map(str, names))})"
    return None


def _device_of(gm: fx.GraphModule, inputs: tuple[Any, ...]) -> str:
    for t in list(gm.parameters()) + [x for x in inputs if isinstance(x, torch.Tensor)]:
        return t.device.type
    return "cpu"


@register_pass
@dataclass(frozen=True)
class LowerPass(Pass):
    """Compile with torch.compile; fall back to eager (with the reason recorded) when compiling fails.

    Attributes:
        backend: torch.compile backend.
        mode: torch.compile mode (``"max-autotune"``, ...), merged into the inductor options.
        freezing: constant-fold and prepack parameters (inference only).
        cuda_graphs: capture CUDA graphs (GPU).
        tf32: allow TF32 matmuls (GPU; lossy against fp32, so only when the precision option allows). This sets
            ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32`` process-wide.
        dynamic: torch.compile's ``dynamic`` flag (False: specialize to the example shapes).
        warmup: run the compiled module once on the example inputs to compile now, not on first use. The
            recipe's inductor options (freezing, autotuning) only apply to what is compiled during the warm-up;
            a later recompilation (other shapes, grad mode on) uses inductor's defaults.
    """

    name: ClassVar[str] = "lower"
    backend: str = "inductor"
    mode: str | None = None
    freezing: bool = False
    cuda_graphs: bool = False
    tf32: bool = False
    dynamic: bool | None = False
    warmup: bool = True

    def inductor_options(self) -> dict[str, Any]:
        """The inductor config patches this pass compiles with."""
        options: dict[str, Any] = {}
        if self.mode is not None:
            from torch._inductor import list_mode_options

            options.update(list_mode_options(self.mode))
        options["freezing"] = self.freezing
        options["triton.cudagraphs"] = self.cuda_graphs
        return options

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        """Compile ``gm`` into ``ctx.lowered``, or record why the eager graph is kept."""
        device = _device_of(gm, ctx.example_inputs)
        reason = compiler_missing(device) if self.backend == "inductor" else None
        if reason is not None:
            return self._fallback(reason)
        if self.tf32 and device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        options = self.inductor_options() if self.backend == "inductor" else {}
        start = time.perf_counter()
        try:
            # Compilation is lazy: the config must be patched while the warm-up call compiles. (Passing these
            # as torch.compile(options=...) does not reach inductor's freezing.)
            with _inductor_patch(options):
                compiled = torch.compile(gm, backend=self.backend, dynamic=self.dynamic)
                if self.warmup and ctx.example_inputs:
                    with torch.no_grad():
                        compiled(*ctx.example_inputs)
        except Exception as exc:  # inductor fails in many ways (compiler, unsupported op); all mean "stay eager"
            log.warning("torch.compile failed, keeping the eager module: %s", exc)
            return self._fallback(f"{type(exc).__name__}: {_first_line(exc)}")
        ctx.lowered = compiled
        seconds = time.perf_counter() - start
        note = f"compiled with {self.backend}" + (f" ({', '.join(k for k, v in options.items() if v is True)})"
                                                   if options else "")
        if not (self.warmup and ctx.example_inputs):
            note += "; not warmed up: compiles on first call, without the recipe's options"
        return PassResult(str(self), changed=False, metrics={"lowered": True, "compile_s": seconds},
                          notes=(note,))

    def _fallback(self, reason: str) -> PassResult:
        return PassResult(str(self), changed=False, metrics={"lowered": False, "fallback_reason": reason},
                          notes=(f"kept eager: {reason}",))


def _inductor_patch(options: dict[str, Any]) -> Any:
    if not options:
        return contextlib.nullcontext()
    from torch._inductor import config

    return config.patch(options)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
