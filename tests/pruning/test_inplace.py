"""In-place pruning keeps the user's class: ``prune(..., inplace=True)`` and ``fxopt.apply_to``."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import fxopt
from fxopt.equivalence import tensors_of
from fxopt.pruning import SIZE_RULES, Inexpressible, Sizes
from fxopt.testing import assert_equivalent

PROMPT, NEW, VOCAB = 8, 8, 128


def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(cfg).eval()


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=VOCAB, n_positions=128, n_embd=64, n_layer=2, n_head=4, bos_token_id=VOCAB - 1,
                     eos_token_id=VOCAB - 1)
    return GPT2LMHeadModel(cfg).eval()


def _greedy_with_graph(gm: nn.Module, prompt: torch.Tensor, length: int) -> torch.Tensor:
    """Greedy decoding without a cache on a graph traced at ``length`` tokens: right-padding a causal model's
    input does not change the logits of the positions before the padding."""
    seq = prompt
    with torch.no_grad():
        while seq.shape[1] < length:
            padded = torch.zeros(1, length, dtype=seq.dtype)
            padded[:, :seq.shape[1]] = seq
            logits = tensors_of(gm(padded))[0]
            seq = torch.cat([seq, logits[:, seq.shape[1] - 1].argmax(-1, keepdim=True)], dim=1)
    return seq


def _both_paths(model: nn.Module, **options: Any) -> tuple[nn.Module, nn.Module, Any, torch.Tensor]:
    ids = torch.randint(0, VOCAB - 1, (1, PROMPT + NEW))
    graph, _ = fxopt.prune(copy.deepcopy(model), (ids,), ratio=0.5, **options)
    same, report = fxopt.prune(model, (ids,), ratio=0.5, inplace=True, **options)
    return graph, same, report, ids


def _generate(model: nn.Module, prompt: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW, do_sample=False,
                              pad_token_id=0)


def test_inplace_llama_gqa_generates_graph_tokens_and_reloads(tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    model = _llama()
    graph, same, report, ids = _both_paths(model)
    assert same is model and report.path == "in place"
    assert (report.params_before, report.params_after) == (90_432, 53_568)
    assert sum(p.numel() for p in model.parameters()) == 53_568
    attn = model.model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.num_key_value_groups) == (32, 16, 2)
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size) == (2, 1, 16, 64)
    assert_equivalent(graph, model, (ids,))
    prompt = ids[:, :PROMPT]
    assert torch.equal(_generate(model, prompt), _greedy_with_graph(graph, prompt, PROMPT + NEW))
    model.save_pretrained(tmp_path)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_key_value_heads == 1
    assert_equivalent(model, reloaded, (ids,))


def test_inplace_llama_hidden_size_pruned_approximately_updates_config_and_reloads(tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    model = _llama()
    graph, same, report, ids = _both_paths(model, approximate=True)
    assert same is model and report.path == "in place"
    assert (model.config.hidden_size, model.model.embed_tokens.embedding_dim, model.lm_head.in_features) == (32, 32, 32)
    assert model.model.layers[1].mlp.hidden_size == 32
    assert_equivalent(graph, model, (ids,))
    model.save_pretrained(tmp_path)
    assert_equivalent(model, LlamaForCausalLM.from_pretrained(tmp_path).eval(), (ids,))


def test_inplace_gpt2_heads_cannot_be_expressed_by_config_falls_back_to_graph() -> None:
    model = _gpt2()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    graph, out, report, ids = _both_paths(model)
    assert isinstance(out, torch.fx.GraphModule)
    assert re.match(r"graph \(GPT2Config cannot express the pruned sizes .*c_attn", report.path)
    assert model.config.n_head == 4 and model.transformer.h[0].attn.split_size == 64
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # left exactly as it was
    assert (report.params_before, report.params_after) == (116_480, 66_880)
    assert_equivalent(graph, out, (ids,))


def test_inplace_gpt2_mlp_generates_graph_tokens_and_reloads(tmp_path: Path) -> None:
    from transformers import GPT2LMHeadModel

    model = _gpt2()
    graph, same, report, ids = _both_paths(model, ignore=("re:.*attn.*",))
    assert same is model and report.path == "in place"
    assert model.config.n_inner == 128 and model.transformer.h[1].mlp.c_fc.nf == 128
    prompt = ids[:, :PROMPT]
    assert torch.equal(_generate(model, prompt), _greedy_with_graph(graph, prompt, PROMPT + NEW))
    model.save_pretrained(tmp_path)
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.n_inner == 128
    assert_equivalent(model, reloaded, (ids,))


def test_inplace_llama_heads_pruned_in_one_layer_only_falls_back_to_graph() -> None:
    model = _llama()
    ids = torch.randint(0, VOCAB, (1, PROMPT))
    out, report = fxopt.prune(model, (ids,), ratio={"model.layers.0": 0.5, "*": 0.0}, inplace=True)
    assert isinstance(out, torch.fx.GraphModule)
    assert report.path.startswith("graph (modules disagree on config.num_attention_heads (2 at "
                                  "model.layers.0.self_attn, 4 at model.layers.1.self_attn)")
    assert model.model.layers[0].self_attn.q_proj.out_features == 64 and model.config.num_attention_heads == 4
    assert f"path: {report.path}" in report.to_text()


def test_inplace_resnet18_equals_graph_path_and_runs_at_another_resolution() -> None:
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    graph, _ = fxopt.prune(copy.deepcopy(model), x, ratio=0.5)
    same, report = fxopt.prune(model, x, ratio=0.5, inplace=True)
    assert same is model and report.path == "in place"
    assert isinstance(model, torchvision.models.ResNet)
    assert model.layer1[0].conv1.out_channels == model.layer1[0].bn1.num_features == 32
    assert_equivalent(graph, model, (x,))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 96, 96)).shape == (2, 10)


class _Reshaping(nn.Module):
    """A width kept in a plain attribute with no size rule: only the graph path rewrites the view."""

    def __init__(self) -> None:
        super().__init__()
        self.width = 8
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)).reshape(-1, self.width))


def test_apply_to_module_attribute_without_rule_is_refused_and_model_restored() -> None:
    model = _Reshaping().eval()
    x = torch.randn(2, 4)
    graph, _ = fxopt.prune(model, x, ratio=0.5)
    assert graph.get_parameter("a.weight").shape == (4, 4)
    with pytest.raises(Inexpressible, match="does not compute what the pruned graph does"):
        fxopt.apply_to(model, graph, x)
    assert model.a.weight.shape == (8, 4) and model.a.out_features == 8 and model.b.in_features == 8


def test_apply_to_module_attribute_with_registered_rule_prunes_in_place() -> None:
    model = _Reshaping().eval()
    x = torch.randn(2, 4)
    graph, _ = fxopt.prune(model, x, ratio=0.5)
    with SIZE_RULES.scoped():
        SIZE_RULES.register(_Reshaping)(lambda m: Sizes({"width": m.a.weight.shape[0]}))
        record = fxopt.apply_to(model, graph, x)
    assert ("", "width", 8, 4) in {(c.owner, c.name, c.before, c.after) for c in record.attributes}
    assert SIZE_RULES.rule_for(model) is None
    assert_equivalent(graph, model, (x,))


def test_inplace_depthwise_conv_keeps_groups_in_step() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 16, 16)
    graph, _ = fxopt.prune(copy.deepcopy(model), x, ratio=0.5)
    same, report = fxopt.prune(model, x, ratio=0.5, inplace=True)
    assert report.path == "in place"
    depthwise = model[3]
    assert (depthwise.in_channels, depthwise.out_channels, depthwise.groups) == (4, 4, 4)
    assert_equivalent(graph, same, (x,))


def test_apply_to_corrupted_size_rule_is_caught_and_model_restored() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8), nn.ReLU(),
                          nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 16, 16)
    graph, _ = fxopt.prune(model, x, ratio=0.5)
    with SIZE_RULES.scoped():
        SIZE_RULES.register(nn.Conv2d)(lambda m: Sizes({"out_channels": m.weight.shape[0], "groups": 1}))
        with pytest.raises(Inexpressible, match="does not compute what the pruned graph does"):
            fxopt.apply_to(model, graph, x)
    assert (model[2].groups, model[2].out_channels, model[2].weight.shape[0]) == (8, 8, 8)
    assert model[0].weight.shape == (8, 3, 3, 3)


def test_apply_to_returns_record_of_changes() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(2, 4)
    graph, _ = fxopt.prune(model, x, ratio=0.5)
    record = fxopt.apply_to(model, graph, x)
    assert record.parameters == ("0.weight", "0.bias", "2.weight")
    assert {(c.owner, c.name, c.before, c.after) for c in record.attributes} == {
        ("0", "out_features", 8, 4), ("2", "in_features", 8, 4)}
    assert record.config == () and record.unruled == ()
    assert_equivalent(graph, model, (x,))


def test_size_rule_multihead_attention_is_inexpressible() -> None:
    mha = nn.MultiheadAttention(8, 2)
    rule = SIZE_RULES.rule_for(mha)
    assert rule is not None
    with pytest.raises(Inexpressible, match="MultiheadAttention"):
        rule(mha)


def test_prune_inplace_needs_the_model_not_an_analysis() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    analysis = fxopt.analyze(model, torch.randn(2, 4))
    with pytest.raises(ValueError, match="not an Analysis"):
        fxopt.prune(analysis, ratio=0.5, inplace=True)


def _doc_code(page: Path, heading: str) -> str:
    """The first python block under ``heading`` in ``page``."""
    section = page.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, f"no python block under {heading!r} in {page.name}"
    return match.group(1)


def test_docs_pruning_language_model_end_to_end_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = Path(__file__).resolve().parents[2] / "docs" / "pruning.md"
    code = _doc_code(page, "Pruning a language model end to end")
    monkeypatch.chdir(tmp_path)  # the example saves its checkpoints in the working directory
    namespace: dict[str, Any] = {}
    exec(compile(code, str(page), "exec"), namespace)
    assert namespace["report"].path == "in place"
    assert namespace["again"].config.num_key_value_heads == 1
    assert (tmp_path / "pruned" / "config.json").exists()
