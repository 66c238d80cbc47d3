"""The pass framework's GraphEditor: ``fxopt.editor.GraphEditor`` bound to one pass run.

Every edit bumps the ``PassContext``'s graph version, which invalidates cached analyses; ``skip`` and ``note``
collect the places a rule matched but did not fire and free-form remarks, and ``finish()`` removes what the edits
left unused, lints and recompiles, and returns the pass's ``PassResult`` with every edit logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.fx as fx

from fxopt import editor
from fxopt.passes.base import PassContext, PassResult, Skip


class GraphEditor(editor.GraphEditor):
    """Logged, version-bumping edits of one graph module during one pass.

    Args:
        gm: the graph module being rewritten (in place).
        ctx: the pipeline context; its version is bumped by every edit.
        pass_name: the pass's spec text, used in the result.
    """

    def __init__(self, gm: fx.GraphModule, ctx: PassContext, pass_name: str) -> None:
        super().__init__(gm, on_edit=lambda _: ctx.bump(), name=pass_name)
        self.ctx = ctx
        self.pass_name = pass_name
        self.skips: list[Skip] = []
        self.notes: list[str] = []

    def skip(self, rule: str, node: fx.Node | str, reason: str) -> None:
        """Record that ``rule`` matched at ``node`` but did not fire, and why."""
        self.skips.append(Skip(rule, node if isinstance(node, str) else node.name, reason))

    def note(self, text: str) -> None:
        """Record a free-form remark in the result."""
        self.notes.append(text)

    def finish(self, metrics: Mapping[str, Any] | None = None, changed: bool | None = None) -> PassResult:
        """Tidy the graph after the edits (see ``tidy``); return the pass's result."""
        if self.edits:
            self.tidy()
        return PassResult(self.pass_name, bool(self.edits) if changed is None else changed, tuple(self.edits),
                          tuple(self.skips), dict(metrics or {}), tuple(self.notes))
