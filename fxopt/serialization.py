"""Saving and loading optimized models without the original model's class.

Two formats:

* ``.pt2`` (default for that suffix): ``torch.export`` of the optimized graph module, saved with
  ``torch.export.save``. Loading gives a GraphModule of ATen ops; it needs only torch. Export needs example
  inputs: the ones ``optimize`` stored are used unless you pass others.
* ``fx`` (any other suffix): the GraphModule, pickled by ``torch.save``. A GraphModule pickles its generated
  code and its submodules (all ``torch.nn`` layers), not the user's classes; loading needs fxopt (for the report
  it carries) and ``weights_only=False``, so load only files you trust. Graphs captured by ``torch.export``
  lose their input-shape check hooks in this format.

Example:
    >>> fast = fxopt.optimize(model, x, compile=False)
    >>> fxopt.save(fast, "model.pt2")
    >>> again = fxopt.load("model.pt2")     # in a process that never imported the model's class
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx

from fxopt.errors import FxoptError

log = logging.getLogger(__name__)

FORMATS = ("pt2", "fx")


def _format(path: Path, format: str | None) -> str:
    fmt = format or ("pt2" if path.suffix == ".pt2" else "fx")
    if fmt not in FORMATS:
        raise FxoptError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return fmt


def _graph_module(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "_orig_mod", module)


def plain_graph_module(module: torch.nn.Module) -> torch.nn.Module:
    """A plain, picklable GraphModule computing what ``module`` computes.

    Graph modules unlifted from ``torch.export`` carry hooks and methods made of local functions (input checks,
    train/eval guards) that pickle cannot store; the copy keeps the graph, the tensors and submodules it
    references, and the input/output tree specs its code reads.
    """
    if not isinstance(module, fx.GraphModule):
        return module
    plain = fx.GraphModule(module, copy.deepcopy(module.graph), class_name=type(module).__name__)
    for attr in ("_in_spec", "_out_spec"):
        if hasattr(module, attr):
            setattr(plain, attr, getattr(module, attr))
    plain._tracer_cls = None  # unpickling re-traces the code; export's tracer class cannot be rebuilt
    plain._tracer_extras = {}
    plain.train(module.training)
    return plain


def save(module: torch.nn.Module, path: str | Path, example_inputs: Any = None, format: str | None = None) -> Path:
    """Save an optimized module so that it loads without the original model's class.

    Args:
        module: what ``optimize`` returned (compiled wrappers are unwrapped) or any GraphModule.
        path: destination; ``.pt2`` selects the torch.export format, anything else the pickled GraphModule.
        example_inputs: inputs for torch.export (default: those stored by ``optimize``).
        format: ``"pt2"`` or ``"fx"`` to override the suffix.

    Returns:
        The path written.

    Raises:
        FxoptError: no example inputs for ``pt2``, or export failed (the message suggests ``format="fx"``).
    """
    path = Path(path)
    gm = _graph_module(module)
    fmt = _format(path, format)
    if fmt == "fx":
        # a GraphModule pickles its code and submodules but not its meta, where the report lives
        torch.save({"fxopt_format": "fx", "module": plain_graph_module(gm), "meta": dict(getattr(gm, "meta", {}))},
                   path)
        return path
    if example_inputs is None:
        meta = getattr(gm, "meta", {}).get("fxopt", {})
        example_inputs = meta.get("example_inputs") if isinstance(meta, dict) else None
    if example_inputs is None:
        raise FxoptError("saving as .pt2 needs example inputs: pass example_inputs=")
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    try:
        program = torch.export.export(gm, inputs, strict=False)
    except Exception as exc:  # export fails in many ways; the pickled GraphModule is the way out
        raise FxoptError(f"torch.export could not capture the optimized module ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); save with format='fx'") from exc
    torch.export.save(program, path)
    return path


def load(path: str | Path, format: str | None = None) -> torch.nn.Module:
    """Load a module written by ``save``; the original model's class is not needed.

    Args:
        path: the file.
        format: ``"pt2"`` or ``"fx"`` to override the suffix.
    """
    path = Path(path)
    if _format(path, format) == "pt2":
        return torch.export.load(path).module()
    saved = torch.load(path, weights_only=False)
    if not (isinstance(saved, dict) and saved.get("fxopt_format") == "fx"):
        raise FxoptError(f"{path} was not written by fxopt.save(..., format='fx')")
    module = saved["module"]
    module.meta.update(saved["meta"])
    return module
