"""Linear -> linear merge: ``L2(L1(x)) = x W1^T W2^T + (W2 b1 + b2)`` becomes one linear ``(W2 W1, W2 b1 + b2)``.

Exact in real arithmetic (float rounding differs at the level of the matmul's own rounding). Fires only when the
merged matrix is not larger than the pair (``out2 * in1 <= max_growth * (out1 * in1 + out2 * out1)``), so it
never adds parameters or FLOPs; a low-rank bottleneck (``in -> r -> out`` with small r) is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.fx as fx

from fxopt.passes.base import Pass, PassContext, PassResult, register_pass
from fxopt.passes.editor import GraphEditor
from fxopt.passes.fold_bn import set_bias
from fxopt.passes.match import (
    Check,
    Match,
    Pattern,
    exclusive,
    param_tensor,
    run_patterns,
    single_user,
    stored_matrix,
)


def _stored(m: Match, e: GraphEditor) -> str | None:
    reason = stored_matrix(e, m.first) or stored_matrix(e, m.second)
    if reason:
        return reason
    w1, w2 = param_tensor(e, m.first.params["weight"]), param_tensor(e, m.second.params["weight"])
    assert w1 is not None and w2 is not None
    if w1.dtype != w2.dtype or w1.device != w2.device:
        return "the two weights differ in dtype or device"
    return None


def growth_check(max_growth: float) -> Check:
    """A check that vetoes merges whose matrix would be larger than ``max_growth`` times the pair."""

    def check(m: Match, e: GraphEditor) -> str | None:
        w1, w2 = param_tensor(e, m.first.params["weight"]), param_tensor(e, m.second.params["weight"])
        assert w1 is not None and w2 is not None
        (o1, i1), (o2, _) = w1.shape, w2.shape
        merged, pair = o2 * i1, o1 * i1 + o2 * o1
        if merged > max_growth * pair:
            return f"merged matrix {o2}x{i1} is larger than the pair ({merged} > {pair} weights)"
        return None

    return check


def _single(m: Match, e: GraphEditor) -> str | None:
    return single_user(m.first.node) or exclusive(e, m.first, ("weight", "bias")) or exclusive(
        e, m.second, ("weight", "bias"))


def _merge(m: Match, e: GraphEditor) -> None:
    first, second = m.first, m.second
    w1, w2 = param_tensor(e, first.params["weight"]), param_tensor(e, second.params["weight"])
    b1, b2 = param_tensor(e, first.params.get("bias")), param_tensor(e, second.params.get("bias"))
    assert w1 is not None and w2 is not None and second.params["weight"] is not None
    w = w2.double() @ w1.double()
    bias = None
    if b1 is not None:
        bias = w2.double() @ b1.double()
    if b2 is not None:
        bias = b2.double() if bias is None else bias + b2.double()
    e.set_tensor(str(second.params["weight"].qualname), w.to(w2.dtype), f"merged {first.node.name}")
    if second.module is not None:
        e.set_module_attr(str(second.node.target), "in_features", int(w.shape[1]))
    if bias is not None:
        set_bias(e, second, bias.to(w2.dtype))
    x = first.inputs[0]
    assert x is not None and x.node is not None
    e.set_input(second.node, first.node, x.node)
    e.erase(first.node)


def merge_pattern(max_growth: float = 1.0) -> Pattern:
    """The linear -> linear pattern with its checks."""
    return Pattern("merge_linear", frozenset({"linear"}), frozenset({"linear"}),
                   (_single, _stored, growth_check(max_growth)), _merge)


@register_pass
@dataclass(frozen=True)
class MergeLinearPass(Pass):
    """Merge a linear that feeds only another linear into it, when the merged matrix is not larger."""

    name: ClassVar[str] = "merge_linear"
    max_growth: float = 1.0

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        """Merge every eligible pair, repeatedly (chains collapse)."""
        return run_patterns(gm, ctx, str(self), [merge_pattern(self.max_growth)])
