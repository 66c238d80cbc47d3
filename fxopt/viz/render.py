"""Turn DOT text into a picture with Graphviz's ``dot`` program, or keep the .dot text where it is missing."""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FORMATS = ("svg", "png", "pdf", "dot")
INSTALL_HINT = ("install Graphviz to render it: `apt-get install graphviz` (Debian/Ubuntu), `brew install graphviz` "
                "(macOS) or `conda install graphviz`; then run `dot -T{fmt} {dot} -o {out}`")


@dataclass(frozen=True)
class RenderResult:
    """What ``render`` wrote.

    Attributes:
        path: the picture (or the .dot file when Graphviz is missing or a .dot was asked for).
        dot_path: the .dot text written beside a picture when it could not be rendered, else ``None``.
        rendered: whether a picture in the requested format was produced.
        message: why not, with how to install Graphviz (``None`` when rendered).
    """

    path: Path
    dot_path: Path | None
    rendered: bool
    message: str | None = None


def format_of(path: Path, fmt: str | None = None) -> str:
    """The output format: ``fmt`` if given, else the file suffix; ValueError for unsupported ones."""
    chosen = (fmt or path.suffix.lstrip(".") or "svg").lower()
    if chosen == "gv":
        chosen = "dot"
    if chosen not in FORMATS:
        raise ValueError(f"unsupported picture format {chosen!r} for {path}: use one of {', '.join(FORMATS)}")
    return chosen


def dot_executable() -> str | None:
    """Path of Graphviz's ``dot``, or ``None`` when it is not installed."""
    return shutil.which("dot")


def render_dot(dot_text: str, path: str | Path, fmt: str | None = None, timeout: float = 300.0) -> RenderResult:
    """Write ``dot_text`` as a picture at ``path``.

    Args:
        dot_text: DOT source (``fxopt.viz.dot.to_dot``).
        path: the output file; its suffix (``.svg``, ``.png``, ``.pdf``, ``.dot``) picks the format.
        fmt: overrides the suffix.
        timeout: seconds ``dot`` may take (very large graphs: collapse repeated blocks first).

    Returns:
        A RenderResult. Without Graphviz, the DOT text is written to ``path`` with suffix ``.dot`` and the
        result's ``message`` says how to install it; nothing is raised.

    Raises:
        ValueError: for an unsupported format.
        RuntimeError: when ``dot`` itself fails (its error message is included).
    """
    out = Path(path)
    kind = format_of(out, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    if kind == "dot":
        out.write_text(dot_text)
        return RenderResult(out, None, True)
    exe = dot_executable()
    if exe is None:
        dot_path = out.with_suffix(".dot")
        dot_path.write_text(dot_text)
        message = f"Graphviz `dot` not found: wrote the graph as {dot_path}; " + INSTALL_HINT.format(
            fmt=kind, dot=dot_path, out=out)
        log.warning("%s", message)
        return RenderResult(dot_path, dot_path, False, message)
    args = [exe, f"-T{kind}", "-o", str(out)]
    if kind == "png":
        args.insert(1, "-Gdpi=96")
    try:
        proc = subprocess.run(args, input=dot_text.encode(), capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"dot took more than {timeout:.0f}s; collapse repeated blocks (collapse=True) "
                           "or draw a smaller part of the graph") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"dot failed ({proc.returncode}): {proc.stderr.decode(errors='replace').strip()[:500]}")
    for line in proc.stderr.decode(errors="replace").splitlines():
        log.debug("dot: %s", line)
    return RenderResult(out, None, True)
