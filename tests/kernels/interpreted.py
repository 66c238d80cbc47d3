"""Runs every Triton kernel under TRITON_INTERPRET=1 on CPU tensors; prints one JSON line: case -> error or null.

Started as a subprocess by ``test_triton.py`` so that the interpreter flag (read when ``triton.jit`` decorates a
kernel) never reaches the test process. The cases are the shapes and dtypes the ops' dispatch can send, kept tiny.
"""

from __future__ import annotations

import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

import torch

from fxopt.kernels.blast import blast_reference
from fxopt.kernels.blockdiag import blockdiag_reference
from fxopt.kernels.lowrank import lowrank_reference
from fxopt.kernels.monarch import monarch_reference
from fxopt.kernels.triton_blast import blast
from fxopt.kernels.triton_blockdiag import blockdiag
from fxopt.kernels.triton_lowrank import lowrank
from fxopt.kernels.triton_monarch import monarch

DTYPES = {"float32": torch.float32, "float16": torch.float16}
"""bfloat16 is left out: triton 3.8's interpreter computes ``tl.dot`` on bfloat16 from the raw bits (a copy or a
conversion is right, a dot is off by 1e9), so bfloat16 is checked on a GPU only (``docs/kernels.md``)."""
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2}


def cases():
    """(name, kernel call, reference call) for every case, inputs made lazily per dtype."""
    for dname, dtype in DTYPES.items():
        g = torch.Generator().manual_seed(0)

        def r(*shape, dtype=dtype, g=g):
            return torch.randn(*shape, generator=g).to(dtype)

        for t in (1, 17):
            for si in (False, True):
                for so in (False, True):
                    x, w = r(t, 3 * 5), r(3, 7, 5)
                    yield (f"blockdiag-t{t}-in{int(si)}-out{int(so)}-{dname}",
                           lambda x=x, w=w, si=si, so=so: blockdiag(x, w, si, so),
                           lambda x=x, w=w, si=si, so=so: blockdiag_reference(x, w, si, so))
            x, right, left = r(t, 3 * 5), r(3, 2 * 2, 5), r(2, 7, 3 * 2)
            for sh in (False, True):
                yield (f"monarch-t{t}-shuffle{int(sh)}-{dname}",
                       lambda x=x, rt=right, lf=left, sh=sh: monarch(x, rt, lf, 2, sh, not sh),
                       lambda x=x, rt=right, lf=left, sh=sh: monarch_reference(x, rt, lf, 2, sh, not sh))
            for rank in (3, 40):
                x, u, s, v = r(t, 3 * 4), r(3, 5, rank), r(3, 3, rank), r(3, 4, rank)
                yield (f"blast-t{t}-r{rank}-{dname}", lambda x=x, u=u, s=s, v=v: blast(x.reshape(-1, 3, 4), u, s, v),
                       lambda x=x, u=u, s=s, v=v: blast_reference(x, u, s, v))
                x, u, v = r(t, 70), r(9, rank), r(rank, 70)
                yield (f"lowrank-t{t}-r{rank}-{dname}", lambda x=x, u=u, v=v: lowrank(x, u, v),
                       lambda x=x, u=u, v=v: lowrank_reference(x.double(), u.double(), v.double()))


def main() -> None:
    """Run the cases and print the JSON verdicts."""
    only = sys.argv[1] if len(sys.argv) > 1 else ""
    verdicts = {}
    for name, kernel, reference in cases():
        if only not in name:
            continue
        got = kernel()  # a kernel that raises ends the run; the test shows the traceback
        expected = reference().to(got.dtype)
        scale = expected.abs().max().clamp_min(1).item()
        err = (got.float() - expected.float()).abs().max().item() / scale
        verdicts[name] = None if err <= TOLERANCE[got.dtype] else f"relative error {err:.3g}"
    print(json.dumps(verdicts))


if __name__ == "__main__":
    main()
