"""Exceptions raised by fxopt; every message names the failing part and what to try."""

from __future__ import annotations


class FxoptError(Exception):
    """Base class of every error fxopt raises on purpose."""


class TraceError(FxoptError):
    """A model could not be captured as a torch.fx graph by any front-end."""


class AnalysisError(FxoptError):
    """An analysis was asked about something it does not hold (an unknown group id); never raised for unknown
    ops: those freeze their channels."""


class EditError(FxoptError):
    """A graph edit is impossible as asked (erasing a node that still has users, rolling back an erase)."""


class PruneError(FxoptError):
    """A requested removal is impossible (frozen group, out-of-range index, a group emptied)."""


class PassError(FxoptError):
    """A pass failed, a pipeline spec is invalid, or a graph no longer verifies after a pass.

    Attributes:
        pass_name: the failing pass (``None`` for spec errors raised before any pass ran).
        previous: the passes that ran before it, in order.
        node: the node the failure is attributed to, when known.
    """

    def __init__(self, message: str, pass_name: str | None = None, previous: tuple[str, ...] = (),
                 node: str | None = None) -> None:
        where = []
        if pass_name is not None:
            where.append(f"pass {pass_name!r}")
        if node is not None:
            where.append(f"node {node}")
        if previous:
            where.append(f"after {', '.join(previous)}")
        super().__init__(f"{message} [{'; '.join(where)}]" if where else message)
        self.pass_name = pass_name
        self.previous = previous
        self.node = node
