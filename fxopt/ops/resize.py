"""The ``Resizer`` rewriters are written against: new sizes after channel removal, and the only way to write them.

A rewriter (``REGISTRY.rewriter``) runs once per node after the analysis' chosen channels were removed from the
parameters. It reads which elements of an axis survive (``kept``, ``new_size``, ``changed``) and puts the new
sizes into the node's arguments or its module's attributes through the resizer, never by assigning to the node
or the module itself: removal logs every such write as an edit (``fxopt.pruning.removal`` implements this
protocol on top of the ``GraphEditor``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn, Protocol

import numpy as np
import torch.fx as fx

from fxopt.ops.view import Axis, OpView


class Resizer(Protocol):
    """What a rewriter may read (new sizes of axes) and write (arguments, module attributes)."""

    def kept(self, axis: Axis) -> np.ndarray:
        """Indices of ``axis`` that survive, ascending."""
        ...

    def new_size(self, axis: Axis) -> int:
        """Size of ``axis`` after removal."""
        ...

    def changed(self, axis: Axis) -> bool:
        """Whether ``axis`` loses elements."""
        ...

    def set_arg(self, view: OpView, name: str, value: Any) -> None:
        """Set argument ``name`` of a functional call, positionally if it was passed positionally."""
        ...

    def set_args(self, node: fx.Node, args: tuple[Any, ...], kwargs: Mapping[str, Any] | None = None,
                 target: Any = None) -> None:
        """Replace ``node``'s arguments (and its keyword arguments or target, when given)."""
        ...

    def set_module_attr(self, view: OpView, attr: str, value: Any) -> None:
        """Set a plain attribute (``num_features``, ``groups``, ...) of the module a ``call_module`` view calls."""
        ...

    def fail(self, node: fx.Node, why: str) -> NoReturn:
        """Stop the removal: ``node`` cannot be rewritten."""
        ...
