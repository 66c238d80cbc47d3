"""Saving and loading optimized models without the original model's class.

Two formats:

* ``.pt2`` (default for that suffix): ``torch.export`` of the optimized graph module, saved with
  ``torch.export.save``. Loading gives a GraphModule of ATen ops; it needs only torch. Export needs example
  inputs: the ones ``optimize`` stored are used unless you pass others. The first dim of the inputs (the batch)
  is exported as dynamic where the graph allows it, so the loaded module takes any batch size; every other dim
  is fixed to the example's. ``accepted_inputs(path)`` says which shapes a saved file takes.
* ``fx`` (any other suffix): the GraphModule, pickled by ``torch.save``. A GraphModule pickles its generated
  code and its submodules (all ``torch.nn`` layers), not the user's classes; loading needs fxopt (for the report
  it carries) and ``weights_only=False``, so load only files you trust. Graphs captured by ``torch.export``
  lose their input-shape check hooks in this format.

Example:
    >>> fast = fxopt.optimize(model, x, compile=False)
    >>> fxopt.save(fast, "model.pt2")
    >>> again = fxopt.load("model.pt2")     # in a process that never imported the model's class
    >>> accepted_inputs("model.pt2")
    ['x: Nx3x224x224 (N >= 1)']
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import sympy
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
    torch.export.save(export_program(gm, inputs), path)
    return path


def _batched(inputs: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The inputs with a first dim of 2 where it is 1 (export specializes dims of size 0 and 1), or None when
    no tensor input has a first dim."""
    if not any(isinstance(x, torch.Tensor) and x.dim() > 0 for x in inputs):
        return None
    return tuple(torch.cat([x, x]) if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == 1 else x
                 for x in inputs)


def export_program(module: torch.nn.Module, inputs: tuple[Any, ...]) -> torch.export.ExportedProgram:
    """``torch.export`` of ``module`` with a dynamic batch (first) dim where the graph allows it, else static.

    Raises:
        FxoptError: export failed even with static shapes (the message suggests ``format="fx"``).
    """
    batched = _batched(inputs)
    if batched is not None:
        batch = torch.export.Dim("batch", min=1)
        dims = tuple({0: batch} if isinstance(x, torch.Tensor) and x.dim() > 0 else None for x in batched)
        try:
            return torch.export.export(module, batched, dynamic_shapes=dims, strict=False)
        except Exception as exc:  # a graph with the batch baked in (a view to 1 x ...): keep the example's shapes
            log.info("exporting with a dynamic batch failed (%s); saving with fixed shapes", _first_line(exc))
    try:
        return torch.export.export(module, inputs, strict=False)
    except Exception as exc:  # export fails in many ways; the pickled GraphModule is the way out
        raise FxoptError(f"torch.export could not capture the optimized module ({type(exc).__name__}: "
                         f"{_first_line(exc)}); save with format='fx'") from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else ""


def _dim_text(size: Any, program: torch.export.ExportedProgram) -> tuple[str, str | None]:
    """A dim as text (``"224"`` or ``"N"``) and, for a dynamic dim, its range."""
    if isinstance(size, int):
        return str(size), None
    node = size.node.expr
    bounds = program.range_constraints.get(node)
    low = int(bounds.lower) if bounds is not None else 0
    high = bounds.upper if bounds is not None else None
    upper = f" and <= {int(high)}" if isinstance(high, sympy.Integer) else ""  # int_oo is no Integer
    return "N", f"N >= {low}{upper}"


def accepted_inputs(path: str | Path) -> list[str]:
    """The input shapes a file written by ``save`` takes, one line per tensor input (``x: Nx3x224x224 (N >= 1)``).

    A ``.pt2`` file checks shapes when called; a pickled GraphModule (``format="fx"``) checks nothing and takes
    whatever its code can compute with.
    """
    path = Path(path)
    if _format(path, None) != "pt2":
        return ["any shape the graph's code can compute with (the fx format checks no shapes)"]
    program = torch.export.load(path)
    user = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    lines = []
    for node in program.graph.nodes:
        val = node.meta.get("val")
        if node.op != "placeholder" or node.name not in user or not isinstance(val, torch.Tensor):
            continue
        dims = [_dim_text(d, program) for d in val.shape]
        ranges = sorted({r for _, r in dims if r})
        text = "x".join(d for d, _ in dims) or "scalar"
        lines.append(f"{node.name}: {text} {str(val.dtype).removeprefix('torch.')}"
                     + (f" ({', '.join(ranges)})" if ranges else ""))
    return lines


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
