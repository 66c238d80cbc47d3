"""Op semantics: OpView normalization, the facts channel rules state, and the rewriters that resize ops.

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
    structured,
)
from fxopt.ops.facts import Facts
from fxopt.ops.registry import REGISTRY, OpRegistry
from fxopt.ops.resize import Resizer
from fxopt.ops.view import Axis, OpView, TensorRef

__all__ = ["REGISTRY", "Axis", "Facts", "OpRegistry", "OpView", "Resizer", "TensorRef"]
