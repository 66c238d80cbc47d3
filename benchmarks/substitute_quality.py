"""Accuracy against size for structured substitution, on models trained here on the CPU.

Trains three small models from scratch: an MLP and a small ViT on scikit-learn's bundled digits (8x8 images, 10
classes, no download), and a character-level transformer language model on generated sums (``"417+38=455"``).
Then every linear layer with at least 64 input and output features (not the classifier or LM head) is replaced by
each structure (low-rank, block-diagonal, Monarch, BTT, BLAST) with the largest rank that keeps at most 50% or 25%
of the layer's weights (``choose`` with ``params=`` and no error budget or speed gate), fitted plainly and
activation-aware (whitened on calibration inputs from the training set), and evaluated without and with a short
fine-tune of the whole model. A plain truncated SVD written here (two ``nn.Linear``), independent of fxopt, is the
baseline.

Reported per row: the metric (test accuracy in percent, or test cross-entropy in nats per character), the share of
the replaced layers' parameters and FLOPs per token kept, the whole model's parameter share, and the mean weight
and output error of the fits.

Run: python -m benchmarks.substitute_quality [--quick] [--models mlp vit char_lm] [--out docs/substitute_quality.json]

Needs scikit-learn (in the ``dev`` extra). ``--quick`` (a test runs it) trains for seconds, not minutes.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fxopt.structured import InputStats
from fxopt.structured.choose import Choice, Options, Site, choose

STRUCTURES = ("lowrank", "blockdiag", "monarch", "btt", "blast")
BUDGETS = (0.5, 0.25)
MODELS = ("mlp", "vit", "char_lm")
MIN_FEATURES = 64
VOCAB = "0123456789+=\n"
BATCH = 64


@dataclass(frozen=True)
class Settings:
    """How long everything trains.

    Attributes:
        digits_epochs: training epochs of the digits models.
        lm_steps: training steps of the language model.
        finetune_steps: steps of each fine-tune after substitution.
        sums: generated sums for the language model (train and test together).
        calibration: calibration rows (images, or sequences) for activation-aware fits.
    """

    digits_epochs: int
    lm_steps: int
    finetune_steps: int
    sums: int
    calibration: int


FULL = Settings(digits_epochs=60, lm_steps=2000, finetune_steps=100, sums=20000, calibration=512)
QUICK = Settings(digits_epochs=12, lm_steps=40, finetune_steps=10, sums=2000, calibration=128)


class MLP(nn.Module):
    """64-256-256-10 perceptron with ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(64, 256), nn.Linear(256, 256), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x.flatten(1))))))


class Block(nn.Module):
    """Pre-norm transformer block: multi-head attention (optionally causal) and a GELU MLP."""

    def __init__(self, dim: int, heads: int, hidden: int, causal: bool) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """A ViT for 8x8 digits: 2x2 patches (16 tokens), 2 blocks of width 64, mean pooling."""

    def __init__(self, dim: int = 64, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.pos = nn.Parameter(torch.randn(16, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, 4, 4 * dim, causal=False) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = x.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)
        return self.head(self.norm(self.blocks(self.embed(patches) + self.pos)).mean(1))


class CharLM(nn.Module):
    """A causal character transformer: 2 blocks of width 128, learned positions, untied head."""

    def __init__(self, context: int, dim: int = 128, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(len(VOCAB), dim)
        self.pos = nn.Parameter(torch.randn(context, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, 4, 4 * dim, causal=True) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, len(VOCAB))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(x) + self.pos[: x.shape[1]])))


@dataclass(frozen=True)
class Task:
    """A trained model with its data.

    Attributes:
        name: the model's name in the results.
        model: the trained dense model (eval mode).
        train: (inputs, targets) it was trained on; calibration and fine-tuning draw from it.
        test: held-out (inputs, targets).
        metric: ``"accuracy"`` (percent, higher is better) or ``"loss"`` (nats per token, lower is better).
        lr: its training learning rate (fine-tuning uses a third of it).
    """

    name: str
    model: nn.Module
    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    metric: str
    lr: float


def digits(seed: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Stratified 75/25 split of the digits, scaled to [0, 1], as (N, 8, 8) images."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32).reshape(-1, 8, 8)
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.25, random_state=seed, stratify=d.target)
    return ((torch.from_numpy(xtr), torch.from_numpy(ytr).long()),
            (torch.from_numpy(xte), torch.from_numpy(yte).long()))


def sums(count: int, seed: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Generated lines ``a+b=c`` (a, b < 1000) packed into 32-character windows, 90/10 split, as
    (inputs, next characters)."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 1000, count), rng.integers(0, 1000, count)
    text = "".join(f"{x}+{y}={x + y}\n" for x, y in zip(a, b, strict=True))
    ids = torch.tensor([VOCAB.index(c) for c in text])
    windows = ids[: (len(ids) - 1) // 33 * 33].view(-1, 33)
    cut = len(windows) * 9 // 10
    return (windows[:cut, :-1], windows[:cut, 1:]), (windows[cut:, :-1], windows[cut:, 1:])


def batches(data: tuple[torch.Tensor, torch.Tensor], steps: int, seed: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """``steps`` shuffled mini-batches, epoch after epoch."""
    g = torch.Generator().manual_seed(seed)
    x, y = data
    done = 0
    while True:
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - BATCH + 1, BATCH):
            if done == steps:
                return
            yield x[perm[i:i + BATCH]], y[perm[i:i + BATCH]]
            done += 1


def train(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], steps: int, lr: float, seed: int) -> nn.Module:
    """AdamW with a cosine schedule over ``steps`` mini-batches; returns the model in eval mode."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    model.train()
    for x, y in batches(data, steps, seed):
        opt.zero_grad()
        F.cross_entropy(model(x).flatten(0, -2), y.flatten()).backward()
        opt.step()
        sched.step()
    return model.eval()


def evaluate(task: Task, model: nn.Module) -> float:
    """Test accuracy in percent, or test cross-entropy per token."""
    x, y = task.test
    with torch.no_grad():
        logits = model(x)
    if task.metric == "accuracy":
        return float((logits.argmax(-1) == y).float().mean()) * 100
    return float(F.cross_entropy(logits.flatten(0, -2), y.flatten()))


def build_tasks(settings: Settings, seed: int, names: tuple[str, ...], log: Callable[[str], None]) -> list[Task]:
    """Train the models named: the MLP (``mlp``) and the ViT (``vit``) on digits, the language model (``char_lm``)
    on sums."""
    tasks = []
    train_digits, test_digits = digits(seed)
    epoch = len(train_digits[0]) // BATCH
    for name, model, lr in (("mlp", MLP(), 3e-3), ("vit", ViT(), 2e-3)):
        if name not in names:
            continue
        start = time.perf_counter()
        torch.manual_seed(seed)
        trained = train(model, train_digits, settings.digits_epochs * epoch, lr, seed)
        tasks.append(Task(name, trained, train_digits, test_digits, "accuracy", lr))
        log(f"trained {name} in {time.perf_counter() - start:.0f}s: {evaluate(tasks[-1], trained):.2f}%")
    if "char_lm" not in names:
        return tasks
    train_text, test_text = sums(settings.sums, seed)
    start = time.perf_counter()
    torch.manual_seed(seed)
    lm = train(CharLM(context=32), train_text, settings.lm_steps, 2e-3, seed)
    tasks.append(Task("char_lm", lm, train_text, test_text, "loss", 2e-3))
    log(f"trained char_lm in {time.perf_counter() - start:.0f}s: loss {evaluate(tasks[-1], lm):.3f}")
    return tasks


def replaceable(model: nn.Module) -> list[str]:
    """The linear layers substituted: at least ``MIN_FEATURES`` in and out, not the head."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name != "head"
            and min(m.in_features, m.out_features) >= MIN_FEATURES]


def calibration_stats(task: Task, names: list[str], rows: int) -> dict[str, InputStats]:
    """Each layer's input statistics on ``rows`` training inputs of the dense model."""
    stats: dict[str, InputStats] = {}
    modules = dict(task.model.named_modules())

    def hook(name: str) -> Callable[..., None]:
        def record(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            stats[name] = InputStats.of(args[0].detach())
        return record

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            task.model(task.train[0][:rows])
    finally:
        for h in handles:
            h.remove()
    return stats


def block_counts(family: str, budget: float) -> tuple[int, ...]:
    """Block-diagonal's block count sets its size (1/b); Monarch and BLAST use 4 blocks and size by rank."""
    return (round(1 / budget),) if family == "blockdiag" else (4,)


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule ``name`` of ``model``."""
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent), leaf, module)


def substituted(task: Task, names: list[str], family: str, budget: float,
                stats: dict[str, InputStats] | None) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of the model with each named layer replaced by ``family`` within ``budget`` of its weights."""
    model = copy.deepcopy(task.model)
    options = Options(structure=family, max_error=None, params=budget, blocks=block_counts(family, budget),
                      speed_gate=False)
    before = after = flops_before = flops_after = 0
    weight_errors, output_errors, labels = [], [], []
    for name in names:
        dense = model.get_submodule(name)
        assert isinstance(dense, nn.Linear)
        site = Site(dense, dense.weight.detach(), None if dense.bias is None else dense.bias.detach(),
                    (BATCH, dense.in_features))
        choice = choose(site, options, None, None if stats is None else stats[name])
        if not isinstance(choice, Choice):
            raise RuntimeError(f"{task.name}.{name}: {family} at params={budget} was refused ({choice}); the "
                               f"benchmark expects every structure to fit every layer")
        set_module(model, name, choice.layer)
        report = choice.report
        before, after = before + report.params_before, after + report.params_after
        flops_before, flops_after = flops_before + report.flops_before, flops_after + report.flops_after
        weight_errors.append(report.weight_error)
        output_errors.append(report.output_error)
        labels.append(choice.candidate.label)
    figures = {"params_kept": after / before, "flops_kept": flops_after / flops_before,
               "weight_error": float(np.mean(weight_errors)),
               "output_error": None if stats is None else float(np.mean(output_errors)),
               "layers": sorted(set(labels))}
    return model.eval(), figures


class TruncatedSVD(nn.Sequential):
    """The baseline: ``W ~ U_r S_r V_r^T`` as two linears, from ``torch.linalg.svd`` (not fxopt's fit)."""

    def __init__(self, dense: nn.Linear, rank: int) -> None:
        u, s, vh = torch.linalg.svd(dense.weight.detach(), full_matrices=False)
        first, second = nn.Linear(dense.in_features, rank, bias=False), nn.Linear(rank, dense.out_features)
        with torch.no_grad():
            first.weight.copy_(s[:rank, None] * vh[:rank])
            second.weight.copy_(u[:, :rank])
            if dense.bias is None:
                second.bias = None
            else:
                second.bias.copy_(dense.bias)
        super().__init__(first, second)


def svd_baseline(task: Task, names: list[str], budget: float) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of the model with each named layer truncated to the largest rank within ``budget`` of its weights."""
    model = copy.deepcopy(task.model)
    before = after = 0
    errors = []
    for name in names:
        dense = model.get_submodule(name)
        assert isinstance(dense, nn.Linear)
        m, n = dense.out_features, dense.in_features
        rank = max(1, math.floor(budget * m * n / (m + n)))
        layer = TruncatedSVD(dense, rank)
        with torch.no_grad():
            fitted = layer[1].weight @ layer[0].weight
            errors.append(float((fitted - dense.weight).norm() / dense.weight.norm()))
        bias = m if dense.bias is not None else 0
        before, after = before + m * n + bias, after + rank * (m + n) + bias
        set_module(model, name, layer)
    # every replaced layer applies its weight to each token once: parameters and FLOPs per token keep one ratio
    figures = {"params_kept": after / before, "flops_kept": after / before,
               "weight_error": float(np.mean(errors)), "output_error": None, "layers": ["truncated SVD"]}
    return model.eval(), figures


def count(model: nn.Module) -> int:
    """Parameter count."""
    return sum(p.numel() for p in model.parameters())


def run_task(task: Task, settings: Settings, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Every (structure, budget, fit, fine-tune) row for one trained model."""
    names = replaceable(task.model)
    stats = calibration_stats(task, names, settings.calibration)
    dense = evaluate(task, task.model)
    rows = []
    variants: list[tuple[str, bool]] = [("svd", False)] + [(f, aware) for f in STRUCTURES for aware in (False, True)]
    for budget in BUDGETS:
        for family, aware in variants:
            start = time.perf_counter()
            if family == "svd":
                model, figures = svd_baseline(task, names, budget)
            else:
                model, figures = substituted(task, names, family, budget, stats if aware else None)
            fit_s = time.perf_counter() - start
            metric = evaluate(task, model)
            start = time.perf_counter()
            tuned = train(model, task.train, settings.finetune_steps, task.lr / 3, seed + 1)
            tune_s = time.perf_counter() - start
            row = {"structure": family, "budget": budget, "aware": aware, "metric": metric,
                   "finetuned": evaluate(task, tuned), "model_params_kept": count(model) / count(task.model),
                   "fit_s": fit_s, "finetune_s": tune_s, **figures}
            rows.append(row)
            log(f"{task.name} {family:9} {'aware' if aware else 'plain'} params<={budget}: "
                f"{metric:.3f} -> {row['finetuned']:.3f} (dense {dense:.3f}), params {figures['params_kept']:.3f}, "
                f"weight error {figures['weight_error']:.3f}  [{fit_s:.1f}s + {tune_s:.1f}s]")
    return {"metric": task.metric, "dense": dense, "params": count(task.model), "layers": names, "rows": rows}


def run(settings: Settings, seed: int = 0, models: tuple[str, ...] = MODELS,
        log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Train the models and substitute every structure at every budget.

    Args:
        settings: training lengths (``FULL`` or ``QUICK``).
        seed: data split, initialisation and batch order.
        models: which of ``MODELS`` to run.
        log: receives one line per step.

    Returns:
        ``{"settings": ..., "models": {name: {"metric", "dense", "params", "layers", "rows": [...]}}}``.
    """
    torch.manual_seed(seed)
    start = time.perf_counter()
    models = {task.name: run_task(task, settings, seed, log) for task in build_tasks(settings, seed, models, log)}
    return {"settings": asdict(settings), "seed": seed, "seconds": time.perf_counter() - start,
            "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__, "models": models}


def markdown(results: dict[str, Any]) -> str:
    """One table per model: the metric by structure and fit, at each budget, before and after fine-tuning."""
    out = []
    for name, model in results["models"].items():
        unit = "accuracy %" if model["metric"] == "accuracy" else "test loss"
        out.append(f"**{name}** ({model['params']:,} parameters; dense {unit} {model['dense']:.3f})\n")
        head = " | ".join(f"{b:.0%}: params, FLOPs | {b:.0%} | {b:.0%} tuned" for b in BUDGETS)
        out.append(f"| structure | fit | {head} |")
        out.append("|---|---|" + "---|---|---|" * len(BUDGETS))
        keyed = {(r["structure"], r["aware"], r["budget"]): r for r in model["rows"]}
        for family, aware in sorted({(r["structure"], r["aware"]) for r in model["rows"]},
                                    key=lambda k: (("svd", *STRUCTURES).index(k[0]), k[1])):
            cells = []
            for b in BUDGETS:
                r = keyed[(family, aware, b)]
                cells.append(f"{r['params_kept']:.2f}, {r['flops_kept']:.2f} | {r['metric']:.3f} | "
                             f"{r['finetuned']:.3f}")
            fit = "whitened" if aware else "plain"
            out.append(f"| {family} | {fit} | {' | '.join(cells)} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="train for seconds (what the test runs)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="write the results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else FULL
    results = run(settings, args.seed, tuple(args.models), log=lambda line: print(line, flush=True))
    print(f"\n{results['seconds']:.0f}s\n")
    print(markdown(results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
