"""Forward passes equal the dense matrix they stand for, over any leading dimensions, without forming it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn as nn

from fxopt.structured import (
    BlastLinear,
    BTTLinear,
    ChannelLinear,
    GridLinear,
    LowRank,
    MonarchLinear,
    Structure,
    StructuredLinear,
    conv1x1_weight,
)

F64 = {"rtol": 1e-10, "atol": 1e-10}  # float64: reassociation error only
F32 = {"rtol": 1e-5, "atol": 1e-5}  # float32 on unit-scale inputs


@pytest.mark.parametrize("lead", [(), (5,), (2, 3), (2, 1, 4)])
def test_layer_forward_equals_dense_matrix_for_leading_dims(structure: Structure, shape: tuple[int, int],
                                                          lead: tuple[int, ...]) -> None:
    m, n = shape
    layer = structure.build(m, n, dtype=torch.float64)
    nn.init.normal_(layer.bias)
    x = torch.randn(*lead, n, dtype=torch.float64)
    y = layer(x)
    assert y.shape == (*lead, m)
    torch.testing.assert_close(y, x @ layer.to_dense().T + layer.bias, **F64)


def test_layer_forward_float32_without_bias(structure: Structure, shape: tuple[int, int]) -> None:
    m, n = shape
    layer = structure.build(m, n, bias=False)
    x = torch.randn(7, n)
    assert layer.bias is None
    torch.testing.assert_close(layer(x), x @ layer.to_dense().T, **F32)


def test_layer_forward_never_forms_the_dense_weight(structure: Structure, shape: tuple[int, int],
                                                    largest_intermediate: Callable[[Callable[[], Any]], int]) -> None:
    m, n = shape
    layer = structure.build(m, n)
    x = torch.randn(2, n)
    with torch.no_grad():
        largest = largest_intermediate(lambda: layer(x))
    assert largest < m * n
    assert largest_intermediate(lambda: layer.to_dense()) == m * n  # the probe does see an m x n tensor


def test_blast_forward_never_forms_the_block_by_token_by_rank_tensor(
        largest_intermediate: Callable[[Callable[[], Any]], int]) -> None:
    b, r, tokens = 4, 8, 64
    layer = BlastLinear(32, 32, blocks=b, rank=r)
    x = torch.randn(tokens, 32)
    with torch.no_grad():
        largest = largest_intermediate(lambda: layer(x))
        naive = largest_intermediate(lambda: (torch.einsum("tjq,jqr->tjr", x.reshape(tokens, b, 8), layer.v)
                                              .unsqueeze(1) * layer.s.unsqueeze(0)).sum(2))
    assert naive == b * b * tokens * r  # the reference's broadcast (here token-major) that the layer avoids
    assert largest <= tokens * max(32, b * r)


def test_grid_layers_are_the_two_btt_cores() -> None:
    """BTT(m1, n0) keeps compute-better-spent's cores W1 (m1, m0, n0 r) and W2 (n0, m1 r, n1)."""
    layer = BTTLinear(in_features=6 * 5, out_features=4 * 3, rank=2, m1=4, n0=6)
    assert tuple(layer.left.shape) == (4, 3, 6 * 2)
    assert tuple(layer.right.shape) == (6, 4 * 2, 5)
    assert isinstance(layer, GridLinear) and layer.structure.m1 == 4 and layer.structure.n0 == 6


def test_monarch_shuffle_reorders_only_the_outputs() -> None:
    plain = MonarchLinear(36, 24, blocks=3, rank=2, dtype=torch.float64)
    shuffled = MonarchLinear(36, 24, blocks=3, rank=2, shuffle=True, dtype=torch.float64)
    shuffled.load_state_dict(plain.state_dict())
    x = torch.randn(5, 36, dtype=torch.float64)
    order = torch.arange(24).reshape(3, 8).T.reshape(-1)  # output s * 3 + i holds blocked row i * 8 + s
    torch.testing.assert_close(shuffled(x), plain(x)[:, order], **F64)


def test_layer_repr_names_structure_options() -> None:
    text = repr(MonarchLinear(36, 24, blocks=3, rank=2))
    assert text == "MonarchLinear(in_features=36, out_features=24, blocks=3, rank=2, shuffle=False, bias=True)"
    assert "max_iter" not in repr(BlastLinear(36, 24, blocks=3, rank=2))


def test_layer_on_meta_device_plans_costs_without_memory() -> None:
    layer = MonarchLinear(4096, 4096, blocks=64, rank=1, device="meta")
    assert layer.left.is_meta and layer.num_parameters == 2 * 4096 * 64 + 4096


@pytest.mark.parametrize("lead", [(2, 5, 5), (1, 3, 2, 2)])
def test_channel_linear_equals_the_1x1_convolution(lead: tuple[int, ...]) -> None:
    dims = len(lead) - 1
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1](36, 24, 1).double()
    layer = ChannelLinear.from_conv1x1(conv, LowRank(rank=24))  # full rank: exact
    x = torch.randn(lead[0], 36, *lead[1:], dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x), **F64)
    weight, bias = conv1x1_weight(conv)
    assert weight.shape == (24, 36) and bias is conv.bias
    assert layer.flops(positions=10) == 10 * (2 * 24 * (24 + 36) + 24)


def test_structured_layer_is_a_module_with_trainable_factors(structure: Structure, shape: tuple[int, int]) -> None:
    layer = structure.build(*shape)
    assert isinstance(layer, StructuredLinear)
    layer(torch.randn(3, shape[1])).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    assert isinstance(layer.structure, type(structure))
