"""Structured-matrix layers (a room for what comes next; nothing lives here yet).

Planned: ``lowrank.py``, ``blockdiag.py``, ``monarch.py``, ``blast.py`` and ``btt.py``, each a layer with
``from_dense()`` (projection or factorization of a dense weight) and ``to_dense()`` (for checking), used by the
``substitute`` pass. Layer: beside ``fxopt.pruning``, above ``fxopt.analysis``/``fxopt.editor``; it may use the
kernels below it and is used by the passes above it (see ``docs/concepts.md``, "Layers").
"""
