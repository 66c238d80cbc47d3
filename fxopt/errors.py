"""Exceptions raised by fxopt; every message names the failing part and what to try."""

from __future__ import annotations


class FxoptError(Exception):
    """Base class of every error fxopt raises on purpose."""


class TraceError(FxoptError):
    """A model could not be captured as a torch.fx graph by any front-end."""


class AnalysisError(FxoptError):
    """The channel analysis met a graph it cannot describe (never raised for unknown ops: those freeze)."""


class PruneError(FxoptError):
    """A requested removal is impossible (frozen group, out-of-range index, a group emptied)."""
