"""Op semantics: OpView normalization and channel rules, one module per op family.

Importing this package registers fxopt's rules in ``REGISTRY``.
"""

from fxopt.ops import (  # noqa: F401  (imported for their registrations)
    attention,
    concat,
    conv,
    elementwise,
    embedding,
    linear,
    norm,
    pooling,
    recurrent,
    reduction,
    shape,
)
from fxopt.ops.registry import REGISTRY, OpRegistry
from fxopt.ops.view import Axis, OpView, TensorRef

__all__ = ["REGISTRY", "Axis", "OpRegistry", "OpView", "TensorRef"]
