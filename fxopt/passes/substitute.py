"""The ``substitute`` pass: dense linears and 1x1 convolutions replaced by structured layers fitted to their weights.

``substitute(structure='monarch',max_error=0.05)`` considers every ``nn.Linear`` and every 1x1 ``Conv1d/2d/3d``
(stride 1, no padding, one group) module call, fits the structure (``fxopt.structured``) to its weight at the
smallest rank within the error budget, and replaces the module only where the structured layer is faster (the
speed gate: the target's roofline over the ATen ops each layer runs, or timings on this machine with
``measure=True``). ``structure='auto'`` tries every family at every block count and keeps, per layer, the fastest
within the budget. Calibration data in the context (``optimize(calibration=...)``) make the fits activation-aware
and the budget bound each layer's output error on them.

A whole-model budget, ``model_error``, bounds the model's relative output error on the calibration batches (or the
example inputs): while it is exceeded, the substitution with the largest layer error is dropped, one forward pass
per step. Every layer considered and left dense gets a ``Skip`` naming why (too
small, over budget, no saving, not faster, unsupported). Modules are swapped with ``GraphEditor.set_submodule``:
the call node stays and now calls the structured layer.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.fx as fx
import torch.nn as nn

from fxopt.passes.base import Pass, PassContext, PassResult, register_pass
from fxopt.passes.editor import GraphEditor
from fxopt.passes.match import exclusive, view_of
from fxopt.pruning.calibration import Calibration, eval_mode
from fxopt.structured.calibration import SCALINGS, InputStats, Scaling
from fxopt.structured.choose import (
    FAMILIES,
    Choice,
    Options,
    Refusal,
    Site,
    budget_error,
    choose,
)
from fxopt.structured.conv import conv1x1_weight
from fxopt.structured.errors import StructureError

STRUCTURES = (*FAMILIES, "auto")
RULE = "substitute"


@register_pass
@dataclass(frozen=True)
class SubstitutePass(Pass):
    """Replace dense linears and 1x1 convolutions by structured layers where that is accurate enough and faster.

    Attributes:
        structure: ``"lowrank"``, ``"blockdiag"``, ``"monarch"``, ``"btt"``, ``"blast"`` or ``"auto"`` (the fastest
            of all within the budget, per layer).
        max_error: per-layer budget: the relative output error on the calibration data when the context has any,
            else the relative weight error ``||W - W_fit|| / ||W||``. ``None``: no budget (a size cap sets the rank).
        model_error: whole-model budget: the relative error of the model's outputs on the calibration batches (or
            the example inputs); ``None``: not enforced (the error is still reported).
        params: keep at most this fraction of each replaced layer's weight parameters (a cap on the rank; the bias
            is kept as it is). For every structure here the multiply-adds equal the weight parameters.
        flops: cost at most this fraction of each replaced layer's FLOPs (bias additions included).
        layers: module names or fnmatch patterns to consider (``("*.fc1", "head")``); empty: every layer.
        min_features: layers with fewer input or output features are left dense (too small to gain).
        blocks: block counts tried for block-diagonal, Monarch and BLAST.
        scaling: activation scaling of fits with calibration data, ``"whiten"`` or ``"rms"``.
        speed_gate: replace a layer only where the structured layer is faster (predicted on the target, or
            measured with ``measure``).
        measure: time each layer's candidates against the dense layer on this machine (``fxopt.timing.measure``)
            instead of predicting their time.

    Example:
        >>> fast = fxopt.optimize(model, x, substitute={"structure": "monarch", "max_error": 0.05})
        >>> run = PassManager("substitute(structure='auto',params=0.5,max_error=None)").run(fxopt.trace(model, x), x)
    """

    name: ClassVar[str] = "substitute"
    lossless: ClassVar[bool] = False

    structure: str = "auto"
    max_error: float | None = 0.1
    model_error: float | None = None
    params: float | None = None
    flops: float | None = None
    layers: tuple[str, ...] = ()
    min_features: int = 64
    blocks: tuple[int, ...] = (2, 4, 8)
    scaling: Scaling = "whiten"
    speed_gate: bool = True
    measure: bool = False

    def __post_init__(self) -> None:
        for name in ("layers", "blocks"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, (str, int)) else tuple(value))
        if self.structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {', '.join(STRUCTURES)}, not {self.structure!r}")
        for name in ("max_error", "model_error"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 (or None), not {value!r}")
        for name in ("params", "flops"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise ValueError(f"{name} must be a fraction in (0, 1) (or None), not {value!r}")
        if self.max_error is None and self.params is None and self.flops is None:
            raise ValueError("give an error budget (max_error) or a size cap (params, flops): without either, "
                             "nothing sets the rank")
        if self.min_features < 1 or not all(isinstance(b, int) and b > 1 for b in self.blocks):
            raise ValueError(f"min_features must be >= 1 and blocks integers > 1, not {self.min_features!r} and "
                             f"{self.blocks!r}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {', '.join(SCALINGS)}, not {self.scaling!r}")

    def options_for_choosing(self) -> Options:
        """The chooser's options."""
        return Options(self.structure, self.max_error, self.params, self.flops, self.blocks,
                       self.scaling, self.speed_gate, self.measure)

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        """Choose per layer, enforce the model budget, swap the modules in; metrics list every layer replaced."""
        editor = GraphEditor(gm, ctx, str(self))
        sites = dict(self._sites(gm, editor))
        calibration = Calibration.of(ctx.calibration, ctx.loss_fn)
        stats = input_stats(gm, calibration, sites) if calibration is not None and sites else {}
        options = self.options_for_choosing()
        chosen: dict[str, Choice] = {}
        for path, (node, site) in sites.items():
            found = choose(site, options, ctx.target, stats.get(path))
            if isinstance(found, Refusal):
                editor.skip(RULE, node, str(found))
            else:
                chosen[path] = found
        batches = _eval_batches(gm, calibration, ctx.example_inputs)
        model_error = self._within_model_budget(gm, chosen, sites, batches, editor) if batches else None
        for path, choice in chosen.items():
            editor.set_submodule(path, choice.layer)
        if ctx.target is None and not self.measure and self.speed_gate:
            editor.note("no target: the speed gate compared FLOPs")
        return editor.finish(metrics=self._metrics(chosen, sites, model_error, ctx))

    def _sites(self, gm: fx.GraphModule, editor: GraphEditor) -> Iterator[tuple[str, tuple[fx.Node, Site]]]:
        """The layers considered, by module path; the others of their kind get a Skip here."""
        calls: dict[str, int] = {}
        for node in gm.graph.nodes:
            if node.op == "call_module":
                calls[str(node.target)] = calls.get(str(node.target), 0) + 1
        for node in gm.graph.nodes:
            view = view_of(node, gm)
            if view is None or view.kind not in ("linear", "conv"):
                continue
            path = str(node.target) if node.op == "call_module" else node.name
            if self.layers and not any(fnmatch.fnmatchcase(path, p) for p in self.layers):
                continue
            reason, site = _site(view.kind, node, gm, calls.get(path, 0))
            reason = reason or exclusive(editor, view, ("weight", "bias"))
            if site is not None and reason is None and min(site.weight.shape) < self.min_features:
                m, n = site.weight.shape
                reason = f"too small: {m}x{n} (min_features={self.min_features})"
            if reason is not None:
                editor.skip(RULE, node, reason)
            elif site is not None:
                yield path, (node, site)

    def _within_model_budget(self, gm: fx.GraphModule, chosen: dict[str, Choice],
                             sites: Mapping[str, tuple[fx.Node, Site]], batches: Sequence[Sequence[Any]],
                             editor: GraphEditor) -> float:
        """Drop the least accurate choices until the model's output error is within ``model_error``; the error."""
        reference = [_outputs(gm, {}, args) for args in batches]
        error = _model_error(gm, chosen, batches, reference)
        while self.model_error is not None and error > self.model_error and chosen:
            worst = max(chosen, key=lambda p: budget_error(chosen[p].report))
            del chosen[worst]
            editor.skip(RULE, sites[worst][0], f"over model budget: the model's output error is {error:.3g} > "
                                               f"model_error={self.model_error:g} with this layer")
            error = _model_error(gm, chosen, batches, reference)
        return error

    def _metrics(self, chosen: Mapping[str, Choice], sites: Mapping[str, tuple[fx.Node, Site]],
                 model_error: float | None, ctx: PassContext) -> dict[str, Any]:
        timed = "measured on this machine" if self.measure else (
            f"predicted on {ctx.target.name}" if ctx.target is not None else "not timed (no target)")
        rows = tuple(layer_row(path, choice, sites[path][1], timed) for path, choice in chosen.items())
        before = sum(s.weight.numel() + (s.bias.numel() if s.bias is not None else 0) for _, s in sites.values())
        after = before - sum(r["params"][0] - r["params"][1] for r in rows)
        metrics: dict[str, Any] = {"layers_substituted": len(rows), "layers_considered": len(sites),
                                   "substitute_params": (before, after)}
        if model_error is not None:
            metrics["model_error"] = model_error
        if rows:
            metrics["substituted"] = rows
        return metrics


def layer_row(path: str, choice: Choice, site: Site, timed: str) -> dict[str, Any]:
    """One line of the per-layer table: structure, parameters and FLOPs before and after, error, time."""
    report, tokens = choice.report, site.tokens
    if choice.dense_ms is not None and choice.candidate.measured_ms is not None:
        time_us = (choice.dense_ms * 1e3, choice.candidate.measured_ms * 1e3)
    elif not math.isnan(choice.dense_s):
        time_us = (choice.dense_s * 1e6, choice.candidate.predicted_s * 1e6)
    else:
        time_us = None
    return {"layer": path, "structure": choice.candidate.label,
            "params": (report.params_before, report.params_after),
            "flops": (report.flops_before * tokens, report.flops_after * tokens),
            "error": budget_error(report), "time_us": time_us, "timed": timed}


def _site(kind: str, node: fx.Node, gm: fx.GraphModule, calls: int) -> tuple[str | None, Site | None]:
    """The Site of a linear or 1x1 convolution module call, or the reason it cannot be one."""
    if node.op != "call_module":
        return f"unsupported: functional {kind} (only nn.Linear and 1x1 nn.Conv modules are replaced)", None
    if calls > 1:
        return f"unsupported: the module is called at {calls} places", None
    module = gm.get_submodule(str(node.target))
    val = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
    if not isinstance(val, torch.Tensor):
        return "unsupported: the input has no recorded shape", None
    weight: torch.Tensor
    bias: torch.Tensor | None
    if kind == "linear":
        if type(module) is not nn.Linear:
            return f"unsupported: {type(module).__name__} is not an nn.Linear", None
        weight, bias, channels = module.weight, module.bias, False
    else:
        if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) or val.ndim != module.weight.ndim:
            return "unsupported: only batched 1x1 convolutions are linears over channels", None
        try:
            weight, bias = conv1x1_weight(module)
        except StructureError:
            return "unsupported: only 1x1 convolutions with stride 1, no padding and one group are linears over " \
                   "channels", None
        channels = True
    if not weight.is_floating_point():
        return f"unsupported: {weight.dtype} weight", None
    return None, Site(module, weight.detach(), None if bias is None else bias.detach(), tuple(val.shape), channels)


class _InputRecorder(fx.Interpreter):
    """Runs the graph and accumulates the input statistics of the watched module calls."""

    def __init__(self, gm: fx.GraphModule, watched: Mapping[str, Site], stats: dict[str, InputStats]) -> None:
        super().__init__(gm)
        self.watched, self.stats = watched, stats

    def call_module(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        site = self.watched.get(str(target))
        if site is not None and isinstance(args[0], torch.Tensor):
            rows = args[0].movedim(1, -1) if site.channels else args[0]
            batch = InputStats.of(rows)
            old = self.stats.get(str(target))
            self.stats[str(target)] = batch if old is None else old.merge(batch)
        return super().call_module(target, args, kwargs)


def input_stats(gm: fx.GraphModule, calibration: Calibration,
                sites: Mapping[str, tuple[fx.Node, Site]]) -> dict[str, InputStats]:
    """Each site's input second moment over the calibration batches (the graph run in eval mode)."""
    stats: dict[str, InputStats] = {}
    recorder = _InputRecorder(gm, {p: s for p, (_, s) in sites.items()}, stats)
    with torch.no_grad(), eval_mode(gm):
        for batch in calibration.batches:
            recorder.run(*_graph_args(gm, calibration.inputs(batch)))
    return stats


class _Swapped(fx.Interpreter):
    """Runs the graph with some module calls answered by other modules (the graph itself is not changed)."""

    def __init__(self, gm: fx.GraphModule, swaps: Mapping[str, nn.Module]) -> None:
        super().__init__(gm)
        self.swaps = swaps

    def call_module(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        module = self.swaps.get(str(target))
        return module(*args, **kwargs) if module is not None else super().call_module(target, args, kwargs)


def _outputs(gm: fx.GraphModule, swaps: Mapping[str, nn.Module], args: Sequence[Any]) -> list[torch.Tensor]:
    with torch.no_grad(), eval_mode(gm):
        out = _Swapped(gm, swaps).run(*args)
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _model_error(gm: fx.GraphModule, chosen: Mapping[str, Choice], batches: Sequence[Sequence[Any]],
                 reference: Sequence[list[torch.Tensor]]) -> float:
    """Relative output error ``||y_sub - y|| / ||y||`` over every batch and floating output."""
    swaps = {p: c.layer for p, c in chosen.items()}
    num = den = 0.0
    for args, ref in zip(batches, reference, strict=True):
        for r, o in zip(ref, _outputs(gm, swaps, args), strict=True):
            num += float((o.double() - r.double()).square().sum())
            den += float(r.double().square().sum())
    return math.sqrt(num / den) if den > 0 else math.sqrt(num)


def _graph_args(gm: fx.GraphModule, inputs: Any) -> list[Any]:
    """A batch of model inputs as the graph's placeholders take them (flattened for export graphs)."""
    as_tuple = inputs if isinstance(inputs, tuple) else tuple(inputs) if isinstance(inputs, list) else (inputs,)
    flat, _ = torch.utils._pytree.tree_flatten(as_tuple)
    n_ph = sum(1 for n in gm.graph.nodes if n.op == "placeholder")
    return list(flat) if len(flat) == n_ph else list(as_tuple)


def _eval_batches(gm: fx.GraphModule, calibration: Calibration | None,
                  example_inputs: Sequence[Any]) -> list[list[Any]]:
    """Where the model's output error is measured: the calibration batches, else real example inputs."""
    if calibration is not None:
        return [_graph_args(gm, calibration.inputs(b)) for b in calibration.batches]
    real = example_inputs and all(not isinstance(x, torch.Tensor) or x.device.type != "meta" for x in example_inputs)
    return [_graph_args(gm, tuple(example_inputs))] if real else []
