"""fxopt benchmarks, run as modules from the repository root: ``python -m benchmarks.<name>``.

A package, so that ``benchmarks/kernels.py`` is ``benchmarks.kernels`` and never shadows the ``kernels`` package
that transformers imports (running a file puts its folder first on ``sys.path``; ``-m`` puts the root).
"""
