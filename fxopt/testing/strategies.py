"""Hypothesis strategies for random small networks: conv or linear stacks with residuals, concats and splits.

A network is drawn as a ``NetSpec`` (plain frozen dataclasses, so hypothesis shrinks it and prints it readably)
and built into an ``nn.Module`` plus example inputs by ``build``. Every parameter and norm statistic is filled
from a generator seeded by the spec, so one spec always gives the same model.

Blocks act on one activation of ``width`` channels (dim 1 of ``N x C x H x W`` for conv networks, the last dim of
``N x C`` for linear ones):

* ``Layer``: a conv (1x1, 3x3, grouped, or depthwise 3x3 keeping the width) or a Linear, a norm, an activation.
* ``Residual``: ``x + norm(second(act(first(x))))``: the skip couples the block's input and output channels.
* ``Concat``: two branches concatenated along the channels, optionally with the block's input as a third part.
* ``Split``: one layer widened to the sum of the parts, split (``chunk`` or ``split``) and merged back by adding
  one projection per part.
* ``Glu``: a layer to twice the width, chunked into halves multiplied together (``a * sigmoid(b)``).
* ``Shuffle``: a ShuffleNet channel shuffle (view, transpose, view) with 2 groups when the width is even.

Norms are ``"batch"``, ``"group"`` (GroupNorm with 2 groups when the width is even) and ``"layer"`` (for conv
networks a channels-last LayerNorm behind a permute, as in ConvNeXt). Activations include ``sigmoid``
(``f(0) != 0``); with GroupNorm and LayerNorm it makes some groups approximate. ``exact_only=True`` draws none of
them, so every group of such a network must be exact.

Example:
    >>> from hypothesis import given
    >>> @given(models())
    ... def test_something(model_and_inputs):
    ...     model, inputs = model_and_inputs
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
from hypothesis import strategies as st

Kind = Literal["conv", "linear"]
Norm = Literal["none", "batch", "group", "layer"]
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
    "sigmoid": nn.Sigmoid,  # f(0) = 0.5: the channel becomes a constant, its group approximate
}
APPROXIMATE_NORMS = ("group", "layer")  # statistics over several channels


@dataclass(frozen=True)
class Layer:
    """One conv/linear layer to ``out`` channels.

    ``kernel`` 0 means a depthwise 3x3 conv keeping the width; ``groups`` > 1 makes a conv grouped with
    ``gcd(groups, in, out)`` groups (plain when that is 1).
    """

    out: int
    kernel: int = 1
    groups: int = 1
    norm: Norm = "none"
    act: str = "relu"


@dataclass(frozen=True)
class Residual:
    """``x + norm(second(act(first(x))))`` with ``first`` to ``hidden`` channels and ``second`` back."""

    hidden: int
    act: str = "relu"
    norm: Norm = "none"


@dataclass(frozen=True)
class Concat:
    """``cat([relu(a(x)), relu(b(x))] + ([x] if with_input else []))`` along the channels."""

    a: int
    b: int
    with_input: bool = False


@dataclass(frozen=True)
class Split:
    """A layer to ``sum(parts)`` channels, split into ``parts`` and merged by adding a projection of each to ``out``."""

    parts: tuple[int, ...]
    out: int
    chunk: bool = False


@dataclass(frozen=True)
class Glu:
    """``first(x).chunk(2)`` into ``a, b`` halves of ``hidden`` channels, then ``second(a * sigmoid(b))``."""

    hidden: int
    out: int


@dataclass(frozen=True)
class Shuffle:
    """A channel shuffle with 2 groups (identity on an odd width)."""


Block = Layer | Residual | Concat | Split | Glu | Shuffle


@dataclass(frozen=True)
class NetSpec:
    """A random network: a stem to ``width`` channels, ``blocks``, then a head to ``classes`` outputs."""

    kind: Kind
    in_channels: int
    width: int
    blocks: tuple[Block, ...]
    classes: int
    seed: int
    batch: int = 2
    spatial: int = 6


class ChannelsLastLayerNorm(nn.Module):
    """LayerNorm over the channels of an ``N x C x H x W`` tensor, behind permutes (ConvNeXt style)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _norm(kind: Kind, norm: Norm, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels) if kind == "conv" else nn.BatchNorm1d(channels)
    if norm == "group":
        return nn.GroupNorm(2 if channels % 2 == 0 else 1, channels)
    if norm == "layer":
        return ChannelsLastLayerNorm(channels) if kind == "conv" else nn.LayerNorm(channels)
    return nn.Identity()


def _layer(kind: Kind, cin: int, cout: int, kernel: int = 1, groups: int = 1) -> nn.Module:
    if kind == "linear":
        return nn.Linear(cin, cout)
    if kernel == 0:
        return nn.Conv2d(cin, cin, 3, padding=1, groups=cin)
    return nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=math.gcd(groups, math.gcd(cin, cout)))


def _dim(kind: Kind) -> int:
    return 1 if kind == "conv" else -1


class LayerBlock(nn.Module):
    """Built ``Layer``."""

    def __init__(self, kind: Kind, cin: int, spec: Layer) -> None:
        super().__init__()
        self.op = _layer(kind, cin, spec.out, spec.kernel, spec.groups)
        self.norm = _norm(kind, spec.norm, block_width(cin, spec))
        self.act = ACTIVATIONS[spec.act]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.op(x)))


class ResidualBlock(nn.Module):
    """Built ``Residual``."""

    def __init__(self, kind: Kind, cin: int, spec: Residual) -> None:
        super().__init__()
        self.first = _layer(kind, cin, spec.hidden)
        self.act = ACTIVATIONS[spec.act]()
        self.second = _layer(kind, spec.hidden, cin)
        self.norm = _norm(kind, spec.norm, cin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.second(self.act(self.first(x))))


class ConcatBlock(nn.Module):
    """Built ``Concat``."""

    def __init__(self, kind: Kind, cin: int, spec: Concat) -> None:
        super().__init__()
        self.a = _layer(kind, cin, spec.a)
        self.b = _layer(kind, cin, spec.b)
        self.with_input = spec.with_input
        self.dim = _dim(kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.relu(self.a(x)), torch.relu(self.b(x))]
        if self.with_input:
            parts.append(x)
        return torch.cat(parts, self.dim)


class SplitBlock(nn.Module):
    """Built ``Split``."""

    def __init__(self, kind: Kind, cin: int, spec: Split) -> None:
        super().__init__()
        self.wide = _layer(kind, cin, sum(spec.parts))
        self.proj = nn.ModuleList(_layer(kind, p, spec.out) for p in spec.parts)
        self.parts = list(spec.parts)
        self.chunk = spec.chunk
        self.dim = _dim(kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.wide(x))
        pieces = y.chunk(len(self.parts), self.dim) if self.chunk else torch.split(y, self.parts, self.dim)
        out = self.proj[0](pieces[0])
        for i in range(1, len(self.parts)):  # index the pieces: fx cannot iterate over a traced tuple
            out = out + self.proj[i](pieces[i])
        return out


class GluBlock(nn.Module):
    """Built ``Glu``."""

    def __init__(self, kind: Kind, cin: int, spec: Glu) -> None:
        super().__init__()
        self.first = _layer(kind, cin, 2 * spec.hidden)
        self.second = _layer(kind, spec.hidden, spec.out)
        self.dim = _dim(kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.first(x).chunk(2, self.dim)
        return self.second(a * torch.sigmoid(b))


class ShuffleBlock(nn.Module):
    """Built ``Shuffle``."""

    def __init__(self, kind: Kind, cin: int, spec: Shuffle) -> None:
        super().__init__()
        self.kind = kind
        self.groups = 2 if cin % 2 == 0 else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups == 1:
            return x
        if self.kind == "conv":
            n, c, h, w = x.shape
            return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)
        n, c = x.shape
        return x.view(n, self.groups, c // self.groups).transpose(1, 2).reshape(n, c)


_BLOCKS: dict[type, type[nn.Module]] = {Layer: LayerBlock, Residual: ResidualBlock, Concat: ConcatBlock,
                                        Split: SplitBlock, Glu: GluBlock, Shuffle: ShuffleBlock}


class RandomNet(nn.Module):
    """The network a ``NetSpec`` describes."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        kind = spec.kind
        self.stem = _layer(kind, spec.in_channels, spec.width, 3 if kind == "conv" else 1)
        blocks: list[nn.Module] = []
        width = spec.width
        for b in spec.blocks:
            blocks.append(_BLOCKS[type(b)](kind, width, b))
            width = block_width(width, b)
        self.blocks = nn.Sequential(*blocks)
        self.head = _layer(kind, width, spec.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(torch.relu(self.stem(x))))


def block_width(width: int, block: Block) -> int:
    """Channels after ``block`` given ``width`` channels before it."""
    if isinstance(block, Layer):
        return width if block.kernel == 0 else block.out
    if isinstance(block, (Residual, Shuffle)):
        return width
    if isinstance(block, Concat):
        return block.a + block.b + (width if block.with_input else 0)
    return block.out


def build(spec: NetSpec) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The eval-mode module and example inputs of ``spec``; weights and statistics come from ``spec.seed``."""
    gen = torch.Generator().manual_seed(spec.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = RandomNet(spec).eval()
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if not t.is_floating_point():
                continue
            values = torch.randn(t.shape, generator=gen) * 0.5
            t.copy_(values.abs() + 0.5 if name.endswith("running_var") else values)
    if spec.kind == "conv":
        x = torch.randn(spec.batch, spec.in_channels, spec.spatial, spec.spatial, generator=gen)
    else:
        x = torch.randn(spec.batch, spec.in_channels, generator=gen)
    return model, (x,)


_channels = st.integers(min_value=2, max_value=6)


def blocks(kind: Kind, exact_only: bool = False) -> st.SearchStrategy[Block]:
    """One block of a ``kind`` network; ``exact_only`` leaves out sigmoid, GroupNorm and LayerNorm."""
    acts = st.sampled_from(sorted(a for a in ACTIVATIONS if not (exact_only and a == "sigmoid")))
    norms = st.sampled_from([n for n in ("none", "batch", "group", "layer")
                             if not (exact_only and n in APPROXIMATE_NORMS)])
    kernels = st.sampled_from([0, 1, 3]) if kind == "conv" else st.just(1)
    groups = st.sampled_from([1, 2, 3]) if kind == "conv" else st.just(1)
    return st.one_of(
        st.builds(Layer, out=_channels, kernel=kernels, groups=groups, norm=norms, act=acts),
        st.builds(Residual, hidden=_channels, act=acts, norm=norms),
        st.builds(Concat, a=_channels, b=_channels, with_input=st.booleans()),
        st.integers(min_value=2, max_value=3).flatmap(
            lambda n: st.one_of(
                st.builds(Split, parts=st.lists(_channels, min_size=n, max_size=n).map(tuple), out=_channels),
                st.builds(Split, parts=_channels.map(lambda c: (c,) * n), out=_channels, chunk=st.just(True)),
            )
        ),
        st.builds(Glu, hidden=_channels, out=_channels),
        st.just(Shuffle()),
    )


@st.composite
def net_specs(draw: st.DrawFn, kind: Kind | None = None, max_blocks: int = 3,
              exact_only: bool = False) -> NetSpec:
    """A random ``NetSpec``: ``kind`` ``"conv"``/``"linear"`` (drawn when None), 1 to ``max_blocks`` blocks."""
    k: Kind = kind if kind is not None else draw(st.sampled_from(["conv", "linear"]))
    return NetSpec(
        kind=k,
        in_channels=draw(st.integers(min_value=1, max_value=4)),
        width=draw(_channels),
        blocks=tuple(draw(st.lists(blocks(k, exact_only), min_size=1, max_size=max_blocks))),
        classes=draw(st.integers(min_value=1, max_value=3)),
        seed=draw(st.integers(min_value=0, max_value=2**16)),
    )


def models(kind: Kind | None = None, max_blocks: int = 3,
           exact_only: bool = False) -> st.SearchStrategy[tuple[nn.Module, tuple[torch.Tensor, ...]]]:
    """Random ``(module, example_inputs)`` pairs; see ``net_specs``."""
    return net_specs(kind, max_blocks, exact_only).map(build)


__all__ = [
    "ACTIVATIONS",
    "Block",
    "Concat",
    "Glu",
    "Layer",
    "NetSpec",
    "RandomNet",
    "Residual",
    "Shuffle",
    "Split",
    "block_width",
    "blocks",
    "build",
    "models",
    "net_specs",
]
