"""The usage examples in fxopt.structured's docstrings run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch

import fxopt.structured as structured

MODULES = ["fxopt.structured", *(f"fxopt.structured.{name}" for name in
                                 ("calibration", "lowrank", "blockdiag", "monarch", "btt", "blast", "fit", "conv",
                                  "speed", "choose", "bounds"))]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    names = {key: getattr(structured, key) for key in structured.__all__}
    result = doctest.testmod(importlib.import_module(name), extraglobs={"torch": torch, "nn": torch.nn, **names},
                             optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
