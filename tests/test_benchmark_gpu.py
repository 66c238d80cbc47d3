"""``python -m benchmarks.gpu --smoke``: the GPU benchmark's code paths on the CPU with tiny shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_gpu_smoke_writes_every_part(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--smoke", "--out", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["target"] == "cpu" and result["device"] == "cpu"
    assert [(r["model"], r["batch"]) for r in result["variants"]] == [("tiny_convnet", 2), ("gpt2_tiny", 2)]
    for row in result["variants"]:
        assert set(row["ms"]) == {"eager", "compile", "reduce-overhead", "fxopt"}, row["failures"]
        assert all(e < 1e-4 for e in row["error"].values()), row["error"]  # fp32, lossless: same outputs
        assert row["fxopt_lowering"].startswith("kept ")
    prune = result["prune"]
    assert set(prune["vs_dense"]) == {"fxopt@0.5", "tp@0.5"}
    assert prune["params"]["fxopt@0.5"] < prune["params"]["dense"] > prune["params"]["tp@0.5"]
    assert set(result["spearman"]) == {"batch 1", "batch 2"} and len(result["rank"]) == 6
    text = (tmp_path / "gpu.md").read_text()
    assert "| tiny_convnet | 2 | fp32 |" in text and "Spearman" in text and "Pruning tiny_convnet" in text
