"""Every zoo model builds and runs a forward pass on its example inputs.

The fast slice runs by default; the whole zoo runs with ``-m zoo_full``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from fxopt.testing.zoo import ZooEntry, get_entry, zoo_entries

_ALL = zoo_entries()
_FAST = [entry for entry in _ALL if entry.fast_slice]


def _tensors(output: Any) -> Iterator[torch.Tensor]:
    """Yields every tensor inside a (possibly nested) model output."""
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, dict):
        for value in output.values():
            yield from _tensors(value)
    elif isinstance(output, (tuple, list)):
        for value in output:
            yield from _tensors(value)


def _build_and_run(entry: ZooEntry) -> None:
    model = entry.build()
    assert not model.training, f"{entry.name} is not in eval mode"
    inputs = entry.inputs()
    assert inputs and all(isinstance(x, torch.Tensor) for x in inputs)
    with torch.no_grad():
        output = model(*inputs)
    tensors = list(_tensors(output))
    assert tensors, f"{entry.name} returned no tensor: {type(output)}"
    assert any(t.is_floating_point() and torch.isfinite(t).all() for t in tensors), (
        f"{entry.name} returned no finite floating-point tensor"
    )


def test_zoo_has_121_unique_entries() -> None:
    names = [entry.name for entry in _ALL]
    assert len(names) == 121
    assert len(set(names)) == len(names)


def test_zoo_family_counts() -> None:
    counts = {family: 0 for family in ("torchvision", "timm", "transformers")}
    for entry in _ALL:
        counts[entry.family] += 1
    assert counts == {"torchvision": 80, "timm": 30, "transformers": 11}


def test_zoo_order_is_stable() -> None:
    assert [e.name for e in zoo_entries()] == [e.name for e in _ALL]


def test_hf_aliases() -> None:
    aliases = ("bert", "gpt2", "llama_gqa", "llama_mha", "qwen2", "mistral", "t5", "opt",
               "vit", "clip", "clip_vision")  # fmt: skip
    for alias in aliases:
        assert get_entry(f"hf:{alias}").family == "transformers"


def test_fast_slice_is_small_and_covers_every_family() -> None:
    assert {entry.family for entry in _FAST} == {"torchvision", "timm", "transformers"}
    assert not any(entry.heavy for entry in _FAST)
    assert len(_FAST) <= 12
    for name in ("torchvision:shufflenet_v2_x0_5", "hf:bert", "hf:gpt2", "hf:llama_gqa", "hf:t5"):
        assert get_entry(name).fast_slice


def test_get_entry_unknown_name_suggests_close_names() -> None:
    with pytest.raises(KeyError, match="torchvision:resnet50"):
        get_entry("torchvision:resnet5")


def test_inputs_are_deterministic() -> None:
    for entry in _FAST:
        first, second = entry.inputs(), entry.inputs()
        assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.zoo
@pytest.mark.parametrize("name", [entry.name for entry in _FAST])
def test_fast_slice_builds_and_runs(name: str) -> None:
    _build_and_run(get_entry(name))


@pytest.mark.zoo_full
@pytest.mark.parametrize("name", [entry.name for entry in _ALL])
def test_full_zoo_builds_and_runs(name: str) -> None:
    _build_and_run(get_entry(name))
