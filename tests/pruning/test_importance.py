"""Importance criteria: whole-group scores, aggregation over members, normalization, data-aware criteria."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxopt
from fxopt.errors import PruneError
from fxopt.pruning.calibration import Calibration, CalibrationCache
from fxopt.pruning.importance import (
    CRITERIA,
    Criterion,
    ImportanceContext,
    normalize_scores,
    score_groups,
)
from fxopt.pruning.units import member_sums


def _ctx(analysis: fxopt.Analysis, batches: list | None = None, loss_fn=None) -> ImportanceContext:  # type: ignore[no-untyped-def]
    cal = Calibration.of(batches, loss_fn)
    return ImportanceContext(analysis, CalibrationCache(analysis, cal))


def _group(analysis: fxopt.Analysis, prefix: str) -> fxopt.Group:
    return next(g for g in analysis.groups if g.id.startswith(prefix))


def test_l2_conv_bn_group_zeroed_channel_scores_lowest(convnet) -> None:  # type: ignore[no-untyped-def]
    model, x = convnet
    with torch.no_grad():
        model.conv1.weight[5] = 0
        model.bn1.weight[5] = 0
        model.bn1.bias[5] = 0
        model.conv2.weight[:, 5] = 0
    a = fxopt.analyze(model, x)
    g = _group(a, "conv1.weight/0")
    scores = score_groups(_ctx(a), [g], CRITERIA.create("l2"))[g]
    assert scores.shape == (g.size,)
    assert scores[5] == 0.0 and (np.delete(scores, 5) > 0).all()


def test_l2_residual_group_aggregates_every_member(convnet) -> None:  # type: ignore[no-untyped-def]
    model, x = convnet
    a = fxopt.analyze(model, x)
    g = _group(a, "stem.weight/0")  # stem, conv2 and BNs write it; conv1 and fc read it
    ctx = _ctx(a)
    crit = CRITERIA.create("l2", normalize="none")
    got = crit.group_scores(ctx, g)
    expected = np.zeros(g.size)
    for name, dim in [("stem.weight", 0), ("bn0.weight", 0), ("bn0.bias", 0), ("conv2.weight", 0), ("bn2.weight", 0),
                      ("bn2.bias", 0), ("conv1.weight", 1), ("fc.weight", 1)]:
        w = model.get_parameter(name).detach().double()
        expected += (w.movedim(dim, 0).reshape(g.size, -1) ** 2).sum(1).numpy()
    np.testing.assert_allclose(got, np.sqrt(expected), rtol=1e-5)


def test_normalize_scores_mean_max_minmax_and_zero_group() -> None:
    s = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(normalize_scores(s, "mean"), s / 2)
    np.testing.assert_allclose(normalize_scores(s, "max"), s / 3)
    np.testing.assert_allclose(normalize_scores(s, "minmax"), [0, 0.5, 1])
    assert (normalize_scores(np.zeros(3), "mean") == 0).all()
    with pytest.raises(ValueError, match="unknown normalization"):
        normalize_scores(s, "median")


def test_bn_scale_scores_gamma_and_falls_back_to_l2_without_batchnorm(convnet, mlp) -> None:  # type: ignore[no-untyped-def]
    model, x = convnet
    a = fxopt.analyze(model, x)
    g = _group(a, "conv1.weight/0")
    ctx = _ctx(a)
    scores = score_groups(ctx, [g], CRITERIA.create("bn_scale", normalize="none"))[g]
    np.testing.assert_allclose(scores, model.bn1.weight.detach().abs().numpy(), rtol=1e-6)
    m, xm = mlp
    am = fxopt.analyze(m, xm)
    ctx = _ctx(am)
    gm = am.groups[0]
    got = score_groups(ctx, [gm], CRITERIA.create("bn_scale"))[gm]
    ref = score_groups(_ctx(am), [gm], CRITERIA.create("l2"))[gm]
    np.testing.assert_allclose(got, ref)
    assert "no BatchNorm" in ctx.notes[gm.id]


def test_taylor_without_calibration_raises(mlp) -> None:  # type: ignore[no-untyped-def]
    model, x = mlp
    a = fxopt.analyze(model, x)
    with pytest.raises(ValueError, match="calibration"):
        score_groups(_ctx(a), a.groups, CRITERIA.create("taylor"))


def test_taylor_matches_manual_first_order_term_and_leaves_grads_untouched(mlp) -> None:  # type: ignore[no-untyped-def]
    model, x = mlp
    y = torch.tensor([0, 1, 2, 3])
    a = fxopt.analyze(model, x)
    g = _group(a, "fc1.weight/0")
    scores = score_groups(_ctx(a, [(x, y)], F.cross_entropy), [g], CRITERIA.create("taylor", normalize="none"))[g]
    loss = F.cross_entropy(model(x), y)
    params = [model.fc1.weight, model.fc1.bias, model.fc2.weight]
    grads = torch.autograd.grad(loss, params)
    manual = ((params[0] * grads[0]).sum(1) + params[1] * grads[1] + (params[2] * grads[2]).sum(0)).abs()
    np.testing.assert_allclose(scores, manual.detach().double().numpy(), rtol=1e-4, atol=1e-9)
    assert all(p.grad is None for p in model.parameters())


def test_variance_constant_channel_scores_zero(mlp) -> None:  # type: ignore[no-untyped-def]
    model, x = mlp
    with torch.no_grad():
        model.fc1.weight[3] = 0  # channel 3 of fc1's output is the constant relu(bias)
    a = fxopt.analyze(model, x)
    g = _group(a, "fc1.weight/0")
    batches = [torch.randn(16, 12) for _ in range(2)]
    scores = score_groups(_ctx(a, batches), [g], CRITERIA.create("variance"))[g]
    assert scores[3] == pytest.approx(0.0, abs=1e-12)
    assert (np.delete(scores, 3) >= 0).all() and np.delete(scores, 3).max() > 0


def test_calibration_leaves_batchnorm_statistics_of_the_model_alone(convnet) -> None:  # type: ignore[no-untyped-def]
    model, x = convnet
    model.train()
    before = model.bn1.running_mean.clone()
    a = fxopt.analyze(model, x)
    score_groups(_ctx(a, [torch.randn(4, 3, 8, 8)]), a.groups, CRITERIA.create("variance"))
    assert torch.equal(model.bn1.running_mean, before)
    assert model.training and model.bn1.training


def test_registered_custom_criterion_is_used_and_scoped_away(mlp) -> None:  # type: ignore[no-untyped-def]
    model, x = mlp
    a = fxopt.analyze(model, x)

    with CRITERIA.scoped():
        @CRITERIA.register("l3")
        @dataclass(frozen=True)
        class L3(Criterion):
            name: ClassVar[str] = "l3"

            def member_scores(self, ctx, group):  # type: ignore[no-untyped-def]
                return [v for _, v in member_sums(ctx.analysis, group, lambda t: t.abs() ** 3)]

        g = a.groups[0]
        assert score_groups(_ctx(a), [g], CRITERIA.create("l3"))[g].shape == (g.size,)
    with pytest.raises(PruneError, match="unknown criterion 'l3'; registered criteria: activation, bn_scale"):
        CRITERIA.create("l3")


def test_function_criterion_with_wrong_shape_raises(mlp) -> None:  # type: ignore[no-untyped-def]
    model, x = mlp
    a = fxopt.analyze(model, x)
    with pytest.raises(ValueError, match="shape"):
        score_groups(_ctx(a), a.groups, CRITERIA.create(lambda ctx, group: np.zeros(group.size + 1)))


def test_random_criterion_is_seeded(mlp) -> None:  # type: ignore[no-untyped-def]
    model, x = mlp
    a = fxopt.analyze(model, x)
    one = score_groups(_ctx(a), a.groups, CRITERIA.create("random", seed=3))
    two = score_groups(_ctx(a), a.groups, CRITERIA.create("random", seed=3))
    assert all(np.array_equal(one[g], two[g]) for g in a.groups)


def test_unit_slices_match_the_analysis_for_heads() -> None:
    import torchvision

    from fxopt.pruning.units import unit_slices

    model = torchvision.models.VisionTransformer(16, 8, 1, 4, 32, 64).eval()
    a = fxopt.analyze(model, torch.randn(1, 3, 16, 16))
    assert any(g.granularity == "head" for g in a.groups)
    for g in a.groups:
        ref = a.unit_slices(g)
        mine = unit_slices(a, g)
        assert mine.keys() <= ref.keys()
        for m, idx in mine.items():
            assert np.array_equal(idx, ref[m]), (g.id, m)


def test_magnitude_unknown_group_member_shapes_do_not_break_scores() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.fc = nn.Linear(8, 16)
            self.out = nn.Linear(16, 8)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.fc(self.emb(ids)))) @ self.emb.weight.T

    model = Tied().eval()
    a = fxopt.analyze(model, torch.randint(0, 10, (2, 3)))
    scores = score_groups(_ctx(a), a.groups, CRITERIA.create("l1"))
    assert all(np.isfinite(s).all() and s.shape == (g.size,) for g, s in scores.items())
