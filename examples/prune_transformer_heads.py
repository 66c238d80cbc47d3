"""Prune whole attention heads (and MLP hidden units) of a vision transformer and of a GQA language model.

Runs in about a minute on a laptop CPU, with random weights (nothing is downloaded):

    python examples/prune_transformer_heads.py

For the ViT, half of the heads of every layer go (q, k, v rows and the output projection's columns together),
with half of each MLP's hidden units; the embedding width sits under LayerNorms, so it is left alone unless you
pass ``approximate=True``. For the LLaMA-shaped model with grouped-query attention, a unit is a KV head: removing
it removes the query heads that read it. Both pruned models are checked against the zero-invariance oracle:
zeroing the removed slices in the original gives the same outputs as the smaller model.
"""

from __future__ import annotations

import torch
import torchvision
from transformers import LlamaConfig, LlamaForCausalLM

import fxopt
from fxopt.pruning import prune
from fxopt.testing import check_zero_invariance


def heads_of(model: torch.nn.Module, suffix: str, head_dim: int) -> list[int]:
    """Rows of every parameter ending in ``suffix``, in heads."""
    return [p.shape[0] // head_dim for n, p in model.named_parameters() if n.endswith(suffix)]


def vit() -> None:
    """A small torchvision ViT: 4 layers, 8 heads of 32."""
    model = torchvision.models.VisionTransformer(image_size=64, patch_size=16, num_layers=4, num_heads=8,
                                                 hidden_dim=256, mlp_dim=1024).eval()
    x = torch.randn(1, 3, 64, 64)
    analysis = fxopt.analyze(model, x)
    small, report = prune(analysis, ratio=0.5, round_to=8)
    print(report.to_text())
    print("heads per layer (q, k and v rows / 3 / head_dim):",
          [h // 3 for h in heads_of(small, "in_proj_weight", 32)])
    pruned = [g for g in analysis.groups if g.id in {d.group for d in report.pruned}]
    checks = check_zero_invariance(analysis, groups=pruned)
    print(f"zero-invariance: {sum(c.passed for c in checks)}/{len(checks)} pruned groups exact\n")


def llama_gqa() -> None:
    """A LLaMA-shaped model with 8 query heads sharing 4 KV heads."""
    cfg = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=4, head_dim=32, use_cache=False)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 1000, (1, 32))
    analysis = fxopt.analyze(model, ids)
    calibration = [torch.randint(0, 1000, (1, 32)) for _ in range(4)]
    small, report = prune(analysis, ratio=0.5, criterion="variance", calibration=calibration, reconstruct="ls")
    print(report.to_text())
    print("KV heads per layer:", heads_of(small, "k_proj.weight", 32),
          "query heads per layer:", heads_of(small, "q_proj.weight", 32))
    with torch.no_grad():
        print("logits:", tuple(small(ids).logits.shape))


if __name__ == "__main__":
    torch.manual_seed(0)
    vit()
    llama_gqa()
