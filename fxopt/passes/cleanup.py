"""Cleanup: dead code, identities (Identity, eval-mode dropout, no-op copies and casts), no-op reshapes, and
constant folding of subgraphs that read only parameters, buffers and constants.

Every rule here is exact: the rewritten graph computes bit-identical outputs (constant folding computes the
same ops once, ahead of time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.fx as fx

from fxopt.passes.base import Pass, PassContext, PassResult, register_pass
from fxopt.passes.constfold import fold_constants
from fxopt.passes.editor import GraphEditor
from fxopt.passes.identities import identity_input, is_mutating

MAX_ROUNDS = 8


def removable(node: fx.Node, gm: fx.GraphModule) -> bool:
    """Whether ``node`` is dead: nobody reads it and running it has no side effect."""
    if node.users or node.op in ("placeholder", "output"):
        return False
    if node.op == "get_attr":
        return True
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        if not type(m).__module__.startswith("torch.nn"):
            return False  # a user module may have side effects we cannot see
        return not (m.training and any(True for _ in m.buffers()))  # training BN updates its statistics
    return not (is_mutating(node) or node.is_impure())


def remove_dead_code(gm: fx.GraphModule, editor: GraphEditor) -> int:
    """Erase dead nodes, users first; return how many were erased."""
    erased = 0
    for node in reversed(list(gm.graph.nodes)):
        if removable(node, gm):
            if node.op == "get_attr":
                editor.erase_get_attr(node)
            else:
                editor.erase(node)
            erased += 1
    return erased


def remove_identities(gm: fx.GraphModule, editor: GraphEditor) -> int:
    """Make the users of every identity node read its input; return how many were bypassed."""
    removed = 0
    outputs = {n for n in gm.graph.nodes if n.op == "output"}
    for node in list(gm.graph.nodes):
        if node.op not in ("call_module", "call_function", "call_method") or not node.users:
            continue
        src, reason = identity_input(node, gm)
        if src is None:
            if reason is not None:
                editor.skip("identity", node, reason)
            continue
        if set(node.users) <= outputs and src.op == "placeholder":
            editor.skip("identity", node, "returning an input unchanged would alias it")
            continue
        editor.replace_uses(node, src, "identity")
        editor.erase(node)
        removed += 1
    return removed


@register_pass
@dataclass(frozen=True)
class CleanupPass(Pass):
    """Remove dead code and identities, fold constant subgraphs (exact).

    Attributes:
        identities: bypass Identity, eval dropout, no-op contiguous/clone/cast and no-op reshapes.
        constants: fold subgraphs that read only parameters, buffers and constants.
        fold_parameters: also fold subgraphs of trainable parameters (they then no longer train).
        max_elements: largest folded tensor, in elements.
    """

    name: ClassVar[str] = "cleanup"
    identities: bool = True
    constants: bool = True
    fold_parameters: bool = True
    max_elements: int = 1 << 24

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        """Apply the rules until nothing changes."""
        editor = GraphEditor(gm, ctx, str(self))
        totals = {"identities": 0, "folded": 0, "dead": 0}
        for _ in range(MAX_ROUNDS):
            skips = len(editor.skips)
            n_id = remove_identities(gm, editor) if self.identities else 0
            n_fold = fold_constants(gm, editor, self.fold_parameters, self.max_elements) if self.constants else 0
            n_dead = remove_dead_code(gm, editor)
            totals["identities"] += n_id
            totals["folded"] += n_fold
            totals["dead"] += n_dead
            if not (n_id or n_fold or n_dead):
                break
            del editor.skips[skips:]
        return editor.finish(totals)
