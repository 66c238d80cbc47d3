"""Fused kernels for the structured layers, registered as torch custom ops in the ``fxopt::`` namespace.

Importing this package registers ``torch.ops.fxopt.blockdiag_matmul``, ``monarch``, ``blast`` and ``lowrank``,
each with a fake implementation (tracing, export and compile see one op), an autograd formula and a CPU path that
picks the fastest torch contraction order per shape. On CUDA tensors the ops run Triton kernels, imported lazily so
fxopt imports without triton or a GPU. Layer: at the bottom beside ``fxopt.trace``; it imports only torch and
triton (see ``docs/concepts.md``, "Layers", and ``docs/kernels.md``). The submodules hold the ops and their
plain-torch references (``blockdiag.blockdiag_reference``...).
"""

from fxopt.kernels import blast, blockdiag, lowrank, monarch

__all__ = ["blast", "blockdiag", "lowrank", "monarch"]
