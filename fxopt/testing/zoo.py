"""Registry of the project's model zoo.

The zoo holds 121 models drawn from three families:

* ``torchvision``: every classification model of ``torchvision.models`` (80).
* ``timm``: 30 architectures built with ``timm.create_model(name, pretrained=False)``.
* ``transformers``: 11 tiny Hugging Face models built from small configs
  (hidden size 128, 2 layers, 4 heads, vocab 1000), wrapped so that ``forward``
  takes positional tensors and returns a tensor or a tuple of tensors.

All models use random weights (``torch.manual_seed(0)`` before building) and are
returned in ``eval()`` mode. Nothing is ever downloaded.

Example:
    >>> entry = get_entry("torchvision:resnet18")
    >>> model, inputs = entry.build(), entry.inputs()
    >>> with torch.no_grad():
    ...     out = model(*inputs)
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["ZooEntry", "get_entry", "zoo_entries"]

_SEED = 0
_DEFAULT_IMAGE_SIZE = 64
_SEQ_LEN = 16
_VOCAB = 1000


@dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo.

    Attributes:
        name: Unique name, ``"<prefix>:<model>"``, e.g. ``"torchvision:resnet50"``,
            ``"timm:convnext_tiny"`` or ``"hf:llama_gqa"``.
        family: ``"torchvision"``, ``"timm"`` or ``"transformers"``.
        build: Builds the model in ``eval()`` mode with random weights, seeded
            with ``torch.manual_seed(0)``.
        inputs: Returns deterministic example inputs, to be passed positionally.
        heavy: True when the model has more than ~60M parameters or its forward
            pass at the chosen input takes more than ~1.5 s on a 2-core CPU.
        fast_slice: True for the small representative slice run in CI.
        natural: Builds the model for the input it was designed for (224x224 for most ImageNet models, 299x299
            for Inception v3) and returns it with that input; None when ``inputs`` already is that input. The
            test inputs are smaller to keep the suite fast; the command line uses the natural ones.
    """

    name: str
    family: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], tuple[torch.Tensor, ...]]
    heavy: bool
    fast_slice: bool
    natural: Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]] | None = None


# --------------------------------------------------------------------------- #
# Shared helpers
# --------------------------------------------------------------------------- #


def _seeded_build(factory: Callable[[], nn.Module]) -> nn.Module:
    """Runs ``factory`` under ``torch.manual_seed(0)`` without leaking RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model = factory()
    return model.eval()


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(_SEED)


def _image_inputs(size: int) -> tuple[torch.Tensor, ...]:
    """A seeded ``1x3xSxS`` float image batch."""
    return (torch.randn(1, 3, size, size, generator=_generator()),)


def _token_inputs(count: int = 1) -> tuple[torch.Tensor, ...]:
    """``count`` seeded ``(1, 16)`` int64 token-id tensors with values < vocab."""
    gen = _generator()
    return tuple(torch.randint(0, _VOCAB, (1, _SEQ_LEN), generator=gen) for _ in range(count))


def _clip_inputs(image_size: int) -> tuple[torch.Tensor, ...]:
    """Seeded ``(input_ids, pixel_values)`` for CLIP."""
    gen = _generator()
    input_ids = torch.randint(0, _VOCAB, (1, _SEQ_LEN), generator=gen)
    pixel_values = torch.randn(1, 3, image_size, image_size, generator=gen)
    return input_ids, pixel_values


# --------------------------------------------------------------------------- #
# torchvision
# --------------------------------------------------------------------------- #

# Smallest accepted input size where 64x64 is rejected (found by running forward).
_TV_IMAGE_SIZES: dict[str, int] = {
    "inception_v3": 75,  # smaller inputs collapse below a 3x3 kernel
    "maxvit_t": 224,  # partition size 7 needs 224 = 32 * 7
    "vit_h_14": 56,  # built with image_size=56 (patch 14 must divide it)
}

# Measured: > 60M parameters (no torchvision forward at these sizes exceeds 1 s).
_TV_HEAVY = frozenset(
    {
        "alexnet", "convnext_base", "convnext_large", "efficientnet_b7", "efficientnet_v2_l",
        "regnet_x_32gf", "regnet_y_16gf", "regnet_y_32gf", "regnet_y_128gf", "resnet152",
        "resnext101_32x8d", "resnext101_64x4d", "swin_b", "swin_v2_b",
        "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
        "vit_b_16", "vit_b_32", "vit_h_14", "vit_l_16", "vit_l_32",
        "wide_resnet50_2", "wide_resnet101_2",
    }
)  # fmt: skip

_TV_FAST = frozenset({"resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "swin_t"})


def _tv_image_size(name: str) -> int:
    return _TV_IMAGE_SIZES.get(name, _DEFAULT_IMAGE_SIZE)


_TV_NATURAL_SIZES: dict[str, int] = {"inception_v3": 299}
"""The input sizes torchvision's weights were trained at, where not 224."""


def _tv_natural(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    size = _TV_NATURAL_SIZES.get(name, 224)
    return _build_torchvision(name, size), _image_inputs(size)


def _build_torchvision(name: str, image_size: int | None = None) -> nn.Module:
    import torchvision.models as tvm

    kwargs: dict[str, Any] = {}
    if name.startswith("vit_"):
        kwargs["image_size"] = image_size or _tv_image_size(name)
    if name in ("googlenet", "inception_v3"):
        kwargs["init_weights"] = True  # silences the "default init will change" warning
    return _seeded_build(lambda: tvm.get_model(name, weights=None, **kwargs))


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _torchvision_entries() -> list[ZooEntry]:
    return [
        ZooEntry(
            name=f"torchvision:{name}",
            family="torchvision",
            build=functools.partial(_build_torchvision, name),
            inputs=functools.partial(_image_inputs, _tv_image_size(name)),
            heavy=name in _TV_HEAVY,
            fast_slice=name in _TV_FAST,
            natural=functools.partial(_tv_natural, name),
        )
        for name in _torchvision_names()
    ]


# --------------------------------------------------------------------------- #
# timm
# --------------------------------------------------------------------------- #

# Model name -> input size. 64 unless the model rejects it; fixed-size models
# (absolute position embeddings, attention biases, windows) use their native size.
_TIMM_MODELS: dict[str, int] = {
    "resnet50": 64,
    "resnet18d": 64,
    "convnext_tiny": 64,
    "efficientnet_b0": 64,
    "mobilenetv3_large_100": 64,
    "regnety_016": 64,
    "densenet121": 64,
    "inception_v3": 75,
    "vit_small_patch16_224": 224,
    "deit_tiny_patch16_224": 224,
    "swin_tiny_patch4_window7_224": 224,
    "mixer_b16_224": 224,
    "poolformer_s12": 64,
    "ghostnet_100": 64,
    "repvgg_a0": 64,
    "levit_128": 224,
    "convmixer_768_32": 64,
    "efficientformer_l1": 224,
    "mobilevit_s": 64,
    "coatnet_0_rw_224": 224,
    "maxvit_tiny_rw_224": 224,
    "inception_next_tiny": 64,
    "resnest14d": 64,
    "dla34": 64,
    "hrnet_w18_small": 64,
    "res2net50_14w_8s": 64,
    "cspdarknet53": 64,
    "dpn68": 64,
    "nfnet_l0": 64,
    "xcit_tiny_12_p16_224": 64,
}

_TIMM_HEAVY: frozenset[str] = frozenset()  # measured: all < 60M params, forward < 0.4 s
_TIMM_FAST = frozenset({"densenet121", "deit_tiny_patch16_224", "ghostnet_100"})


def _build_timm(name: str) -> nn.Module:
    import timm

    return _seeded_build(lambda: timm.create_model(name, pretrained=False))


def _timm_natural(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    import timm

    cfg = timm.get_pretrained_cfg(name)
    if cfg is None:
        raise ValueError(f"timm has no pretrained config for {name!r}, so no natural input size; use a zoo "
                         f"entry with explicit inputs")
    size = int(cfg.input_size[-1])
    return _build_timm(name), _image_inputs(size)


def _timm_entries() -> list[ZooEntry]:
    return [
        ZooEntry(
            name=f"timm:{name}",
            family="timm",
            build=functools.partial(_build_timm, name),
            inputs=functools.partial(_image_inputs, size),
            heavy=name in _TIMM_HEAVY,
            fast_slice=name in _TIMM_FAST,
            natural=functools.partial(_timm_natural, name),
        )
        for name, size in _TIMM_MODELS.items()
    ]


# --------------------------------------------------------------------------- #
# transformers
# --------------------------------------------------------------------------- #

_HF_IMAGE_SIZE = 32
_HF_PATCH = 8
_TEXT_DIMS: dict[str, Any] = {
    "vocab_size": _VOCAB,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 128,
}
_VISION_DIMS: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": _HF_IMAGE_SIZE,
    "patch_size": _HF_PATCH,
}


def _select(output: Any, fields: tuple[str, ...]) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Picks ``fields`` from a ``ModelOutput``; a single field is returned bare."""
    values = tuple(getattr(output, field) for field in fields)
    return values[0] if len(values) == 1 else values


class _HFWrapper(nn.Module):
    """Base of the wrappers that give a Hugging Face model a tensor-only interface.

    Args:
        model: The Hugging Face model.
        fields: Names of the ``ModelOutput`` fields to return, in order.
    """

    def __init__(self, model: nn.Module, fields: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.fields = fields


class HFTokenWrapper(_HFWrapper):
    """Wraps a text model: ``forward(input_ids)`` returns the selected output tensors."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Runs the model on token ids and returns the selected outputs."""
        return _select(self.model(input_ids=input_ids), self.fields)


class HFSeq2SeqWrapper(_HFWrapper):
    """Wraps an encoder-decoder: ``forward(input_ids, decoder_input_ids)``."""

    def forward(
        self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Runs encoder and decoder and returns the selected outputs."""
        out = self.model(input_ids=input_ids, decoder_input_ids=decoder_input_ids)
        return _select(out, self.fields)


class HFPixelWrapper(_HFWrapper):
    """Wraps a vision model: ``forward(pixel_values)``."""

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Runs the model on images and returns the selected outputs."""
        return _select(self.model(pixel_values=pixel_values), self.fields)


class HFTextImageWrapper(_HFWrapper):
    """Wraps a CLIP-style model: ``forward(input_ids, pixel_values)``."""

    def forward(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Runs the model on text and images and returns the selected outputs."""
        return _select(self.model(input_ids=input_ids, pixel_values=pixel_values), self.fields)


def _causal_lm(arch: str, **overrides: Any) -> nn.Module:
    """Builds ``{arch}ForCausalLM`` (Llama, Qwen2, Mistral) with tiny dims."""
    import transformers

    config_cls = getattr(transformers, f"{arch}Config")
    model_cls = getattr(transformers, f"{arch}ForCausalLM")
    dims = {**_TEXT_DIMS, "num_key_value_heads": 2, **overrides}
    return HFTokenWrapper(_hf_model(config_cls, model_cls, **dims, use_cache=False), ("logits",))


def _hf_model(config_cls: Callable[..., Any], model_cls: Callable[[Any], nn.Module], **config: Any) -> nn.Module:
    """``model_cls(config_cls(**config))`` with SDPA attention: the config classes take these keys through
    ``**kwargs`` (their signatures do not list them), so they are passed as one mapping."""
    return model_cls(config_cls(**config, attn_implementation="sdpa"))


def _hf_bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    return HFTokenWrapper(_hf_model(BertConfig, BertModel, **_TEXT_DIMS), ("last_hidden_state", "pooler_output"))


def _hf_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = _hf_model(
        GPT2Config, GPT2LMHeadModel,
        vocab_size=_VOCAB, n_embd=128, n_layer=2, n_head=4, n_inner=256, n_positions=128,
        bos_token_id=_VOCAB - 1, eos_token_id=_VOCAB - 1, use_cache=False,
    )  # fmt: skip
    return HFTokenWrapper(model, ("logits",))


def _hf_t5() -> nn.Module:
    from transformers import T5Config, T5Model

    model = _hf_model(
        T5Config, T5Model,
        vocab_size=_VOCAB, d_model=128, d_kv=32, d_ff=256, num_layers=2, num_decoder_layers=2,
        num_heads=4, decoder_start_token_id=0, use_cache=False,
    )  # fmt: skip
    return HFSeq2SeqWrapper(model, ("last_hidden_state", "encoder_last_hidden_state"))


def _hf_opt() -> nn.Module:
    from transformers import OPTConfig, OPTForCausalLM

    model = _hf_model(
        OPTConfig, OPTForCausalLM,
        vocab_size=_VOCAB, hidden_size=128, word_embed_proj_dim=128, ffn_dim=256,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128, use_cache=False,
    )  # fmt: skip
    return HFTokenWrapper(model, ("logits",))


def _hf_vit() -> nn.Module:
    from transformers import ViTConfig, ViTModel

    return HFPixelWrapper(_hf_model(ViTConfig, ViTModel, **_VISION_DIMS), ("last_hidden_state", "pooler_output"))


def _clip_text_config() -> dict[str, Any]:
    # Special tokens must lie inside the tiny vocab; eos != 2 selects the modern
    # "first eos token" pooling path rather than the legacy argmax one.
    special = {"bos_token_id": _VOCAB - 2, "eos_token_id": _VOCAB - 1}
    return {**_TEXT_DIMS, "projection_dim": 64, **special}


def _hf_clip() -> nn.Module:
    from transformers import CLIPConfig, CLIPModel

    model = _hf_model(CLIPConfig, CLIPModel, text_config=_clip_text_config(),
                      vision_config={**_VISION_DIMS, "projection_dim": 64}, projection_dim=64)
    fields = ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds")
    return HFTextImageWrapper(model, fields)


def _hf_clip_vision() -> nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    model = _hf_model(CLIPVisionConfig, CLIPVisionModel, **_VISION_DIMS)
    return HFPixelWrapper(model, ("last_hidden_state", "pooler_output"))


_Factory = Callable[[], nn.Module]
_Inputs = Callable[[], tuple[torch.Tensor, ...]]
_llama = functools.partial(_causal_lm, "Llama")
_tokens2 = functools.partial(_token_inputs, 2)
_pixels = functools.partial(_image_inputs, _HF_IMAGE_SIZE)

# alias -> (factory, inputs, fast_slice)
_HF_MODELS: dict[str, tuple[_Factory, _Inputs, bool]] = {
    "bert": (_hf_bert, _token_inputs, True),
    "gpt2": (_hf_gpt2, _token_inputs, True),
    "llama_gqa": (functools.partial(_llama, num_key_value_heads=2), _token_inputs, True),
    "llama_mha": (functools.partial(_llama, num_key_value_heads=4), _token_inputs, False),
    "qwen2": (functools.partial(_causal_lm, "Qwen2"), _token_inputs, False),
    "mistral": (functools.partial(_causal_lm, "Mistral"), _token_inputs, False),
    "t5": (_hf_t5, _tokens2, True),
    "opt": (_hf_opt, _token_inputs, False),
    "vit": (_hf_vit, _pixels, False),
    "clip": (_hf_clip, functools.partial(_clip_inputs, _HF_IMAGE_SIZE), False),
    "clip_vision": (_hf_clip_vision, _pixels, False),
}


def _hf_entries() -> list[ZooEntry]:
    return [
        ZooEntry(
            name=f"hf:{alias}",
            family="transformers",
            build=functools.partial(_seeded_build, factory),
            inputs=inputs,
            heavy=False,  # measured: < 1M params, forward < 20 ms
            fast_slice=fast,
        )
        for alias, (factory, inputs, fast) in _HF_MODELS.items()
    ]


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #


@functools.cache
def _registry() -> dict[str, ZooEntry]:
    entries = _torchvision_entries() + _timm_entries() + _hf_entries()
    registry = {entry.name: entry for entry in entries}
    if len(registry) != len(entries):
        raise RuntimeError("duplicate model names in the zoo")
    return registry


def zoo_entries() -> list[ZooEntry]:
    """Lists every model of the zoo.

    Returns:
        All 121 entries in a stable order: torchvision (sorted by name), then
        timm, then transformers.
    """
    return list(_registry().values())


def get_entry(name: str) -> ZooEntry:
    """Looks up one zoo entry by its full name.

    Args:
        name: Full entry name, e.g. ``"torchvision:resnet50"`` or ``"hf:llama_gqa"``.

    Returns:
        The matching entry.

    Raises:
        KeyError: If ``name`` is unknown; the message lists close names.
    """
    registry = _registry()
    if name in registry:
        return registry[name]
    close = difflib.get_close_matches(name, registry, n=5, cutoff=0.5)
    suffix = name.split(":")[-1]
    close += [known for known in registry if known.split(":")[-1] == suffix and known not in close]
    hint = f"; close names: {', '.join(close)}" if close else ""
    raise KeyError(f"unknown zoo entry {name!r}{hint}")
