"""``fuse``: the exact local fusions in one pass, applied to a fixpoint.

Batch-norm folding into producers (conv, conv-transpose, linear) and, where exact, into consumers; linear ->
linear merging when the merged matrix is not larger; optionally horizontal fusion of sibling linears (on for
GPU targets, where fewer and larger matmuls win). Each rule is also its own pass (``fold_bn``,
``fold_bn_input``, ``merge_linear``, ``fuse_siblings``) for testing and custom pipelines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.fx as fx

from fxopt.passes.base import Pass, PassContext, PassResult, register_pass
from fxopt.passes.fold_bn import BN_CONV, CONV_BN, run_patterns
from fxopt.passes.horizontal import HorizontalFusePass
from fxopt.passes.match import Pattern
from fxopt.passes.merge_linear import merge_pattern


@register_pass
@dataclass(frozen=True)
class FusePass(Pass):
    """Exact fusions: BN folding, linear chains, and (optionally) sibling linears.

    Attributes:
        bn: fold batch norms into the conv/linear before them.
        bn_input: fold batch norms into the conv/linear after them where exact (no zero padding).
        linear_chain: merge linear -> linear when the merged matrix is not larger than the pair.
        siblings: fuse sibling linears reading the same tensor (GPU targets).
    """

    name: ClassVar[str] = "fuse"
    bn: bool = True
    bn_input: bool = True
    linear_chain: bool = True
    siblings: bool = False

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        """Apply the enabled patterns to a fixpoint, then sibling fusion."""
        patterns: list[Pattern] = []
        if self.bn:
            patterns.append(CONV_BN)
        if self.bn_input:
            patterns.append(BN_CONV)
        if self.linear_chain:
            patterns.append(merge_pattern())
        result = run_patterns(gm, ctx, str(self), patterns)
        for _ in range(MAX_ROUNDS if self.siblings else 0):  # sibling fusion can open new chains, and back
            more = HorizontalFusePass().run(gm, ctx)
            result = _combined(result, more)
            if not more.changed:
                break
            again = run_patterns(gm, ctx, str(self), patterns)
            result = _combined(result, again)
            if not again.changed:
                break
        return result


MAX_ROUNDS = 8
"""Rounds of pattern fusion and sibling fusion at most (each round must change the graph to go on)."""


def _combined(a: PassResult, b: PassResult) -> PassResult:
    metrics = dict(a.metrics)
    for key, value in b.metrics.items():
        metrics[key] = metrics[key] + value if isinstance(value, int) and isinstance(metrics.get(key), int) else value
    return a.replace(changed=a.changed or b.changed, edits=a.edits + b.edits, skips=a.skips + b.skips,
                     metrics=metrics)
