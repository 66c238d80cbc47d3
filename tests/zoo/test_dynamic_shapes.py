"""Pruned models run at batch sizes, sequence lengths and image sizes other than the traced ones.

Each model is traced at one shape and pruned at ratio 0.5. The pruned module must run at batch 1, 2 and 4 and
sequence 1, 7 and 64 (images: batches, or resolutions for the CNN) with the original's output shapes, and the
numbers are checked with the zero-invariance oracle at those shapes: half the units of every pruned group removed
at once must compute what the traced graph computes with the same slices zeroed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn as nn

import fxopt
from fxopt.equivalence import run
from fxopt.input_dims import captured_dims, size_sets
from fxopt.testing.zero_invariance import check_jointly, run_inputs

TOKEN_SIZES = [{"batch": b, "sequence": s} for b in (1, 2, 4) for s in (1, 7, 64)]
VOCAB = 96


def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=128))


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                      bos_token_id=0, eos_token_id=0, attn_implementation="sdpa"))


def _bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, max_position_embeddings=128, attn_implementation="sdpa"))


def _vit() -> nn.Module:
    from transformers import ViTConfig, ViTModel

    return ViTModel(ViTConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, attn_implementation="sdpa"))


def _check_sizes(build: Callable[[], nn.Module], inputs: tuple[torch.Tensor, ...], sizes: list[dict[str, int]],
                 oracle_sizes: list[dict[str, int]]) -> None:
    torch.manual_seed(0)
    model = build().eval()
    analysis = fxopt.analyze(model, inputs)
    pruned, report = fxopt.prune(analysis, ratio=0.5)
    assert report.pruned and not report.failed, report.to_text()
    dims = captured_dims(analysis.gm, inputs)
    assert {d.kind for d in dims} >= {k for s in sizes for k in s}, analysis.gm.meta["fxopt"]["trace"]
    for size, other in zip(sizes, size_sets(inputs, dims, sizes)):
        expected = [t.shape for t in run(model, other)]
        assert [t.shape for t in run(pruned, other)] == expected, f"at {size}"
    flat = run_inputs(analysis)
    groups = [g for g in analysis.groups if g.exact and g.id in {d.group for d in report.pruned}]
    check = check_jointly(analysis, groups, flat, 0.5, others=size_sets(flat, dims, oracle_sizes))
    assert check.error is None and check.passed, check


def _ids(batch: int = 1, length: int = 8) -> tuple[torch.Tensor, ...]:
    return (torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(0)),)


@pytest.mark.parametrize("build", [_llama, _gpt2], ids=["llama_gqa", "gpt2"])
def test_pruned_causal_lm_runs_at_other_batches_and_lengths(build: Callable[[], nn.Module]) -> None:
    _check_sizes(build, _ids(), TOKEN_SIZES, [{"batch": 2, "sequence": 7}, {"batch": 4, "sequence": 64}])


@pytest.mark.zoo
def test_pruned_bert_runs_at_other_batches_and_lengths() -> None:
    _check_sizes(_bert, _ids(), TOKEN_SIZES, [{"batch": 2, "sequence": 7}, {"batch": 4, "sequence": 1}])


@pytest.mark.zoo
def test_pruned_vit_runs_at_other_batches() -> None:
    sizes = [{"batch": b} for b in (1, 2, 4)]
    _check_sizes(_vit, (torch.randn(1, 3, 32, 32),), sizes, sizes[1:])


def _resolution(inputs: tuple[torch.Tensor, ...], px: int) -> tuple[Any, ...]:
    return (torch.nn.functional.interpolate(inputs[0], size=(px, px), mode="bilinear"),)


@pytest.mark.zoo
def test_pruned_resnet50_runs_at_160_and_288_pixels() -> None:
    import torchvision

    torch.manual_seed(0)
    model, x = torchvision.models.resnet50().eval(), torch.randn(1, 3, 64, 64)
    analysis = fxopt.analyze(model, (x,))
    pruned, report = fxopt.prune(analysis, ratio=0.5)
    info = analysis.gm.meta["fxopt"]["trace"]
    assert {d.kind for d in info.dynamic} == {"batch", "spatial"} and not info.static
    for px in (160, 288):
        assert [t.shape for t in run(pruned, _resolution((x,), px))] == [torch.Size([1, 1000])]
    groups = [g for g in analysis.groups if g.exact and g.id in {d.group for d in report.pruned}]
    check = check_jointly(analysis, groups, [x], 0.5, others=[_resolution((x,), 160)])
    assert check.error is None and check.passed, check
