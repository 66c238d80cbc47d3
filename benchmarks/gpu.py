"""The GPU benchmark: torch.compile's recipes, fxopt lossless, pruning beside Torch-Pruning, and the cost model.

Four parts, written to ``--out`` as ``gpu.json`` and ``gpu.md``:

1. **Variants.** resnet50, mobilenet_v3_large, vit_b_16, a GPT-2-small config (12 layers, 768 wide, sequence
   128) and a LLaMA-1B-shaped GQA config (LLaMA 3.2 1B's layer: hidden 2048, 32 heads over 8 KV heads, MLP
   8192; 4 of its 16 layers and a 32000 vocabulary to fit the time budget), at batch 1 and 64, in bf16 and fp32:
   eager, ``torch.compile`` default, ``torch.compile(mode="reduce-overhead")`` and ``fxopt.optimize`` lossless,
   each with its time per call (``fxopt.timing.measure``: interleaved rounds, medians), compile time, and output
   error against the fp32 eager output (max |y - y_ref| / max |y_ref|).
2. **Pruning.** resnet50 at ratio 0.5 by fxopt and by Torch-Pruning (L2 magnitude both), batch 64, bf16,
   compiled with torch.compile's default: time relative to the dense compiled model.
3. **Cost model.** ``fxopt.cost(model, x, target)`` against measured eager fp32 time of 10 torchvision models at
   batch 32 and 1: Spearman rank correlation (issue 14 asks for at least 0.9).
4. The target used (the datasheet one matching the device's name, else ``calibrate_gpu()``) and the device.

The cost model runs first, then pruning, then the variants (bf16 before fp32), under one time budget
(``--budget-s``, default 400 s, so that the run with its last configuration fits 8 minutes on one H200); a
configuration that would start after the budget is recorded as skipped.

``--smoke`` runs the same code on the CPU with tiny shapes (a small convnet, a 1-layer GPT-2, three small
torchvision models at 32x32 for the rank correlation, batch 2, fp32) in about a minute; tests run it.

Run:
    python -m benchmarks.gpu --out /tmp/gpu_bench            # on the GPU machine
    python -m benchmarks.gpu --smoke --out /tmp/gpu_smoke    # anywhere
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from benchmarks.lossless import spearman
from benchmarks.pruning import LogitsOnly, fx_prune, tp_prune
from fxopt.api import cost, optimize, report
from fxopt.targets import Target, calibrate_gpu, get_target
from fxopt.timing import measure

log = logging.getLogger("benchmarks.gpu")

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
RANK_MODELS = ("resnet18", "resnet50", "wide_resnet50_2", "regnet_y_1_6gf", "mobilenet_v3_large",
               "efficientnet_b0", "convnext_tiny", "densenet121", "swin_t", "vit_b_16")
"""The 10 torchvision models of the cost model's rank correlation (the four issue 14 measured among them)."""


@dataclass(frozen=True)
class Plan:
    """What one run covers.

    Attributes:
        device: where models run.
        models: the variant models, by name.
        batches: the batch sizes of the variants.
        dtypes: the dtypes of the variants.
        rank_models: torchvision models of the cost model's rank correlation.
        rank_batches: their batch sizes.
        image: image side for vision models.
        seq: sequence length for language models.
        prune_model: the model pruned at 0.5 by both tools.
        prune_batch: the batch it is timed at.
        prune_dtype: the dtype it is timed in.
        rounds: timing rounds.
        budget_s: seconds after which no new configuration starts.
    """

    device: str
    models: tuple[str, ...]
    batches: tuple[int, ...]
    dtypes: tuple[str, ...]
    rank_models: tuple[str, ...]
    rank_batches: tuple[int, ...]
    image: int
    seq: int
    prune_model: str
    prune_batch: int
    prune_dtype: str
    rounds: int
    budget_s: float


FULL = Plan("cuda", ("resnet50", "mobilenet_v3_large", "vit_b_16", "gpt2_small", "llama_1b_shape"), (1, 64),
            ("bf16", "fp32"), RANK_MODELS, (32, 1), 224, 128, "resnet50", 64, "bf16", 10, 400.0)
SMOKE = Plan("cpu", ("tiny_convnet", "gpt2_tiny"), (2,), ("fp32",), ("resnet18", "mobilenet_v3_small",
             "squeezenet1_0"), (1, 2), 32, 16, "tiny_convnet", 2, "fp32", 3, 600.0)


# --------------------------------------------------------------------------- models
class TinyConvNet(nn.Module):
    """conv-BN-ReLU twice, pooled, a linear head: the smoke run's stand-in for the vision models."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _causal_lm(name: str) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if name.startswith("gpt2"):
        tiny = name == "gpt2_tiny"
        cfg: Any = GPT2Config(vocab_size=128 if tiny else 50257, n_positions=64 if tiny else 1024,
                              n_embd=32 if tiny else 768, n_layer=1 if tiny else 12, n_head=2 if tiny else 12,
                              use_cache=False)
        cfg._attn_implementation = "sdpa"
        return LogitsOnly(GPT2LMHeadModel(cfg))
    cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=4,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=64, use_cache=False)
    cfg._attn_implementation = "sdpa"
    return LogitsOnly(LlamaForCausalLM(cfg))


def build(name: str, batch: int, plan: Plan) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Model ``name`` (eval mode, seeded random weights, fp32, on ``plan.device``) and its input at ``batch``."""
    torch.manual_seed(0)
    if name == "tiny_convnet":
        model: nn.Module = TinyConvNet()
    elif name in ("gpt2_small", "gpt2_tiny", "llama_1b_shape"):
        model = _causal_lm(name)
    else:
        import torchvision

        model = torchvision.models.get_model(name, weights=None)
    model = model.eval().to(plan.device)
    return model, example_inputs(model, batch, plan)


def example_inputs(model: nn.Module, batch: int, plan: Plan) -> tuple[torch.Tensor, ...]:
    """Token ids (``plan.seq`` long) for the language models, else ``plan.image``-sided images, at ``batch``."""
    if isinstance(model, LogitsOnly):
        return (torch.randint(0, model.model.config.vocab_size, (batch, plan.seq), device=plan.device),)
    return (torch.randn(batch, 3, plan.image, plan.image, device=plan.device),)


def _cast(model: nn.Module, inputs: tuple[torch.Tensor, ...], dtype: str) -> tuple[nn.Module,
                                                                                   tuple[torch.Tensor, ...]]:
    """A copy of ``model`` in ``dtype``, and the floating inputs cast to it (token ids stay integers)."""
    d = DTYPES[dtype]
    return (copy.deepcopy(model).to(d),
            tuple(x.to(d) if x.is_floating_point() else x for x in inputs))


# --------------------------------------------------------------------------- measuring
def relative_error(out: Any, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|, in fp32."""
    o, r = out.float(), ref.float()
    return float((o - r).abs().max() / r.abs().max().clamp_min(1e-12))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _compiled(model: nn.Module, inputs: tuple[torch.Tensor, ...], mode: str | None,
              device: str) -> tuple[Callable[..., Any], float]:
    """``torch.compile(model, mode=mode)`` warmed up (it compiles on the first calls), and the seconds taken."""
    start = time.perf_counter()
    fn = torch.compile(model, mode=mode, dynamic=False)
    with torch.no_grad():
        for _ in range(2):  # reduce-overhead records its CUDA graph on a later call than the first
            fn(*inputs)
    _sync(device)
    return fn, time.perf_counter() - start


def _fxopt(model: nn.Module, inputs: tuple[torch.Tensor, ...], target: Target,
           device: str) -> tuple[Callable[..., Any], float, str]:
    """``fxopt.optimize`` lossless for ``target``, the seconds it took, and its lowering note."""
    start = time.perf_counter()
    fast = optimize(model, inputs, target=target)
    _sync(device)
    return fast, time.perf_counter() - start, report(fast).lowering_note or ""


@dataclass
class Clock:
    """The run's time budget."""

    budget_s: float
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        """Seconds left."""
        return self.budget_s - (time.perf_counter() - self.start)


def variants_row(name: str, batch: int, dtype: str, plan: Plan, target: Target) -> dict[str, Any]:
    """Time, compile time and output error of eager, compile default, reduce-overhead and fxopt lossless."""
    model32, inputs32 = build(name, batch, plan)
    with torch.no_grad():
        ref = model32(*inputs32)
    model, inputs = _cast(model32, inputs32, dtype)
    fns: dict[str, Callable[..., Any]] = {"eager": model}
    compile_s: dict[str, float] = {"eager": 0.0}
    errors: dict[str, str] = {}
    makers: dict[str, Callable[[], tuple[Callable[..., Any], float]]] = {
        "compile": lambda: _compiled(model, inputs, None, plan.device),
        "reduce-overhead": lambda: _compiled(model, inputs, "reduce-overhead", plan.device),
    }
    note = ""
    for label, make in makers.items():
        try:
            fns[label], compile_s[label] = make()
        except Exception as exc:  # a compiler failing on a model is a result, not a crash
            errors[label] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    try:
        fns["fxopt"], compile_s["fxopt"], note = _fxopt(model, inputs, target, plan.device)
    except Exception as exc:  # as above
        errors["fxopt"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    with torch.no_grad():
        out_error = {k: relative_error(fn(*inputs), ref) for k, fn in fns.items()}
    timed = measure(fns, inputs, rounds=plan.rounds)
    ms = {t.label: t.median_ms for t in timed.timings}
    best_compile = min((ms[k] for k in ("compile", "reduce-overhead") if k in ms), default=float("nan"))
    return {"model": name, "batch": batch, "dtype": dtype, "ms": ms, "compile_s": compile_s,
            "error": out_error, "fxopt_vs_best_compile": ms.get("fxopt", float("nan")) / best_compile,
            "fxopt_vs_eager": ms.get("fxopt", float("nan")) / ms["eager"], "fxopt_lowering": note,
            "failures": errors, "timing_warnings": list(timed.warnings)}


def prune_row(plan: Plan) -> dict[str, Any]:
    """Dense, fxopt-pruned and Torch-Pruning-pruned (ratio 0.5, L2) models, each compiled, timed side by side."""
    model32, inputs32 = build(plan.prune_model, plan.prune_batch, plan)
    small = {"fxopt@0.5": fx_prune(model32, inputs32, 0.5), "tp@0.5": tp_prune(model32, inputs32, 0.5)}
    fns: dict[str, Callable[..., Any]] = {}
    params: dict[str, int] = {}
    inputs = inputs32
    for label, m in {"dense": model32, **small}.items():
        m, inputs = _cast(m, inputs32, plan.prune_dtype)
        params[label] = sum(p.numel() for p in m.parameters())
        fns[label], _ = _compiled(m, inputs, None, plan.device)
    timed = measure(fns, inputs, rounds=plan.rounds)
    return {"model": plan.prune_model, "batch": plan.prune_batch, "dtype": plan.prune_dtype, "params": params,
            "ms": {t.label: t.median_ms for t in timed.timings},
            "vs_dense": {k: timed.ratio("dense", k) for k in small}, "timing_warnings": list(timed.warnings)}


def rank_rows(plan: Plan, target: Target, clock: Clock) -> list[dict[str, Any]]:
    """Predicted (``fxopt.cost``) and measured eager fp32 time of each rank model at each rank batch."""
    rows = []
    for name in plan.rank_models:
        if clock.left() <= 0:
            rows.append({"model": name, "skipped": "time budget spent"})
            continue
        model, inputs = build(name, 1, plan)
        table = cost(copy.deepcopy(model).cpu(), tuple(x.cpu() for x in inputs), target=target)
        for batch in plan.rank_batches:
            x = example_inputs(model, batch, plan)
            ms = measure({"eager": model}, x, rounds=plan.rounds).timings[0].median_ms
            rows.append({"model": name, "batch": batch, "predicted_ms": table.time(B=batch) * 1e3,
                         "eager_ms": ms})
    return rows


def correlations(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Spearman rank correlation of predicted and measured time, per batch."""
    out = {}
    for batch in sorted({r["batch"] for r in rows if "batch" in r}):
        sub = [r for r in rows if r.get("batch") == batch]
        out[f"batch {batch}"] = spearman([r["predicted_ms"] for r in sub], [r["eager_ms"] for r in sub])
    return out


def pick_target(plan: Plan) -> Target:
    """The datasheet target matching the GPU's name (h200, h100, a100), else one calibrated on it; cpu on CPU."""
    if plan.device != "cuda":
        return get_target("cpu")
    name = torch.cuda.get_device_name().lower()
    for known in ("h200", "h100", "a100"):
        if known in name:
            return get_target(known)
    return calibrate_gpu()


# --------------------------------------------------------------------------- report
def _cell(values: dict[str, float], key: str, fmt: str = ".3f") -> str:
    return format(values[key], fmt) if key in values else "failed"


def to_markdown(result: dict[str, Any]) -> str:
    """The result as markdown tables."""
    lines = [f"Device: {result['device']}; target `{result['target']}`; torch {result['torch']}; "
             f"total {result['seconds']:.0f} s.", "",
             "| model | batch | dtype | eager ms | compile ms | reduce-overhead ms | fxopt ms | fxopt / best compile "
             "| compile s (default / r-o / fxopt) | fxopt error | fxopt kept |",
             "|---|---:|---|---:|---:|---:|---:|---:|---|---:|---|"]
    for r in result["variants"]:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['batch']} | {r['dtype']} | skipped: {r['skipped']} |||||||")
            continue
        ms, cs, f = r["ms"], r["compile_s"], _cell
        kept = r["fxopt_lowering"].split(":")[0].removeprefix("kept ") if r["fxopt_lowering"] else ""
        lines.append(f"| {r['model']} | {r['batch']} | {r['dtype']} | {f(ms, 'eager')} | {f(ms, 'compile')} | "
                     f"{f(ms, 'reduce-overhead')} | {f(ms, 'fxopt')} | {r['fxopt_vs_best_compile']:.3f} | "
                     f"{f(cs, 'compile', '.1f')} / {f(cs, 'reduce-overhead', '.1f')} / {f(cs, 'fxopt', '.1f')} | "
                     f"{r['error'].get('fxopt', float('nan')):.1e} | {kept} |")
    p = result.get("prune")
    if p and "ms" in p:
        lines += ["", f"Pruning {p['model']} at 0.5, batch {p['batch']}, {p['dtype']}, torch.compile default: "
                  + ", ".join(f"{k} {v:.3f}x dense" for k, v in p["vs_dense"].items())
                  + f" (dense {p['ms']['dense']:.3f} ms)."]
    lines += ["", "Cost model against eager fp32 time: Spearman "
              + ", ".join(f"{k}: **{v:.3f}**" for k, v in result["spearman"].items()) + ".", "",
              "| model | batch | predicted ms | eager ms |", "|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['predicted_ms']:.2f} | {r['eager_ms']:.2f} |"
              for r in result["rank"] if "batch" in r]
    return "\n".join(lines) + "\n"


def run(plan: Plan) -> dict[str, Any]:
    """Every part of the benchmark under ``plan``; the result as plain data."""
    clock = Clock(plan.budget_s)
    target = pick_target(plan)
    device = torch.cuda.get_device_name() if plan.device == "cuda" else "cpu"
    rank = rank_rows(plan, target, clock)
    prune: dict[str, Any] = {"skipped": "time budget spent"}
    if clock.left() > 0:
        try:
            prune = prune_row(plan)
        except Exception as exc:  # a pruning tool failing is a result
            prune = {"failed": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"}
    rows = []
    for dtype in plan.dtypes:  # bf16 first: issue 14's figures are in bf16
        for batch in plan.batches:
            for name in plan.models:
                if clock.left() <= 0:
                    rows.append({"model": name, "batch": batch, "dtype": dtype, "skipped": "time budget spent"})
                    continue
                rows.append(variants_row(name, batch, dtype, plan, target))
                log.info("%s b%d %s: %s", name, batch, dtype, rows[-1]["ms"])
    return {"device": device, "target": target.name, "torch": torch.__version__, "plan": asdict(plan),
            "variants": rows, "prune": prune, "rank": rank, "spearman": correlations(rank),
            "seconds": time.perf_counter() - clock.start}


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--out DIR`` [``--smoke``] [``--budget-s S``] [``--models a,b``]."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for gpu.json and gpu.md")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (the test's run)")
    parser.add_argument("--budget-s", type=float, help="seconds after which no configuration starts")
    parser.add_argument("--models", help="comma-separated subset of the variant models")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    if plan.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: run on the GPU machine, or pass --smoke")
    if args.budget_s is not None or args.models:
        plan = Plan(**{**asdict(plan), **({"budget_s": args.budget_s} if args.budget_s is not None else {}),
                       **({"models": tuple(args.models.split(","))} if args.models else {})})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optimize() warns per model; the results say what happened
        result = run(plan)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / "gpu.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
