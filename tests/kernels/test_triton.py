"""The Triton kernels against the torch references, run by triton's interpreter on CPU in a subprocess.

TRITON_INTERPRET is read when ``triton.jit`` decorates a kernel, so it is set only in the subprocess that imports
the kernels (``interpreted.py``); the test process and the other tests never see it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytest.importorskip("triton.runtime.interpreter")

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ["blockdiag", "monarch", "blast", "lowrank"]


@pytest.fixture(scope="module")
def verdicts() -> dict[str, str | None]:
    """Case name -> error message (``None`` when the kernel matched the reference), from one interpreted run."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("interpreted.py"))], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0 and "interpreter" in done.stderr.lower():
        pytest.skip(f"triton's interpreter is unavailable: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kernel", KERNELS)
def test_triton_kernel_interpreted_matches_reference(kernel, verdicts):
    cases = {name: error for name, error in verdicts.items() if name.startswith(kernel + "-")}
    assert len(cases) >= 8, cases  # ragged token counts, both dtypes, shuffles or ranks above one tile
    assert {name: error for name, error in cases.items() if error} == {}


def test_interpreter_flag_does_not_leak_into_the_test_process(verdicts):
    assert "TRITON_INTERPRET" not in os.environ
    assert "fxopt.kernels.triton_blockdiag" not in sys.modules
