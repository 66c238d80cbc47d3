"""fxopt's structured pruning beside Torch-Pruning: model size, speed, and zoo coverage.

Two parts:

``--latency``: at ratios 0.3 and 0.5 (fraction of units removed per group, Torch-Pruning's ``pruning_ratio``
semantics, L2 magnitude for both) on resnet50, convnext_tiny, mobilenet_v3_large, vit_b_16 and a LLaMA-shaped
config: parameters, MACs (torch's FLOP counter / 2), eager and torch.compile latency of the dense model, of
fxopt's pruned model and of Torch-Pruning's pruned model. Timings are interleaved (one call of each model per
round, rounds repeated) and the median is reported, with the load average.

``--coverage``: every zoo model through ``prune(ratio=0.5)`` (the pruned model must run, keep its output shapes
and be smaller), the zero-invariance oracle on the groups it pruned, and a save/load round trip; with ``--tp``
also Torch-Pruning's MetaPruner at 0.5 (L2, the layers producing the outputs ignored). Each model runs in its
own subprocess (memory, crashes, a time limit); results go to a JSON-lines cache that an interrupted run resumes.

Run:
    python -m benchmarks.pruning --latency [--models resnet50 ...] [--rounds 15] [--no-compile]
    python -m benchmarks.pruning --coverage [--tp] [--cache /tmp/prune_coverage.jsonl] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from fxopt.timing import measure

RATIOS = (0.3, 0.5)
LATENCY_MODELS = ("resnet50", "convnext_tiny", "mobilenet_v3_large", "vit_b_16", "llama")


# --------------------------------------------------------------------------- models


def build(name: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """A latency model in eval mode with seeded random weights, and its input."""
    torch.manual_seed(0)
    if name == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=8000, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                          num_attention_heads=8, num_key_value_heads=4, head_dim=64, use_cache=False)
        cfg._attn_implementation = "sdpa"
        return LogitsOnly(LlamaForCausalLM(cfg).eval()), (torch.randint(0, 8000, (1, 128)),)
    import torchvision

    model = torchvision.models.get_model(name, weights=None).eval()
    return model, (torch.randn(1, 3, 224, 224),)


class LogitsOnly(torch.nn.Module):
    """Returns the logits tensor of a Hugging Face causal LM (Torch-Pruning and timing want a tensor)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids).logits


def n_params(model: torch.nn.Module) -> int:
    """Parameter count."""
    return sum(p.numel() for p in model.parameters())


def macs(model: torch.nn.Module, inputs: Sequence[Any]) -> float:
    """Multiply-accumulates of one forward (torch's FLOP counter / 2).

    nn.MultiheadAttention's fast path is turned off while counting: its fused kernel is invisible to the counter,
    which would hide the q/k/v and output projections of torchvision's ViT. The counter does not count the
    attention score products on CPU for any variant.
    """
    from torch.utils.flop_counter import FlopCounterMode

    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(*inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return counter.get_total_flops() / 2


def output_layers(model: torch.nn.Module, inputs: Sequence[Any]) -> list[torch.nn.Module]:
    """Leaf modules whose output tensor is returned by the model (Torch-Pruning must not prune those)."""
    produced: dict[int, torch.nn.Module] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o: produced.__setitem__(id(o), mod) if isinstance(
        o, torch.Tensor) else None) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        out = model(*inputs)
    for h in hooks:
        h.remove()
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    leaves, _ = torch.utils._pytree.tree_flatten(out)
    found = [produced[id(t)] for t in leaves if isinstance(t, torch.Tensor) and id(t) in produced]
    last_dims = {t.shape[-1] for t in leaves if isinstance(t, torch.Tensor) and t.ndim}
    found += [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features in last_dims]
    return list({id(m): m for m in found}.values())


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise TimeoutError in the main thread after ``seconds`` (Torch-Pruning can take hours on some graphs)."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"gave up after {seconds}s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def tp_prune(model: torch.nn.Module, inputs: Sequence[Any], ratio: float) -> torch.nn.Module:
    """Torch-Pruning's MetaPruner, L2 magnitude, uniform ``ratio``, output layers ignored (on a copy)."""
    import torch_pruning as tp

    model = copy.deepcopy(model)
    example = inputs[0] if len(inputs) == 1 else tuple(inputs)
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=output_layers(model, inputs))
    pruner.step()
    return model.eval()


def tp_prune_limited(model: torch.nn.Module, inputs: Sequence[Any], ratio: float, seconds: int = 900) \
        -> torch.nn.Module:
    """``tp_prune`` with a time limit."""
    with time_limit(seconds):
        return tp_prune(model, inputs, ratio)


def fx_prune(model: torch.nn.Module, inputs: Sequence[Any], ratio: float, approximate: bool = False) -> torch.nn.Module:
    """fxopt's pruning, L2, uniform ``ratio`` (no fusion, no compile: the pruned GraphModule itself).

    ``approximate=True`` also prunes groups that are not zero-invariant (widths under LayerNorm), as Torch-Pruning
    does by default: the two then remove the same structures.
    """
    from fxopt.pruning import prune

    small, _ = prune(model, tuple(inputs), ratio=ratio, floor=0.0, approximate=approximate)
    return small


def fx_optimize(model: torch.nn.Module, inputs: Sequence[Any], ratio: float, compile: bool) -> torch.nn.Module:
    """``fxopt.optimize(target="cpu", prune=ratio)``: fusion, pruning, channels_last, and torch.compile."""
    from fxopt.api import optimize

    return optimize(model, tuple(inputs), target="cpu", prune={"ratio": ratio, "floor": 0.0}, compile=compile)


# --------------------------------------------------------------------------- timing


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, timed side by side with fxopt's one timing method
    (``fxopt.timing.measure``: interleaved rounds, medians; its warnings go to stderr)."""
    m = measure(fns, (), rounds=rounds)
    for w in m.warnings:
        print(f"warning: {w}", file=sys.stderr, flush=True)
    return {t.label: t.median_ms / 1e3 for t in m.timings}


def compiled(model: torch.nn.Module) -> torch.nn.Module:
    """torch.compile with inductor (as fxopt's CPU lowering, without freezing so every model is treated alike)."""
    return torch.compile(model, backend="inductor", dynamic=False)


def latency(models: Sequence[str], rounds: int, do_compile: bool, threads: int, tp_limit: int) \
        -> list[dict[str, Any]]:
    """Params, MACs and latency of dense, fxopt and Torch-Pruning models at each ratio."""
    torch.set_num_threads(threads)
    rows = []
    for name in models:
        model, inputs = build(name)
        variants: dict[str, torch.nn.Module] = {"dense": model}
        errors: dict[str, str] = {}
        for r in RATIOS:
            makers: dict[str, Callable[[], torch.nn.Module]] = {
                f"fxopt@{r}": partial(fx_prune, model, inputs, r),
                f"fxopt-approx@{r}": partial(fx_prune, model, inputs, r, approximate=True),
                f"tp@{r}": partial(tp_prune_limited, model, inputs, r, tp_limit)}
            for label, make in makers.items():
                try:
                    made = make()
                    with torch.no_grad():
                        made(*inputs)  # a pruned model that does not run is a failure of the tool that made it
                    variants[label] = made
                except Exception as exc:  # a tool failing on a model is a result, not a crash
                    errors[label] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
        for r in RATIOS:  # without approximate groups the two fxopt variants are the same model: time it once
            approx, exact = variants.get(f"fxopt-approx@{r}"), variants.get(f"fxopt@{r}")
            if approx is not None and exact is not None and n_params(approx) == n_params(exact):
                del variants[f"fxopt-approx@{r}"]
        eager = interleaved({k: partial(m, *inputs) for k, m in variants.items()}, rounds)
        comp: dict[str, float] = {}
        if do_compile:
            cmods = {}
            for k, m in variants.items():
                try:
                    cmods[k] = compiled(m)
                    with torch.no_grad():
                        cmods[k](*inputs)
                except Exception as exc:  # compile failures are reported per variant
                    errors[f"compile {k}"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                    cmods.pop(k, None)
            comp = interleaved({k: partial(m, *inputs) for k, m in cmods.items()}, rounds)
        for k, m in variants.items():
            rows.append({"model": name, "variant": k, "params": n_params(m), "macs": macs(m, inputs),
                         "eager_ms": eager[k] * 1e3, "compiled_ms": comp[k] * 1e3 if k in comp else None})
        for k, e in errors.items():
            rows.append({"model": name, "variant": k, "error": e})
        print(json.dumps(rows[-len(variants) - len(errors):]), flush=True)
    return rows


def optimize_resnet50(rounds: int, threads: int) -> dict[str, Any]:
    """The issue's acceptance figure: resnet50 at 0.5 through fxopt.optimize(target="cpu") vs dense eager and
    Torch-Pruning's pruned model (eager and compiled)."""
    torch.set_num_threads(threads)
    model, inputs = build("resnet50")
    tp_model = tp_prune(model, inputs, 0.5)
    fast = fx_optimize(model, inputs, 0.5, compile=True)
    fast_eager = fx_optimize(model, inputs, 0.5, compile=False)
    tp_comp = compiled(tp_model)
    dense_comp = compiled(model)
    fns = {"dense eager": lambda: model(*inputs), "dense compiled": lambda: dense_comp(*inputs),
           "tp eager": lambda: tp_model(*inputs), "tp compiled": lambda: tp_comp(*inputs),
           "fxopt optimize (compiled)": lambda: fast(*inputs), "fxopt optimize (eager)": lambda: fast_eager(*inputs)}
    times = interleaved(fns, rounds)
    return {"ms": {k: v * 1e3 for k, v in times.items()},
            "params": {"dense": n_params(model), "tp": n_params(tp_model), "fxopt": n_params(fast_eager)},
            "macs": {"dense": macs(model, inputs), "tp": macs(tp_model, inputs), "fxopt": macs(fast_eager, inputs)}}


# --------------------------------------------------------------------------- coverage


def _shapes(out: Any) -> list[tuple[int, ...]]:
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    leaves, _ = torch.utils._pytree.tree_flatten(out)
    return [tuple(t.shape) for t in leaves if isinstance(t, torch.Tensor)]


def tp_one(name: str) -> dict[str, Any]:
    """One zoo model through Torch-Pruning's MetaPruner at 0.5; never raises."""
    from fxopt.testing.zoo import get_entry

    entry = get_entry(name)
    row: dict[str, Any] = {}
    torch.manual_seed(0)
    model, inputs = entry.build(), entry.inputs()
    try:
        with torch.no_grad():
            ref_shapes = _shapes(model(*inputs))
        tp_model = tp_prune(model, inputs, 0.5)
        with torch.no_grad():
            tp_shapes = _shapes(tp_model(*inputs))
        row["tp_params_ratio"] = round(n_params(tp_model) / max(n_params(model), 1), 3)
        row["tp_ok"] = tp_shapes == ref_shapes and n_params(tp_model) < n_params(model)
        if not row["tp_ok"]:
            row["tp_error"] = "output shapes changed" if tp_shapes != ref_shapes else "nothing pruned"
    except Exception as exc:  # Torch-Pruning failing is the figure we report
        row["tp_ok"] = False
        row["tp_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return row


def save_load(module: torch.nn.Module, inputs: Sequence[Any]) -> tuple[str, torch.nn.Module]:
    """Round trip through ``fxopt.save``/``fxopt.load``: the pickled graph ("fx"), else torch.export ("pt2")."""
    import tempfile

    from fxopt.serialization import load, save

    with tempfile.TemporaryDirectory() as tmp:
        try:
            return "fx", load(save(module, Path(tmp) / "model.pt", format="fx"))
        except Exception:  # graphs unlifted from torch.export do not pickle; .pt2 is their format
            return "pt2", load(save(module, Path(tmp) / "model.pt2", example_inputs=tuple(inputs)))


def coverage_one(name: str) -> dict[str, Any]:
    """One zoo model through fxopt's prune(ratio=0.5), the oracle and save/load; never raises."""
    import fxopt
    from fxopt.pruning import prune
    from fxopt.testing.zero_invariance import check_zero_invariance
    from fxopt.testing.zoo import get_entry

    entry = get_entry(name)
    row: dict[str, Any] = {"name": name, "family": entry.family, "heavy": entry.heavy}
    torch.manual_seed(0)
    model, inputs = entry.build(), entry.inputs()
    with torch.no_grad():
        ref_shapes = _shapes(model(*inputs))
    try:
        t = time.perf_counter()
        analysis = fxopt.analyze(model, inputs)
        small, report = prune(analysis, ratio=0.5)
        row["seconds"] = round(time.perf_counter() - t, 1)
        with torch.no_grad():
            out = small(*analysis.example_inputs)
        row["params_ratio"] = round(report.param_ratio, 3)
        row["macs_ratio"] = round(report.mac_ratio, 3)
        row["pruned_groups"] = len(report.pruned)
        row["granularities"] = sorted({d.granularity for d in report.pruned})
        row["failed_groups"] = [f"{d.group}: {d.reason}" for d in report.failed][:3]
        ok = _shapes(out) == ref_shapes and report.params_after < report.params_before
        row["runs"] = ok
        by_id = {g.id: g for g in analysis.groups}
        pruned = [by_id[d.group] for d in report.pruned if by_id[d.group].exact]
        limit = 6 if entry.heavy else 12  # spread over the network; tests/zoo -m zoo_full checks every group
        pruned = pruned[:: max(1, -(-len(pruned) // limit))][:limit]
        checks = check_zero_invariance(analysis, groups=pruned, raise_on_failure=False)
        bad = [f"{c.group}: {c.error or f'{c.relative:.1e}'}" for c in checks if not c.passed or c.error]
        row["zero_invariance"] = f"{len(checks) - len(bad)}/{len(checks)}"
        row["zero_invariance_failures"] = bad[:3]
        from fxopt.equivalence import compare, tensors_of

        row["save_format"], loaded = save_load(small, analysis.example_inputs)
        with torch.no_grad():
            again = loaded(*analysis.example_inputs)
        row["save_load"] = compare(tensors_of(out), tensors_of(again)).max_abs == 0.0
        row["ok"] = bool(ok and not bad and row["save_load"])
    except Exception as exc:  # one model's failure is a table row
        row["ok"] = False
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:240] if str(exc) else ''}"
        row["trace"] = traceback.format_exc(limit=4)[-800:]
    return row


def _subprocess_row(args: list[str], timeout: int, failed: dict[str, Any], key: str) -> dict[str, Any]:
    """The JSON row printed by this script run with ``args`` in a subprocess (``failed`` plus the cause if not)."""
    try:
        # -P: without it this script's folder comes first on sys.path, and benchmarks/kernels.py would shadow the
        # `kernels` package that transformers looks for.
        proc = subprocess.run([sys.executable, "-P", __file__, *args], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {**failed, key: f"timeout after {timeout}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {**failed, key: f"crashed: {proc.stderr[-300:]}"}


def coverage(cache: Path, only: Sequence[str] | None, with_tp: bool, timeout: int, tp_timeout: int,
             skip_heavy: bool) -> list[dict]:
    """Run ``coverage_one`` for every zoo model in a subprocess, resuming from ``cache``."""
    from fxopt.testing.zoo import zoo_entries

    rows: dict[str, dict[str, Any]] = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            r = json.loads(line)
            rows[r["name"]] = r
    for entry in zoo_entries():
        if only and entry.name not in only:
            continue
        if (not only and entry.name in rows) or (skip_heavy and entry.heavy):
            continue
        row = _subprocess_row(["--coverage-one", entry.name], timeout,
                              {"name": entry.name, "ok": False}, "error")
        if with_tp:
            row.update(_subprocess_row(["--tp-one", entry.name], tp_timeout, {"tp_ok": False}, "tp_error"))
        rows[entry.name] = row
        with cache.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{entry.name}: fxopt {'ok' if row.get('ok') else 'FAIL ' + str(row.get('error', ''))[:120]}"
              + (f", tp {'ok' if row.get('tp_ok') else 'FAIL'}" if with_tp else ""), flush=True)
    return list(rows.values())


def coverage_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown summary and per-model table."""
    ok = sum(bool(r.get("ok")) for r in rows)
    tp_rows = [r for r in rows if "tp_ok" in r]
    lines = [f"fxopt prune(ratio=0.5): **{ok}/{len(rows)}** models pruned, run, pass zero-invariance on the pruned "
             "groups and save/load" + (f"; Torch-Pruning MetaPruner(0.5): **{sum(bool(r['tp_ok']) for r in tp_rows)}"
                                      f"/{len(tp_rows)}**" if tp_rows else ""), "",
             "| model | fxopt | params after | MACs after | groups pruned | granularities | zero-inv. | TP "
             "| TP params |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        status = "ok" if r.get("ok") else f"FAIL: {r.get('error') or r.get('zero_invariance_failures') or ''}"
        tp_status = "" if "tp_ok" not in r else ("ok" if r["tp_ok"] else f"FAIL {r.get('tp_error', '')[:60]}")
        lines.append(f"| {r['name']} | {status} | {r.get('params_ratio', '')} | {r.get('macs_ratio', '')} | "
                     f"{r.get('pruned_groups', '')} | {', '.join(r.get('granularities', []))} | "
                     f"{r.get('zero_invariance', '')} | {tp_status} | {r.get('tp_params_ratio', '')} |")
    return "\n".join(lines)


def latency_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the latency rows: sizes and times, each also as a fraction of the dense model."""
    dense = {r["model"]: r for r in rows if r.get("variant") == "dense"}
    lines = ["| model | variant | params | MACs | eager ms | x dense eager | compiled ms | x dense compiled |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['variant']} | failed: {r['error'][:90]} | | | | | |")
            continue
        d = dense[r["model"]]
        comp, dense_comp = r.get("compiled_ms"), d.get("compiled_ms")
        comp_cells = f"{comp:.1f} | {comp / dense_comp:.2f}" if comp and dense_comp else "- | -"
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['params'] / 1e6:.2f}M ({r['params'] / d['params']:.2f}x) | "
            f"{r['macs'] / 1e9:.2f}G ({r['macs'] / d['macs']:.2f}x) | {r['eager_ms']:.1f} | "
            f"{r['eager_ms'] / d['eager_ms']:.2f} | {comp_cells} |")
    return "\n".join(lines)


def main() -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", action="store_true")
    parser.add_argument("--resnet50-optimize", action="store_true", help="the optimize() acceptance figure")
    parser.add_argument("--coverage", action="store_true")
    parser.add_argument("--coverage-one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tp-one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tp", action="store_true", help="also run Torch-Pruning in the coverage sweep")
    parser.add_argument("--models", nargs="*", default=list(LATENCY_MODELS))
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--skip-heavy", action="store_true")
    parser.add_argument("--timeout", type=int, default=1200)
    parser.add_argument("--tp-timeout", type=int, default=600, help="seconds per model in the coverage sweep")
    parser.add_argument("--tp-limit", type=int, default=300, help="seconds Torch-Pruning may take in --latency")
    parser.add_argument("--cache", default="/tmp/fxopt_prune_coverage.jsonl")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.coverage_one:
        torch.set_num_threads(1)
        print(json.dumps(coverage_one(args.coverage_one)), flush=True)
        return
    if args.tp_one:
        torch.set_num_threads(1)
        print(json.dumps(tp_one(args.tp_one)), flush=True)
        return
    result: dict[str, Any] = {"loadavg_start": os.getloadavg(), "torch": torch.__version__}
    if args.latency:
        result["latency"] = latency(args.models, args.rounds, not args.no_compile, args.threads, args.tp_limit)
        print(latency_table(result["latency"]))
    if args.resnet50_optimize:
        result["resnet50_optimize"] = optimize_resnet50(args.rounds, args.threads)
        print(json.dumps(result["resnet50_optimize"], indent=1))
    if args.coverage:
        rows = coverage(Path(args.cache), args.only, args.tp, args.timeout, args.tp_timeout, args.skip_heavy)
        result["coverage"] = rows
        print(coverage_table(rows))
    result["loadavg_end"] = os.getloadavg()
    print(json.dumps({"loadavg_start": result["loadavg_start"], "loadavg_end": result["loadavg_end"]}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
