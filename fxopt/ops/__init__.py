"""Op semantics: OpView normalization, the facts channel rules state, the rewriters that resize ops, and op costs.

Importing this package registers fxopt's rules in ``REGISTRY``.
"""

from fxopt.ops import (  # noqa: F401  (imported for their registrations)
    attention,
    concat,
    conv,
    elementwise,
    embedding,
    factories,
    indexing,
    kernel_ops,
    linear,
    norm,
    pooling,
    recurrent,
    reduction,
    reshape,
    structured,
)
from fxopt.ops.cost import OpCost, Sizes
from fxopt.ops.facts import Facts
from fxopt.ops.registry import REGISTRY, OpRegistry
from fxopt.ops.resize import Resizer
from fxopt.ops.view import Axis, OpView, TensorRef

__all__ = ["REGISTRY", "Axis", "Facts", "OpCost", "OpRegistry", "OpView", "Resizer", "Sizes", "TensorRef"]
