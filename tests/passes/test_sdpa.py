"""Hand-written attention becomes scaled_dot_product_attention (the ``sdpa`` pass), and where it must not."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import fxopt
from fxopt.passes import PassManager
from fxopt.testing import assert_equivalent

FRONTENDS = ["fx", "export"]
B, H, L, S, E = 2, 3, 5, 6, 8


def qkv(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(B, H, n, E, generator=g).to(dtype) for n in (L, S, S))  # type: ignore[return-value]


def sdpa_calls(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if "scaled_dot_product_attention" in str(n.target)]


def softmaxes(gm: fx.GraphModule) -> int:
    return sum("softmax" in str(n.target) for n in gm.graph.nodes)


class Scaled(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.softmax(q @ k.transpose(-2, -1) * 0.25, dim=-1) @ v


class Divided(nn.Module):
    head_dim = E

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim)
        return torch.matmul(scores.softmax(dim=-1), v)


class QueryScaled(nn.Module):  # timm's Attention with fused_attn off
    def __init__(self) -> None:
        super().__init__()
        self.scale, self.attn_drop = E ** -0.5, nn.Dropout(0.1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = q * self.scale
        return self.attn_drop((q @ k.transpose(-2, -1)).softmax(dim=-1)) @ v


class Masked(nn.Module):  # transformers' eager_attention_forward
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = torch.matmul(q, k.transpose(2, 3)) * E ** -0.5 + mask
        w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        w = F.dropout(w, p=0.0, training=True)
        return torch.matmul(w, v)


class Filled(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
        w = (q @ k.transpose(-2, -1) / 4.0).masked_fill(causal, float("-inf"))
        return w.softmax(-1) @ v


class PreTransposed(nn.Module):  # k^T arrives as it is: the rewrite inserts the transpose
    def forward(self, q: torch.Tensor, kt: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.softmax(q @ kt * 0.3, dim=-1) @ v


class Batched(nn.Module):  # (batch x heads, tokens, head_dim), as nn.MultiheadAttention's weights path
    def __init__(self) -> None:
        super().__init__()
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.bmm(self.softmax(torch.bmm(q, k.transpose(1, 2)) * 0.3), v)


class Einsums(nn.Module):  # torchvision's MaxViT: k scaled, einsum products, a position bias
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("b h i d, b h j d -> b h i j", q, k * 0.3)
        return torch.einsum("bhij,bhjd->bhid", F.softmax(scores + bias, dim=-1), v)


def _flat(*ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t.flatten(0, 1) for t in ts)


def _causal_mask() -> torch.Tensor:
    return torch.ones(L, S, dtype=torch.bool).triu(1)


def _additive_mask() -> torch.Tensor:
    keep = torch.ones(B, 1, L, S, dtype=torch.bool)
    keep[0, :, :, -2:] = False  # padding on the first sequence
    return torch.zeros(B, 1, L, S).masked_fill(~keep, torch.finfo(torch.float32).min)


FORMS = {
    "scale_by_mul": (Scaled, lambda: qkv(), 0.25),
    "scale_by_divide": (Divided, lambda: qkv(), 1 / math.sqrt(E)),
    "scale_on_query_and_eval_dropout": (QueryScaled, lambda: qkv(), E ** -0.5),
    "additive_mask_float32_softmax_and_p0_dropout": (Masked, lambda: (*qkv(), _additive_mask()), E ** -0.5),
    "masked_fill_boolean_mask": (Filled, lambda: (*qkv(), _causal_mask()), 0.25),
    "key_already_transposed": (PreTransposed, lambda: (qkv()[0], qkv()[1].transpose(-2, -1), qkv()[2]), 0.3),
    "three_dim_bmm": (Batched, lambda: _flat(*qkv()), 0.3),
    "einsum_products": (Einsums, lambda: (*qkv(), torch.randn(H, L, S)), 0.3),
}


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("form", sorted(FORMS))
def test_sdpa_hand_written_form_becomes_one_sdpa_call(passes, frontend: str, form: str) -> None:
    cls, make_inputs, scale = FORMS[form]
    model, inputs = cls().eval(), make_inputs()
    gm, result = passes.run("sdpa", model, *inputs, frontend=frontend)
    calls = sdpa_calls(gm)
    assert result.changed and result.metrics["rewritten"] == 1 and not result.skips
    assert len(calls) == 1 and softmaxes(gm) == 0 and "matmul" not in passes.kinds(gm)
    assert calls[0].kwargs["scale"] == pytest.approx(scale)
    assert_equivalent(model, gm, inputs)


def test_sdpa_masked_fill_becomes_a_boolean_keep_mask(passes) -> None:
    gm, _ = passes.run("sdpa", Filled().eval(), *qkv(), _causal_mask())
    mask = sdpa_calls(gm)[0].kwargs["attn_mask"]
    assert mask is not None and mask.target is torch.logical_not


def test_sdpa_additive_masks_are_summed_into_one(passes) -> None:
    class TwoMasks(nn.Module):  # Swin: relative position bias, then the shifted-window mask
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
            return torch.softmax(q @ k.transpose(-2, -1) * 0.3 + bias + mask, dim=-1) @ v

    inputs = (*qkv(), torch.randn(1, H, L, S), _additive_mask())
    model = TwoMasks()
    gm, result = passes.run("sdpa", model, *inputs)
    assert result.metrics["rewritten"] == 1 and sdpa_calls(gm)[0].kwargs["attn_mask"].target.__name__ == "add"
    assert_equivalent(model, gm, inputs)


def test_sdpa_bfloat16_with_float32_softmax_matches_within_bf16_tolerance(passes) -> None:
    inputs = (*qkv(torch.bfloat16), _additive_mask().to(torch.bfloat16))
    gm, result = passes.run("sdpa", Masked(), *inputs, frontend="export")
    assert result.metrics["rewritten"] == 1
    assert_equivalent(Masked(), gm, inputs)


def test_sdpa_wrong_scale_is_caught_by_assert_equivalent(passes) -> None:
    model, inputs = Scaled(), qkv()
    gm, _ = passes.run("sdpa", model, *inputs)
    call = sdpa_calls(gm)[0]
    call.kwargs = {**call.kwargs, "scale": 2 * call.kwargs["scale"]}  # a rewrite that got the scale wrong
    gm.recompile()
    with pytest.raises(AssertionError):
        assert_equivalent(model, gm, inputs)


def test_sdpa_is_idempotent(passes) -> None:
    gm, _ = passes.run("sdpa", Scaled(), *qkv())
    again = PassManager("sdpa", checked=True).run(gm, qkv()).results[-1]
    assert not again.changed and not again.skips


# ---------------------------------------------------------------- left alone, with the reason
class ReturnsWeights(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.softmax(q @ k.transpose(-2, -1) * 0.3, dim=-1)
        return w @ v, w


class OtherDim(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.softmax(q @ k.transpose(-2, -1) * 0.3, dim=-2) @ v


class Learned(nn.Module):  # a learned temperature: the scale is a tensor
    def __init__(self) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.tensor(0.3))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.softmax(q @ k.transpose(-2, -1) * self.temperature, dim=-1) @ v


class SizeScaled(nn.Module):  # traced symbolically, the head size is computed at run time
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v


class WideMask(nn.Module):  # the mask adds a leading dim: the scores broadcast up to it
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.softmax(q @ k.transpose(-2, -1) * 0.3 + mask, dim=-1) @ v


class ZeroFill(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
        return (q @ k.transpose(-2, -1)).masked_fill(causal, 0.0).softmax(-1) @ v


NEGATIVES = {
    "weights_returned": (ReturnsWeights, lambda: qkv(), "also used by"),
    "softmax_over_queries": (OtherDim, lambda: qkv(), "not the last (key) dim"),
    "tensor_scale": (Learned, lambda: qkv(), "a tensor computed by the graph, not a constant"),
    "scale_from_sizes": (SizeScaled, lambda: qkv(), "from sizes?) computed by the graph, not a constant"),
    "mask_broadcasts_the_scores": (WideMask, lambda: (*qkv(), torch.zeros(2, 1, 1, L, S)), "larger shape"),
    "masked_fill_with_zero": (ZeroFill, lambda: (*qkv(), _causal_mask()), "not -inf"),
}


@pytest.mark.parametrize("case", sorted(NEGATIVES))
def test_sdpa_negative_is_left_alone_with_reason(passes, case: str) -> None:
    cls, make_inputs, reason = NEGATIVES[case]
    model, inputs = cls().eval(), make_inputs()
    gm, result = passes.run("sdpa", model, *inputs)
    assert not result.changed and not sdpa_calls(gm) and softmaxes(gm) == 1
    assert len(result.skips) == 1 and reason in result.skips[0].reason and result.skips[0].rule == "sdpa"
    assert_equivalent(model, gm, inputs)


def test_sdpa_dropout_active_in_training_is_left_alone(passes) -> None:
    gm, result = passes.run("sdpa", QueryScaled().train(), *qkv(), checked=False)
    assert not result.changed and not sdpa_calls(gm)
    assert len(result.skips) == 1 and "p=0.1 in training mode" in result.skips[0].reason


def test_sdpa_softmax_not_fed_by_scores_is_not_a_match(passes) -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.Softmax(dim=-1))
    gm, result = passes.run("sdpa", model, torch.randn(2, 8))
    assert not result.changed and not result.skips and passes.kinds(gm) == ["linear", "softmax"]


# ---------------------------------------------------------------- real models
def _hf(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    small = {"vocab_size": 64, "num_hidden_layers": 2, "attn_implementation": "eager"}
    if name == "bert":
        model = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_attention_heads=4,
                                                               intermediate_size=64, **small))
    elif name == "gpt2":
        model = transformers.GPT2Model(transformers.GPT2Config(n_embd=32, n_head=4, n_positions=16, bos_token_id=0,
                                                               eos_token_id=0, **small))
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, **small))
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    if name == "gpt2":  # its second positional argument is the cache, not the mask
        return model.eval(), (ids,)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, -2:] = 0  # the second sequence is padded
    return model.eval(), (ids, mask)


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_sdpa_transformers_eager_attention_becomes_sdpa(passes, name: str) -> None:
    model, inputs = _hf(name)
    gm, result = passes.run("sdpa", model, *inputs, frontend="export")
    assert result.metrics["rewritten"] == 2 and not result.skips
    assert len(sdpa_calls(gm)) == 2 and softmaxes(gm) == 0
    assert_equivalent(model, gm, inputs)


def test_sdpa_timm_vit_hand_written_attention_becomes_sdpa(passes) -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=4).eval()
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False  # timm's eager path: q * scale @ k^T, softmax, attn_drop, @ v
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    gm, result = passes.run("sdpa", model, x, frontend="export")
    assert result.metrics["rewritten"] == 2 and len(sdpa_calls(gm)) == 2
    assert_equivalent(model, gm, (x,))


# ---------------------------------------------------------------- Q/K/V projections
@pytest.mark.parametrize(("name", "groups"), [("bert", 2), ("llama", 4)])
def test_fuse_siblings_merges_qkv_of_eager_transformers_attention(passes, name: str, groups: int) -> None:
    """Q, K and V read one hidden state: ``fuse_siblings`` makes them one linear (LLaMA: also gate and up)."""
    model, inputs = _hf(name)
    gm = passes.trace(model, *inputs, frontend="export")
    linears = passes.kinds(gm).count("linear")
    run = PassManager("sdpa,fuse_siblings", checked=True).run(gm, inputs)
    fused = run.results[-1]
    assert fused.metrics["groups"] == groups
    assert fused.metrics["fused_linears"] == (6 if name == "bert" else 10)
    assert passes.kinds(gm).count("linear") == linears - fused.metrics["fused_linears"] + groups
    assert len(sdpa_calls(gm)) == 2
    assert_equivalent(model, gm, inputs)


def test_sdpa_in_the_gpu_pipeline_keeps_outputs(passes) -> None:
    model, inputs = _hf("llama")
    fast = fxopt.optimize(copy.deepcopy(model), inputs, target="h100", compile=False)
    assert "sdpa" in fxopt.report(fast).pipeline.split(",")
    assert fxopt.report(fast).result("sdpa").metrics["rewritten"] == 2
    assert_equivalent(model, fast, inputs)
