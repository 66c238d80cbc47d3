"""Resolve a model name from the command line: a zoo entry or a user's ``package.module:factory``.

``torchvision:resnet50``, ``timm:convnext_tiny``, ``hf:gpt2`` name entries of ``fxopt.testing.zoo`` (random
weights), built for their natural input: 224x224 for ImageNet models (299x299 for Inception v3, the size timm's
config names for timm models), 16 tokens for the small transformers configs. Anything else of the form
``module:factory`` (or ``path/to/file.py:factory``) imports the module and calls ``factory()``, which returns
either a module or ``(module, example_inputs)``; a bare module needs input shapes (``1x3x224x224``,
``1x16:int64``).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fxopt.errors import FxoptError

ZOO_PREFIXES = ("torchvision", "timm", "hf")
_DTYPES = {"float32": torch.float32, "float": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "int64": torch.int64, "long": torch.int64, "int": torch.int64, "int32": torch.int32, "bool": torch.bool}


class ModelSpecError(FxoptError, ValueError):
    """A model name that names no zoo entry and no importable factory, or a factory that returned no model."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to trace: its display name, the module (eval mode) and positional example inputs."""

    name: str
    model: nn.Module
    inputs: tuple[Any, ...]


def parse_shape(text: str) -> torch.Tensor:
    """An example input from ``"1x3x224x224"`` (float, random normal) or ``"1x16:int64"`` (random integers < 2).

    Raises:
        ModelSpecError: for text that is not ``DxDx...[:dtype]``.
    """
    dims, _, dtype_name = text.partition(":")
    if not re.fullmatch(r"\d+(x\d+)*", dims.strip().lower()):
        raise ModelSpecError(f"bad input shape {text!r}: use sizes joined by 'x', e.g. 1x3x224x224 or 1x16:int64")
    dtype = _DTYPES.get(dtype_name.strip().lower() or "float32")
    if dtype is None:
        raise ModelSpecError(f"unknown dtype {dtype_name!r} in {text!r}: use one of {', '.join(sorted(_DTYPES))}")
    shape = tuple(int(d) for d in dims.lower().split("x"))
    generator = torch.Generator().manual_seed(0)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(dtype)
    return torch.randint(0, 2, shape, generator=generator).to(dtype)


def _zoo(spec: str) -> ResolvedModel | None:
    from fxopt.testing.zoo import get_entry

    try:
        entry = get_entry(spec)
    except KeyError as exc:
        if spec.split(":", 1)[0] in ZOO_PREFIXES:
            close = str(exc.args[0] if exc.args else "").partition("; ")[2]
            raise ModelSpecError(f"unknown model {spec!r}" + (f"; {close}" if close else "")
                                 + "; `fxopt list` shows the built-in models") from None
        return None
    model, inputs = entry.natural() if entry.natural is not None else (entry.build(), entry.inputs())
    return ResolvedModel(spec, model.eval(), tuple(inputs))


def _load_file(path: Path) -> Any:
    name = f"_fxopt_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelSpecError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _import(module_part: str) -> Any:
    """Import ``module_part``: a file path, an installed module, or a module file under the current directory."""
    if module_part.endswith(".py"):
        if not Path(module_part).is_file():
            raise ModelSpecError(f"no such file {module_part!r}")
        return _load_file(Path(module_part))
    try:
        return importlib.import_module(module_part)
    except ModuleNotFoundError as exc:
        if exc.name is not None and not module_part.startswith(exc.name):
            raise  # the module exists but one of its own imports is missing: report that, not a bad name
        local = Path.cwd().joinpath(*module_part.split("."))
        for candidate in (local.with_suffix(".py"), local / "__init__.py"):
            if candidate.is_file():
                return _load_file(candidate)
        raise ModelSpecError(f"unknown model: cannot import module {module_part!r} ({exc}); use a built-in name "
                             "such as torchvision:resnet50 (`fxopt list`) or package.module:factory") from exc


def _factory(spec: str) -> ResolvedModel:
    module_part, _, attr = spec.rpartition(":")
    module = _import(module_part)
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ModelSpecError(f"unknown model {spec!r}: {module_part} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ModelSpecError(f"{spec!r} is not callable: point at a function returning a model")
    made = target()
    inputs: tuple[Any, ...] = ()
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
        made, raw = made
        inputs = tuple(raw) if isinstance(raw, (tuple, list)) else (raw,)
    if not isinstance(made, nn.Module):
        raise ModelSpecError(f"{spec}() returned {type(made).__name__}, not an nn.Module "
                             "(or a (module, example_inputs) pair)")
    return ResolvedModel(spec, made.eval(), inputs)


def resolve(spec: str, shapes: list[str] | None = None) -> ResolvedModel:
    """The model named ``spec`` with example inputs.

    Args:
        spec: a zoo name (``torchvision:resnet50``) or ``package.module:factory`` / ``file.py:factory``.
        shapes: input shapes (``parse_shape``) overriding the zoo's or the factory's example inputs.

    Returns:
        A ResolvedModel in eval mode.

    Raises:
        ModelSpecError: unknown names, failed imports, factories without inputs; the message says what to do.

    Example:
        >>> resolve("torchvision:resnet18").inputs[0].shape
        torch.Size([1, 3, 224, 224])
    """
    if ":" not in spec:
        raise ModelSpecError(f"unknown model {spec!r}: use a built-in name such as torchvision:resnet50, "
                             "timm:convnext_tiny or hf:gpt2 (`fxopt list` shows them all), or package.module:factory")
    found = _zoo(spec) or _factory(spec)
    inputs = tuple(parse_shape(s) for s in shapes) if shapes else found.inputs
    if not inputs:
        raise ModelSpecError(f"{spec} gives no example inputs: return (model, example_inputs) from the factory "
                             "or pass --input 1x3x224x224")
    return ResolvedModel(found.name, found.model, inputs)


def describe_inputs(inputs: tuple[Any, ...]) -> str:
    """Example inputs as text, in the form ``--input`` takes: ``1x3x224x224`` or ``1x16:int64``, comma-separated."""
    parts = []
    for x in inputs:
        if isinstance(x, torch.Tensor):
            dtype = str(x.dtype).removeprefix("torch.")
            parts.append("x".join(map(str, x.shape)) + ("" if dtype == "float32" else f":{dtype}"))
        else:
            parts.append(type(x).__name__)
    return ", ".join(parts)


def zoo_names() -> list[str]:
    """Every built-in model name, in the zoo's order."""
    from fxopt.testing.zoo import zoo_entries

    return [e.name for e in zoo_entries()]
