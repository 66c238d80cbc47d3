"""fxopt.pruning.prune end to end: heads, GQA, zero-invariance of what it prunes, save/load, robustness."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import fxopt
from fxopt.pruning import prune
from fxopt.testing import check_zero_invariance


def _pruned_groups(analysis: fxopt.Analysis, report) -> list[fxopt.Group]:  # type: ignore[no-untyped-def]
    ids = {d.group for d in report.pruned}
    return [g for g in analysis.groups if g.id in ids]


def test_prune_convnet_pruned_groups_pass_zero_invariance(convnet) -> None:  # type: ignore[no-untyped-def]
    model, x = convnet
    a = fxopt.analyze(model, x)
    small, report = prune(a, ratio=0.5)
    assert report.param_ratio < 0.4 and len(report.pruned) == 2
    checks = check_zero_invariance(a, groups=_pruned_groups(a, report))
    assert len(checks) == 2 and all(c.passed for c in checks)
    assert small.meta["fxopt"]["prune_report"] is report


def test_prune_leaves_input_model_alone_and_shares_no_tensor(convnet) -> None:  # type: ignore[no-untyped-def]
    model, x = convnet
    state = {k: v.clone() for k, v in model.state_dict().items()}
    small, _ = prune(model, x, ratio=0.5, reconstruct="ls", calibration=[torch.randn(4, 3, 8, 8)])
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    mine = {id(t) for t in [*model.parameters(), *model.buffers()]}
    assert not any(id(t) in mine for t in [*small.parameters(), *small.buffers()])


def test_pruned_model_saves_loads_and_trains(convnet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, x = convnet
    small, _ = prune(model, x, ratio=0.5)
    torch.save(small, tmp_path / "small.pt")
    loaded = torch.load(tmp_path / "small.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))
    torch.save(small.state_dict(), tmp_path / "state.pt")
    small.load_state_dict(torch.load(tmp_path / "state.pt"))
    loaded.train()
    loaded(x).sum().backward()
    assert loaded.conv1.weight.grad is not None and model.conv1.weight.grad is None


def test_prune_vit_removes_whole_heads() -> None:
    model = torchvision.models.VisionTransformer(16, 8, 2, 4, 32, 64).eval()
    x = torch.randn(1, 3, 16, 16)
    a = fxopt.analyze(model, x)
    small, report = prune(a, ratio=0.5)
    heads = [d for d in report.pruned if d.granularity == "head"]
    assert len(heads) == 2 and all(d.removed == 2 for d in heads)
    in_proj = small.get_parameter("encoder.layers.encoder_layer_0.self_attention.in_proj_weight")
    assert in_proj.shape == (3 * 2 * 8, 32)  # q, k, v of 2 heads of head_dim 8
    with torch.no_grad():
        assert small(x).shape == (1, 1000)
    assert all(c.passed for c in check_zero_invariance(a, groups=_pruned_groups(a, report)))


def test_prune_head_dim_is_opt_in_and_rounds_to_alignment() -> None:
    model = torchvision.models.VisionTransformer(16, 8, 1, 2, 32, 64).eval()
    x = torch.randn(1, 3, 16, 16)
    _, report = prune(model, x, ratio=0.5)
    assert not [d for d in report.pruned if d.granularity == "head_dim"]
    small, report = prune(model, x, ratio=0.5, granularity=("head_dim",), round_to=4)
    hd = [d for d in report.pruned if d.granularity == "head_dim"]
    assert len(hd) == 1 and hd[0].kept == 8  # head_dim 16 -> 8, a multiple of 4
    with torch.no_grad():
        assert small(x).shape == (1, 1000)


def test_prune_gqa_removes_kv_groups_with_their_query_heads() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, use_cache=False)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (1, 8))
    a = fxopt.analyze(model, ids)
    small, report = prune(a, ratio=0.5)
    attn = "model.layers.0.self_attn"
    assert small.get_parameter(f"{attn}.k_proj.weight").shape == (8, 32)   # 1 KV head of 8
    assert small.get_parameter(f"{attn}.q_proj.weight").shape == (16, 32)  # its 2 query heads follow
    assert small.get_parameter(f"{attn}.o_proj.weight").shape == (32, 16)
    assert all(c.passed for c in check_zero_invariance(a, groups=_pruned_groups(a, report)))


def test_prune_tied_embedding_llama_shrinks_the_hidden_width_and_keeps_the_tie() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, use_cache=False,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (2, 8))
    small, report = prune(model, ids, ratio=0.5, approximate=True)  # hidden width crosses RMSNorm: approximate
    hidden = [d for d in report.pruned if d.size == 32 and d.granularity == "channel"]
    assert len(hidden) == 1 and hidden[0].removed == 16, report.decisions
    tensors = dict(small.named_parameters(remove_duplicate=False))
    assert tensors["lm_head.weight"] is tensors["model.embed_tokens.weight"]  # one tensor under both names
    assert tensors["lm_head.weight"].shape == (64, 16)
    out = small(ids)
    logits = out.logits if hasattr(out, "logits") else out[0] if isinstance(out, (tuple, list)) else out
    assert logits.shape == (2, 8, 64) and torch.isfinite(logits).all()


def test_prune_group_whose_removal_fails_is_reported_and_others_pruned(convnet) -> None:  # type: ignore[no-untyped-def]
    from fxopt.ops.registry import REGISTRY

    model, x = convnet
    a = fxopt.analyze(model, x)

    def broken(view, resizer):  # type: ignore[no-untyped-def]
        if view.node.name == "conv2" and resizer.changed(view.inputs[0].axis(1)):
            resizer.fail(view.node, "deliberately broken rewriter")

    with REGISTRY.scoped():
        REGISTRY.rewriter("conv")(broken)
        _, report = prune(a, ratio=0.5)
    assert [d.group for d in report.failed] == ["conv1.weight/0"]
    assert "deliberately broken" in report.failed[0].reason
    assert report.pruned and report.params_after < report.params_before
    assert "failed" in report.to_text()


def test_prune_custom_function_criterion_picks_units(mlp) -> None:  # type: ignore[no-untyped-def]
    model, x = mlp

    def keep_high_index(ctx, group):  # type: ignore[no-untyped-def]
        return np.arange(group.size, dtype=float)

    small, _ = prune(model, x, ratio=0.5, criterion=keep_high_index)
    np.testing.assert_array_equal(small.fc1.weight.detach().numpy(), model.fc1.weight[16:].detach().numpy())


def test_prune_report_text_lists_totals_and_statuses(convnet) -> None:  # type: ignore[no-untyped-def]
    model, x = convnet
    _, report = prune(model, x, ratio=0.3, round_to=4)
    text = report.to_text()
    assert "round_to 4" in text and "params" in text and "groups: pruned 2" in text
    assert report.macs_after < report.macs_before


def test_prune_data_criterion_without_calibration_raises(mlp) -> None:  # type: ignore[no-untyped-def]
    model, x = mlp
    with pytest.raises(ValueError, match="calibration"):
        prune(model, x, ratio=0.5, criterion="variance")


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale", "taylor", "variance", "activation", "random"])
def test_prune_every_builtin_criterion_runs(convnet, criterion) -> None:  # type: ignore[no-untyped-def]
    model, x = convnet
    cal = [torch.randn(4, 3, 8, 8)]
    small, report = prune(model, x, ratio=0.5, criterion=criterion, calibration=cal)
    assert len(report.pruned) == 2
    with torch.no_grad():
        assert small(x).shape == (2, 10)


def test_prune_layer_collapse_floor_in_uniform_scope() -> None:
    model = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 2)).eval()
    small, _ = prune(model, torch.randn(2, 4), ratio=0.95, floor=0.2)
    assert small.get_parameter("0.weight").shape[0] == 2
