"""Size attributes of a user's modules, re-derived from their pruned parameters.

After in-place pruning gives a module smaller parameters, the module's own size attributes (``out_features``,
``num_heads``, ``head_dim`` ...) must say the same, since its ``forward`` reads them. A size rule, registered on
the module's class, reads the new parameter shapes (and the attributes the module still has from before) and
returns the attributes to set, plus the values that a transformers ``config`` field would have to hold for this
module (``num_attention_heads``, ``intermediate_size`` ...). Rules are looked up along the class's MRO, so a
subclass of ``nn.Linear`` uses the Linear rule.

Users register rules for their own classes:

Example:
    >>> @SIZE_RULES.register(MyAttention)
    ... def _my_attention(m):
    ...     return Sizes({"n_heads": m.qkv.out_features // (3 * m.head_dim)})
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from fxopt.errors import PruneError
from fxopt.registry import Registry


@dataclass(frozen=True)
class Sizes:
    """What a size rule derives for one module.

    Attributes:
        attributes: attribute name -> new value, set on the module.
        config: transformers config field -> the value this module needs there (checked across all modules).
    """

    attributes: Mapping[str, Any]
    config: Mapping[str, int] = field(default_factory=dict)


class Inexpressible(PruneError):
    """The module's class cannot hold the pruned sizes in place (the graph path still can)."""


SizeRule = Callable[[nn.Module], Sizes]


class SizeRules:
    """Size rules by module class, found along the class's MRO; ``scoped()`` keeps a test's rules private."""

    def __init__(self) -> None:
        self.table: Registry[SizeRule] = Registry("size rule", PruneError)

    def register(self, *classes: type) -> Callable[[SizeRule], SizeRule]:
        """Decorator: ``fn(module) -> Sizes`` is the rule for ``classes`` and their subclasses."""

        return self.table.decorator(*classes)

    def rule_for(self, module: nn.Module) -> SizeRule | None:
        """The rule of the nearest registered class in ``type(module).__mro__``, or None."""
        if type(module).__module__.startswith("transformers."):
            _register_transformers(self)
        return next((self.table[c] for c in type(module).__mro__ if c in self.table), None)

    @contextlib.contextmanager
    def scoped(self) -> Iterator[SizeRules]:
        """Context in which registrations are private; the rules are restored at exit."""
        with self.table.scoped():
            yield self


SIZE_RULES = SizeRules()
"""The rules in use; ``SIZE_RULES.register(cls)`` adds one."""


@SIZE_RULES.register(nn.Linear)
def _linear(m: Any) -> Sizes:
    out_features, in_features = m.weight.shape
    return Sizes({"out_features": out_features, "in_features": in_features})


@SIZE_RULES.register(nn.Bilinear)
def _bilinear(m: Any) -> Sizes:
    out_features, in1, in2 = m.weight.shape
    return Sizes({"out_features": out_features, "in1_features": in1, "in2_features": in2})


@SIZE_RULES.register(nn.modules.conv._ConvNd)
def _conv(m: Any) -> Sizes:
    # weight: (out, in / groups, *k), transposed (in, out / groups, *k); a group keeps its width when pruned
    w = m.weight.shape
    per_group = (m.in_channels if m.transposed else m.out_channels) // m.groups
    groups = m.groups if m.groups == 1 else w[0] // per_group
    out, cin = (w[1] * groups, w[0]) if m.transposed else (w[0], w[1] * groups)
    return Sizes({"out_channels": out, "in_channels": cin, "groups": groups})


@SIZE_RULES.register(nn.modules.batchnorm._NormBase)
def _batch_norm(m: Any) -> Sizes:
    t = m.weight if m.weight is not None else m.running_mean
    return Sizes({"num_features": t.shape[0]})


@SIZE_RULES.register(nn.LayerNorm, nn.RMSNorm)
def _layer_norm(m: Any) -> Sizes:
    if m.weight is None:
        return Sizes({})
    return Sizes({"normalized_shape": tuple(m.weight.shape)})


@SIZE_RULES.register(nn.GroupNorm)
def _group_norm(m: Any) -> Sizes:
    per_group = m.num_channels // m.num_groups
    channels = m.weight.shape[0]
    return Sizes({"num_channels": channels, "num_groups": channels // per_group})


@SIZE_RULES.register(nn.Embedding, nn.EmbeddingBag)
def _embedding(m: Any) -> Sizes:
    num, dim = m.weight.shape
    return Sizes({"num_embeddings": num, "embedding_dim": dim})


@SIZE_RULES.register(nn.PReLU)
def _prelu(m: Any) -> Sizes:
    return Sizes({"num_parameters": m.weight.numel()})


@SIZE_RULES.register(nn.MultiheadAttention)
def _multihead_attention(m: Any) -> Sizes:
    raise Inexpressible("nn.MultiheadAttention keeps one embed_dim for queries, keys, values and output and "
                        "checks it in forward; pruned heads or channels need the graph path")


def _qkv_attention(m: Any) -> Sizes:
    """Attention with separate q/k/v projections and ``head_dim`` (LLaMA, Mistral, Qwen2 ...)."""
    heads = m.q_proj.weight.shape[0] // m.head_dim
    kv_heads = m.k_proj.weight.shape[0] // m.head_dim
    if heads * m.head_dim != m.q_proj.weight.shape[0] or heads % kv_heads:
        raise Inexpressible(f"{type(m).__name__}: q_proj has {m.q_proj.weight.shape[0]} outputs and k_proj "
                            f"{m.k_proj.weight.shape[0]}, not whole heads of {m.head_dim} in groups")
    attributes: dict[str, Any] = {"num_key_value_groups": heads // kv_heads}
    for name, value in (("num_heads", heads), ("num_key_value_heads", kv_heads)):
        if hasattr(m, name):
            attributes[name] = value
    config = {"num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": m.head_dim,
              "hidden_size": m.q_proj.weight.shape[1]}
    return Sizes(attributes, config)


def _gated_mlp(m: Any) -> Sizes:
    """A gate/up/down MLP with ``intermediate_size`` and ``hidden_size`` attributes."""
    inter, hidden = m.gate_proj.weight.shape
    return Sizes({"intermediate_size": inter, "hidden_size": hidden},
                 {"intermediate_size": inter, "hidden_size": hidden})


def _gpt2_attention(m: Any) -> Sizes:
    """GPT-2's fused ``c_attn`` (a Conv1D with q, k and v side by side) split by ``split_size``."""
    if getattr(m, "is_cross_attention", False):
        raise Inexpressible("GPT2Attention as cross-attention splits q_attn and c_attn differently")
    split = m.c_attn.weight.shape[1] // 3
    return Sizes({"split_size": split, "num_heads": split // m.head_dim},
                 {"n_head": split // m.head_dim, "n_embd": m.c_attn.weight.shape[0]})


def _gpt2_mlp(m: Any) -> Sizes:
    return Sizes({}, {"n_inner": m.c_fc.weight.shape[1], "n_embd": m.c_fc.weight.shape[0]})


def _conv1d(m: Any) -> Sizes:
    """transformers' ``Conv1D``: a Linear with the weight stored (in, out)."""
    nx, nf = m.weight.shape
    return Sizes({"nx": nx, "nf": nf})


def _register_transformers(rules: SizeRules) -> None:
    """Register the rules of the transformers classes fxopt knows (once; only when transformers is in use)."""
    llama = sys.modules.get("transformers.models.llama.modeling_llama")
    gpt2 = sys.modules.get("transformers.models.gpt2.modeling_gpt2")
    utils = sys.modules.get("transformers.pytorch_utils")
    pairs: list[tuple[Any, SizeRule]] = []
    if llama is not None:
        pairs += [(llama.LlamaAttention, _qkv_attention), (llama.LlamaMLP, _gated_mlp)]
    if gpt2 is not None:
        pairs += [(gpt2.GPT2Attention, _gpt2_attention), (gpt2.GPT2MLP, _gpt2_mlp)]
    if utils is not None:
        pairs.append((utils.Conv1D, _conv1d))
    for cls, rule in pairs:
        if cls not in rules.table:
            rules.table.register(cls, rule)


__all__ = ["SIZE_RULES", "Inexpressible", "SizeRule", "SizeRules", "Sizes"]
