"""Pinned tests of the attention rules: SDPA (multi-head, GQA), matmul attention, einsum, rotary, per-head tables."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxopt


class Heads(nn.Module):
    """Separate q/k/v projections to ``heads`` x ``dim`` (``kv_heads`` for k and v) and an output projection."""

    def __init__(self, width: int, heads: int, dim: int, kv_heads: int | None = None) -> None:
        super().__init__()
        self.h, self.kv, self.d = heads, kv_heads or heads, dim
        self.q, self.o = nn.Linear(width, heads * dim), nn.Linear(heads * dim, width)
        self.k, self.v = nn.Linear(width, self.kv * dim), nn.Linear(width, self.kv * dim)

    def split(self, t: torch.Tensor, heads: int) -> torch.Tensor:
        n, s, _ = t.shape
        return t.view(n, s, heads, self.d).transpose(1, 2)

    def merge(self, t: torch.Tensor) -> torch.Tensor:
        n, _, s, _ = t.shape
        return self.o(t.transpose(1, 2).reshape(n, s, self.h * self.d))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_sdpa_multi_head_groups_heads_and_head_dims_exact(rig, frontend):
    class Net(Heads):
        def forward(self, x):
            q, k, v = self.split(self.q(x), self.h), self.split(self.k(x), self.h), self.split(self.v(x), self.h)
            return self.merge(F.scaled_dot_product_attention(q, k, v))

    a = rig.analyze(Net(16, 4, 4), torch.randn(2, 5, 16), frontend=frontend)
    assert {g.id: (g.size, g.width, g.granularity, g.exact) for g in a.groups} == {
        "q.weight/0.0": (4, 4, "head", True),  # a head: 4 rows of each of q, k, v and 4 columns of o
        "q.weight/0.1": (4, 4, "head_dim", True),  # i-th q/k dim of every head (contracted in q.k)
        "v.weight/0.1": (4, 4, "head_dim", True),  # i-th v dim of every head (read by o)
    }
    heads = rig.group(a, "q.weight/0.0")
    assert rig.members(heads) == {("q.weight", 0, "p"), ("q.bias", 0, "p"), ("k.weight", 0, "p"), ("k.bias", 0, "p"),
                                  ("v.weight", 0, "p"), ("v.bias", 0, "p"), ("o.weight", 1, "c")}
    assert rig.members(rig.group(a, "q.weight/0.1")) == {("q.weight", 0, "p"), ("q.bias", 0, "p"),
                                                         ("k.weight", 0, "p"), ("k.bias", 0, "p")}
    assert a.unit_slices(heads)[heads.members[0]][1].tolist() == [4, 5, 6, 7]
    assert all(e < 1e-5 for e in rig.errors(a).values())
    small = rig.prune(a, {heads: [1, 2]})
    assert rig.shapes(small)["q.weight"] == (8, 16) and rig.shapes(small)["o.weight"] == (16, 8)


def test_sdpa_head_dim_removal_pins_the_softmax_scale(rig):
    class Net(Heads):
        def forward(self, x):
            q, k, v = self.split(self.q(x), self.h), self.split(self.k(x), self.h), self.split(self.v(x), self.h)
            return self.merge(F.scaled_dot_product_attention(q, k, v))

    a = rig.analyze(Net(8, 2, 4), torch.randn(2, 5, 8))
    qk = rig.group(a, "q.weight/0.1")
    small = rig.prune(a, {qk: [0, 3]})  # equal to zeroing only if the scale stays 1/sqrt(4)
    sdpa = next(n for n in small.graph.nodes if n.target is F.scaled_dot_product_attention)
    assert sdpa.kwargs["scale"] == 0.5
    v_only = rig.prune(a, {rig.group(a, "v.weight/0.1"): [0]})
    sdpa = next(n for n in v_only.graph.nodes if n.target is F.scaled_dot_product_attention)
    assert "scale" not in sdpa.kwargs


def test_sdpa_fused_qkv_with_unbind_prunes_heads_and_freezes_the_qkv_factor(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.o = nn.Linear(16, 48), nn.Linear(16, 16)

        def forward(self, x):
            n, s, c = x.shape
            q, k, v = self.qkv(x).reshape(n, s, 3, 4, c // 4).permute(2, 0, 3, 1, 4).unbind(0)
            return self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, s, c))

    a = rig.analyze(Net(), torch.randn(2, 5, 16))
    assert {g.id: (g.size, g.width, g.granularity) for g in a.groups} == {
        "qkv.weight/0.1": (4, 12, "head"), "qkv.weight/0.2": (4, 12, "head_dim")}
    assert rig.frozen(a, "qkv.weight/0.0").reason == "unbind unbinds this dim"
    assert all(e < 1e-5 for e in rig.errors(a).values())
    small = rig.prune(a, {rig.group(a, "qkv.weight/0.1"): [3]})
    assert rig.shapes(small)["qkv.weight"] == (36, 16)


def test_gqa_query_heads_follow_their_kv_head_and_kv_group_removal_is_exact(rig):
    class Net(Heads):
        def forward(self, x):
            q, k, v = self.split(self.q(x), self.h), self.split(self.k(x), self.kv), self.split(self.v(x), self.kv)
            return self.merge(F.scaled_dot_product_attention(q, k, v, enable_gqa=True))

    a = rig.analyze(Net(16, 4, 4, kv_heads=2), torch.randn(2, 5, 16))
    kv_group = rig.group(a, "q.weight/0.0")
    assert (kv_group.size, kv_group.width, kv_group.granularity, kv_group.exact) == (2, 8, "head", True)
    slices = {m.qualname: rows for m, rows in a.unit_slices(kv_group).items() if m.dim == 0}
    assert slices["q.weight"][1].tolist() == list(range(8, 16))  # query heads 2 and 3 ...
    assert slices["k.weight"][1].tolist() == list(range(4, 8))  # ... share kv head 1
    within = rig.group(a, "q.weight/0.1")  # one query head in every kv group: softmax(0) is not 0
    assert (within.size, within.exact) == (2, False)
    assert rig.members(within) == {("q.weight", 0, "p"), ("q.bias", 0, "p"), ("o.weight", 1, "c")}
    errors = rig.errors(a)
    assert errors[kv_group.id] < 1e-5 and errors[within.id] > 1e-3
    small = rig.prune(a, {kv_group: [0]})
    shapes = rig.shapes(small)
    assert (shapes["q.weight"], shapes["k.weight"], shapes["v.weight"], shapes["o.weight"]) == \
        ((8, 16), (4, 16), (4, 16), (16, 8))


def test_gqa_with_expand_repeat_kv_matches_enable_gqa_groups(rig):
    class Net(Heads):
        def forward(self, x):
            q, k, v = self.split(self.q(x), self.h), self.split(self.k(x), self.kv), self.split(self.v(x), self.kv)
            n, _, s, d = k.shape
            k = k[:, :, None].expand(n, self.kv, 2, s, d).reshape(n, self.h, s, d)
            v = v[:, :, None].expand(n, self.kv, 2, s, d).reshape(n, self.h, s, d)
            return self.merge(F.scaled_dot_product_attention(q, k, v))

    a = rig.analyze(Net(16, 4, 4, kv_heads=2), torch.randn(2, 5, 16))
    kv_group = rig.group(a, "q.weight/0.0")
    assert (kv_group.size, kv_group.exact) == (2, True)
    assert not rig.group(a, "q.weight/0.1").exact
    rig.errors(a)
    small = rig.prune(a, {kv_group: [1]})
    assert rig.shapes(small)["k.weight"] == (4, 16)


def test_gqa_with_repeat_interleave_query_heads_within_group_can_be_removed(rig):
    class Net(Heads):
        def forward(self, x):
            q, k, v = self.split(self.q(x), self.h), self.split(self.k(x), self.kv), self.split(self.v(x), self.kv)
            k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
            return self.merge(F.scaled_dot_product_attention(q, k, v))

    a = rig.analyze(Net(16, 4, 4, kv_heads=2), torch.randn(2, 5, 16))
    within = rig.group(a, "q.weight/0.1")
    rig.prune(a, {within: [0]})


def test_rotate_half_pairs_head_dims_i_and_i_plus_half_exact(rig):
    class Net(Heads):
        def __init__(self):
            super().__init__(16, 2, 8)
            self.register_buffer("cos", torch.randn(5, 8))
            self.register_buffer("sin", torch.randn(5, 8))

        def rope(self, t):
            a, b = t[..., :4], t[..., 4:]
            return t * self.cos + torch.cat([-b, a], -1) * self.sin

        def forward(self, x):
            q, k, v = self.split(self.q(x), self.h), self.split(self.k(x), self.h), self.split(self.v(x), self.h)
            return self.merge(F.scaled_dot_product_attention(self.rope(q), self.rope(k), v))

    a = rig.analyze(Net(), torch.randn(2, 5, 16))
    pairs = rig.group(a, "q.weight/0.1")
    assert (pairs.size, pairs.width, pairs.granularity, pairs.exact) == (4, 4, "head_dim", True)
    assert rig.members(pairs) == {("q.weight", 0, "p"), ("q.bias", 0, "p"), ("k.weight", 0, "p"), ("k.bias", 0, "p"),
                                  ("cos", 1, "p"), ("sin", 1, "p")}
    rows = a.unit_slices(pairs)[next(m for m in pairs.members if m.qualname == "q.weight")]
    assert rows[1].tolist() == [1, 5, 9, 13]  # dims 1 and 1 + 4 of both heads
    assert all(e < 1e-5 for e in rig.errors(a).values())
    small = rig.prune(a, {pairs: [0, 2]})
    assert (rig.shapes(small)["q.weight"], rig.shapes(small)["cos"]) == ((8, 16), (5, 4))


def test_rotation_by_a_third_ties_all_head_dims_into_one_unprunable_unit(rig):
    class Net(Heads):
        def __init__(self):
            super().__init__(16, 2, 8)

        def rot(self, t):  # rotate by 3: i is tied to i + 3 mod 8, which reaches every element
            return torch.cat([-t[..., 3:], t[..., :3]], -1)

        def forward(self, x):
            q, k, v = self.split(self.q(x), self.h), self.split(self.k(x), self.h), self.split(self.v(x), self.h)
            return self.merge(F.scaled_dot_product_attention(q + self.rot(q), k, v))

    a = rig.analyze(Net(), torch.randn(2, 5, 16))
    # heads and v's head_dim only: the single q/k head_dim unit can never be removed, so it is not offered
    assert {g.id for g in a.groups} == {"q.weight/0.0", "v.weight/0.1"}
    assert all(g.size >= 2 for g in a.groups)
    rig.errors(a)


def test_per_head_relative_position_bias_table_joins_the_head_group_exact(rig):
    class Net(Heads):
        def __init__(self):
            super().__init__(8, 2, 4)
            self.table = nn.Parameter(torch.randn(9, 2))
            self.register_buffer("index", torch.randint(0, 9, (25,)))

        def forward(self, x):
            q, k, v = self.split(self.q(x), self.h), self.split(self.k(x), self.h), self.split(self.v(x), self.h)
            bias = self.table[self.index].view(5, 5, 2).permute(2, 0, 1)
            return self.merge(((q @ k.transpose(-2, -1)) + bias).softmax(-1) @ v)

    a = rig.analyze(Net(), torch.randn(2, 5, 8))
    heads = rig.group(a, "q.weight/0.0")
    assert (heads.size, heads.exact) == (2, True)
    assert (heads.granularity, rig.group(a, "q.weight/0.1").granularity) == ("head", "head_dim")  # from the matmuls
    assert ("table", 1, "p") in rig.members(heads)
    assert all(e < 1e-5 for e in rig.errors(a).values())
    small = rig.prune(a, {heads: [0]})
    assert rig.shapes(small)["table"] == (9, 1)
    assert torch.equal(small.table, a.gm.table[:, 1:])


def test_multihead_attention_module_is_decomposed_by_export_and_prunable(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.m = nn.Linear(8, 8), nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            y = self.a(x)
            return self.m(y, y, y, need_weights=False)[0]

    a = rig.analyze(Net(), torch.randn(2, 5, 8))
    info = a.gm.meta["fxopt"]["trace"]
    assert (info.frontend, info.fallback_reason) == ("export", "fx graph had 1 nodes without rules, export 0")
    assert {g.id: g.granularity for g in a.groups} == {"a.weight/0": "channel", "m.in_proj_weight/0.1": "head",
                                                       "m.in_proj_weight/0.2": "head_dim"}
    rig.errors(a)
    small = rig.prune(a, {rig.group(a, "m.in_proj_weight/0.1"): [1]})
    assert rig.shapes(small)["m.in_proj_weight"] == (12, 8)


class _MhaBlock(nn.Module):
    """An attention block as users write it: residual and LayerNorm around nn.MultiheadAttention."""

    def __init__(self, batch_first: bool, need_weights: bool, kdim: int | None) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first, kdim=kdim, vdim=kdim)
        self.kv = nn.Linear(16, kdim) if kdim else nn.Identity()
        self.norm, self.fc, self.need_weights = nn.LayerNorm(16), nn.Linear(16, 16), need_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kv = self.kv(x)
        y, _ = self.attn(x, kv, kv, need_weights=self.need_weights)
        return self.fc(self.norm(x + y))


@pytest.mark.parametrize("kdim", [None, 12], ids=["packed", "separate"])
@pytest.mark.parametrize("need_weights", [True, False], ids=["weights", "no-weights"])
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "seq-first"])
def test_multihead_attention_prunes_heads_and_head_dim_in_every_form(rig, batch_first, need_weights, kdim):
    """Issue 15: batch_first=False with need_weights=True pruned nothing (its unused head-averaged weights made the
    head group approximate, and its 3-d bmm path tagged no heads)."""
    a = rig.analyze(_MhaBlock(batch_first, need_weights, kdim), torch.randn(5, 2, 16))
    by_granularity = {g.granularity: g for g in a.groups}
    heads, head_dim = by_granularity["head"], by_granularity["head_dim"]
    assert (heads.size, head_dim.size) == (4, 4) and heads.exact and head_dim.exact
    assert all(e < 1e-5 for e in rig.errors(a).values())
    small = rig.prune(a, {heads: [0, 2], head_dim: [1]})
    weights = rig.shapes(small)
    if kdim is None:
        assert weights["attn.in_proj_weight"] == (3 * 2 * 3, 16)
    else:
        assert weights["attn.q_proj_weight"] == (6, 16) and weights["attn.k_proj_weight"] == (6, 12)
    assert weights["attn.out_proj.weight"] == (16, 6)


def test_multihead_attention_module_with_fx_frontend_is_a_frozen_barrier(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.m = nn.Linear(8, 8), nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            y = self.a(x)
            return self.m(y, y, y, need_weights=False)[0]

    a = rig.analyze(Net(), torch.randn(2, 5, 8), frontend="fx")
    assert a.groups == []
    assert [(b.node.name, b.op) for b in a.barriers] == [("m", "mha")]
    assert rig.frozen(a, "a.weight/0").reason == "nn.MultiheadAttention requires num_heads * head_dim == embed_dim"


def test_einsum_contraction_is_an_exact_sink(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k = nn.Linear(8, 6), nn.Linear(8, 6)

        def forward(self, x):
            return torch.einsum("bnd,bmd->bnm", self.q(x), self.k(x))

    a = rig.analyze(Net(), torch.randn(2, 5, 8))
    (g,) = a.groups
    assert g.exact
    assert rig.members(g) == {("q.weight", 0, "p"), ("q.bias", 0, "p"), ("k.weight", 0, "p"), ("k.bias", 0, "p")}
    rig.errors(a)


def test_einsum_attention_tags_heads_and_head_dim_and_prunes_heads_exact(rig):
    class Net(Heads):
        def forward(self, x):
            q, k, v = self.split(self.q(x), self.h), self.split(self.k(x), self.h), self.split(self.v(x), self.h)
            attn = torch.einsum("bhid,bhjd->bhij", q, k).softmax(-1)
            return self.merge(torch.einsum("bhij,bhjd->bhid", attn, v))

    a = rig.analyze(Net(8, 2, 4), torch.randn(2, 5, 8))
    heads, head_dim = rig.group(a, "q.weight/0.0"), rig.group(a, "q.weight/0.1")
    assert (heads.granularity, heads.size, head_dim.granularity, head_dim.size) == ("head", 2, "head_dim", 4)
    assert heads.exact and all(e < 1e-6 for e in rig.errors(a).values())
    small = rig.prune(a, {heads: [1]})
    assert rig.shapes(small)["o.weight"] == (8, 4)


def test_einsum_with_ellipsis_is_a_barrier(rig):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k = nn.Linear(8, 6), nn.Linear(8, 6)

        def forward(self, x):
            return torch.einsum("...d,...d->...", self.q(x), self.k(x))

    a = rig.analyze(Net(), torch.randn(2, 5, 8), frontend="fx")
    assert a.groups == []
    assert [b.reason for b in a.barriers] == ["einsum with ellipsis or implicit output"]


def test_multihead_attention_default_form_prunes_half_its_heads_through_prune(rig):
    model, x = rig.randomize(_MhaBlock(batch_first=False, need_weights=True, kdim=None)), torch.randn(5, 2, 16)
    small, report = fxopt.prune(model, (x,), ratio=0.5)
    assert [d.granularity for d in report.pruned] == ["head"]
    assert rig.shapes(small)["attn.in_proj_weight"] == (24, 16)
    assert small(x).shape == model(x).shape
