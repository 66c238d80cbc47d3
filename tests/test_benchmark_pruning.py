"""The pruning coverage sweep (``python -m benchmarks.pruning --coverage``) on one transformers model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_coverage_sweep_prunes_a_transformers_model_in_its_subprocess(tmp_path: Path) -> None:
    # Each model runs in `python benchmarks/pruning.py --coverage-one`; with the script's folder first on sys.path,
    # benchmarks/kernels.py shadowed the `kernels` package that transformers probes, and every HF model crashed.
    cache = tmp_path / "coverage.jsonl"
    done = subprocess.run([sys.executable, "-m", "benchmarks.pruning", "--coverage", "--only", "hf:bert",
                           "--cache", str(cache)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = [json.loads(line) for line in cache.read_text().splitlines()]
    assert row["name"] == "hf:bert" and row["ok"], row.get("error") or row.get("trace")
    assert row["zero_invariance"] == "4/4" and row["save_load"] and row["params_ratio"] < 1.0
