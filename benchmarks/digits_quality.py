"""Accuracy after pruning without retraining, on real data: scikit-learn's bundled digits (no download).

Trains a small CNN and a small MLP on digits (8x8 images, 10 classes), then prunes 30% and 50% of the units of
every group (uniform, the same semantics as Torch-Pruning's ``pruning_ratio``) with every fxopt criterion, with
and without reconstruction, and with Torch-Pruning's criteria at the same ratio. Nothing is fine-tuned after
pruning: the figures measure what the criterion and the reconstruction keep.

Run: python -m benchmarks.digits_quality [--seeds 3] [--out docs/digits_quality.json]

Needs scikit-learn (``pip install scikit-learn``) and torch-pruning for the side-by-side column.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fxopt.pruning import prune

RATIOS = (0.3, 0.5)
CRITERIA = ("l1", "l2", "bn_scale", "taylor", "variance", "random")
RECONSTRUCT = (None, "bias", "ls")
TP_CRITERIA = ("l1", "l2", "bn_scale", "taylor", "random")
CALIBRATION_BATCHES = 8
BATCH = 64


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks and a linear classifier for 1x8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)
        self.conv3, self.bn3 = nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SmallMLP(nn.Module):
    """64-256-128-10 perceptron with ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 256), nn.Linear(256, 128), nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))))


def load_digits_split(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train/test split (75/25, stratified) of the digits, scaled to [0, 1], as 1x8x8 images."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.25, random_state=seed, stratify=d.target)
    return torch.from_numpy(xtr), torch.from_numpy(ytr).long(), torch.from_numpy(xte), torch.from_numpy(yte).long()


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int = 40) -> nn.Module:
    """Adam with a cosine schedule, mini-batches of 64; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), BATCH):
            idx = perm[i:i + BATCH]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean()) * 100


def n_params(model: nn.Module) -> int:
    """Parameter count."""
    return sum(p.numel() for p in model.parameters())


def fxopt_run(model: nn.Module, example: torch.Tensor, ratio: float, criterion: str, reconstruct: str | None,
              calibration: list[tuple[torch.Tensor, torch.Tensor]]) -> nn.Module:
    """fxopt pruning, uniform ratio, no rounding (the same semantics as Torch-Pruning's pruning_ratio)."""
    small, _ = prune(model, example, ratio=ratio, criterion=criterion, reconstruct=reconstruct,
                     calibration=calibration, loss_fn=F.cross_entropy, floor=0.0)
    return small


def tp_run(model: nn.Module, example: torch.Tensor, ratio: float, criterion: str,
           calibration: list[tuple[torch.Tensor, torch.Tensor]]) -> nn.Module:
    """Torch-Pruning's MetaPruner at the same ratio, the classifier ignored (as fxopt's analysis freezes it)."""
    import torch_pruning as tp

    model = copy.deepcopy(model)
    imp = {"l1": lambda: tp.importance.MagnitudeImportance(p=1), "l2": lambda: tp.importance.MagnitudeImportance(p=2),
           "bn_scale": tp.importance.BNScaleImportance, "taylor": tp.importance.TaylorImportance,
           "random": tp.importance.RandomImportance}[criterion]()
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(model, example, importance=imp, pruning_ratio=ratio, ignored_layers=[last])
    if criterion == "taylor":
        model.zero_grad()
        for xb, yb in calibration:
            F.cross_entropy(model(xb), yb).backward()
    pruner.step()
    return model.eval()


def run_seed(seed: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every (model, ratio, method) accuracy for one training seed."""
    xtr, ytr, xte, yte = load_digits_split(seed)
    g = torch.Generator().manual_seed(seed + 1)
    perm = torch.randperm(len(xtr), generator=g)[: CALIBRATION_BATCHES * BATCH]
    calibration = [(xtr[perm[i:i + BATCH]], ytr[perm[i:i + BATCH]]) for i in range(0, len(perm), BATCH)]
    rows: list[dict[str, Any]] = []
    for name, cls in (("cnn", SmallCNN), ("mlp", SmallMLP)):
        torch.manual_seed(seed)
        model = train(cls(), xtr, ytr, seed)
        dense = accuracy(model, xte, yte)
        rows.append({"seed": seed, "model": name, "ratio": 0.0, "tool": "dense", "criterion": "-",
                     "reconstruct": None, "acc": dense, "params": n_params(model)})
        example = xtr[:2]
        for ratio in RATIOS:
            for crit in CRITERIA:
                if crit == "bn_scale" and name == "mlp":
                    continue  # no BatchNorm in the MLP: the criterion falls back to l2
                for rec in RECONSTRUCT:
                    small = fxopt_run(model, example, ratio, crit, rec, calibration)
                    rows.append({"seed": seed, "model": name, "ratio": ratio, "tool": "fxopt", "criterion": crit,
                                 "reconstruct": rec, "acc": accuracy(small, xte, yte), "params": n_params(small)})
            for crit in TP_CRITERIA:
                if crit == "bn_scale" and name == "mlp":
                    continue
                small = tp_run(model, example, ratio, crit, calibration)
                rows.append({"seed": seed, "model": name, "ratio": ratio, "tool": "torch-pruning", "criterion": crit,
                             "reconstruct": None, "acc": accuracy(small, xte, yte), "params": n_params(small)})
        log(f"seed {seed} {name}: dense {dense:.1f}%")
    return rows


def summarize(rows: list[dict[str, Any]]) -> str:
    """Markdown table: mean (min-max) accuracy over seeds per model, ratio and method."""
    keys: dict[tuple[Any, ...], list[float]] = {}
    params: dict[tuple[Any, ...], int] = {}
    for r in rows:
        k = (r["model"], r["ratio"], r["tool"], r["criterion"], r["reconstruct"] or "-")
        keys.setdefault(k, []).append(r["acc"])
        params[k] = r["params"]
    lines = ["| model | ratio | tool | criterion | reconstruction | accuracy % (mean, min-max over seeds) | params |",
             "|---|---|---|---|---|---|---|"]
    for k, accs in keys.items():
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {k[4]} | {np.mean(accs):.1f} "
                     f"({min(accs):.1f}-{max(accs):.1f}) | {params[k]:,} |")
    best = ["", "| model | ratio | best fxopt (criterion + reconstruction) | best Torch-Pruning | margin |",
            "|---|---|---|---|---|"]
    for model in ("cnn", "mlp"):
        for ratio in RATIOS:
            fx = {k: np.mean(v) for k, v in keys.items() if k[0] == model and k[1] == ratio and k[2] == "fxopt"
                  and k[4] != "-"}
            tp_ = {k: np.mean(v) for k, v in keys.items() if k[0] == model and k[1] == ratio
                   and k[2] == "torch-pruning"}
            if fx and tp_:
                kf, kt = max(fx, key=fx.get), max(tp_, key=tp_.get)
                best.append(f"| {model} | {ratio} | {fx[kf]:.1f} ({kf[3]} + {kf[4]}) | {tp_[kt]:.1f} ({kt[3]}) | "
                            f"{fx[kf] - tp_[kt]:+.1f} |")
    return "\n".join(lines + best)


def main() -> None:
    """Train, prune, evaluate; print the tables and write the raw rows as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=None, help="write raw rows and the table to this JSON file")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        rows += run_seed(seed, lambda s: print(s, flush=True))
    table = summarize(rows)
    print(table)
    info = {"seconds": round(time.perf_counter() - start, 1), "loadavg": os.getloadavg(), "torch": torch.__version__,
            "python": platform.python_version()}
    print(info)
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "table": table, "info": info}, indent=1))


if __name__ == "__main__":
    main()
