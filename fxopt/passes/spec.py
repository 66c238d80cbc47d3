"""Pipeline specs as text: ``"cleanup,fuse,prune(ratio=0.5,round_to=8),lower"``.

``parse_pipeline`` turns a spec into pass objects through the registry; ``format_pipeline`` prints passes back,
with only their non-default options, so that ``parse_pipeline(format_pipeline(p)) == p``. Option values are
Python literals (numbers, quoted strings, True/False/None, tuples); a bare word such as ``mode=max-autotune`` is
read as a string.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from typing import Any

from fxopt.errors import PassError
from fxopt.passes.base import PASSES, Pass, PassRegistry, instantiate


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise PassError(f"unbalanced ')' at column {i} of pipeline spec {text!r}")
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0 or quote:
        raise PassError(f"unbalanced brackets or quotes in pipeline spec {text!r}")
    parts.append(text[start:])
    return parts


def _value(text: str) -> Any:
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if text and all(c.isalnum() or c in "_-.:/" for c in text):
            return text
        raise PassError(f"cannot read option value {text!r}: use a Python literal or a bare word") from None


def parse_pass(text: str, registry: PassRegistry = PASSES) -> Pass:
    """One pass from ``name`` or ``name(key=value, ...)``.

    Raises:
        PassError: for unknown names (listing the registered ones), unknown options or bad values.
    """
    text = text.strip()
    if not text:
        raise PassError("empty pass name in pipeline spec")
    name, args = text, ""
    if "(" in text:
        if not text.endswith(")"):
            raise PassError(f"expected ')' at the end of {text!r}")
        name, args = text[: text.index("(")].strip(), text[text.index("(") + 1: -1]
    cls = registry.get(name)
    options: dict[str, Any] = {}
    for item in _split_top(args) if args.strip() else []:
        if "=" not in item:
            raise PassError(f"option {item.strip()!r} of pass {name!r} must be written key=value")
        key, _, raw = item.partition("=")
        key = key.strip()
        if key in options:
            raise PassError(f"option {key!r} given twice to pass {name!r}")
        options[key] = _value(raw)
    return instantiate(cls, options)


def parse_pipeline(spec: str | Sequence[Pass | str], registry: PassRegistry = PASSES) -> list[Pass]:
    """Pass objects from a text spec or a list mixing pass objects and spec strings.

    Example:
        >>> parse_pipeline("cleanup,fuse(siblings=True),lower")
    """
    if isinstance(spec, str):
        items: Iterable[Pass | str] = [s for s in _split_top(spec) if s.strip()] if spec.strip() else []
    else:
        items = spec
    passes: list[Pass] = []
    for item in items:
        if isinstance(item, Pass):
            passes.append(item)
        elif isinstance(item, str):
            parts = _split_top(item)
            passes.extend(parse_pipeline(item, registry) if len(parts) > 1 else [parse_pass(item, registry)])
        else:
            raise PassError(f"pipeline items must be Pass objects or spec strings, got {type(item).__name__}")
    return passes


def format_value(value: Any) -> str:
    """An option value as spec text that ``parse_pass`` reads back to an equal value."""
    if isinstance(value, (str, bool, int, float, type(None), tuple, list, dict)):
        return repr(value)
    raise PassError(f"option value {value!r} cannot be written in a pipeline spec; use plain values")


def format_pass(p: Pass) -> str:
    """``name`` or ``name(key=value,...)`` with the non-default options."""
    opts = p.non_default_options()
    if not opts:
        return p.name
    return f"{p.name}({','.join(f'{k}={format_value(v)}' for k, v in opts.items())})"


def format_pipeline(passes: Sequence[Pass]) -> str:
    """The spec text of a pipeline: ``parse_pipeline(format_pipeline(p)) == p``."""
    return ",".join(format_pass(p) for p in passes)
