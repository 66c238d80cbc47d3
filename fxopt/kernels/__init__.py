"""Kernels for structured matmuls (a room for what comes next; nothing lives here yet).

Planned: Triton kernels for the layers of ``fxopt.structured``, registered as torch custom ops so graphs keep them
as single nodes. Layer: at the bottom beside ``fxopt.trace``; it imports nothing of fxopt but ``fxopt.errors``
(see ``docs/concepts.md``, "Layers").
"""
