"""No copy of the weights: optimize and prune share the tensors they leave alone, and copy mutable state only."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pytest
import torch
import torch.nn as nn

import fxopt
from fxopt.module_state import copy_sharing_parameters
from fxopt.pruning.pruner import unshare_buffers
from fxopt.pruning.removal import _slice_tensor
from fxopt.pruning.units import dim_sums, power_sums, transformed_sums


def storages(tensors: Iterable[torch.Tensor]) -> set[int]:
    """The storage addresses of ``tensors``."""
    return {t.untyped_storage().data_ptr() for t in tensors}


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@pytest.fixture
def bn_net() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))


def test_copy_sharing_parameters_shares_weights_and_copies_modules_and_buffers(bn_net) -> None:
    twin = copy_sharing_parameters(bn_net)
    assert all(a is b for a, b in zip(twin.parameters(), bn_net.parameters()))
    assert twin[1] is not bn_net[1]
    assert storages(twin.buffers()).isdisjoint(storages(bn_net.buffers()))
    assert all(torch.equal(a, b) for a, b in zip(twin.buffers(), bn_net.buffers()))


def test_optimize_shares_the_parameters_no_pass_changed(bn_net) -> None:
    model, x = bn_net.eval(), torch.randn(4, 8)
    fast = fxopt.optimize(model, x, passes="cleanup", compile=False)
    assert storages(fast.parameters()) == storages(model.parameters())
    assert storages(fast.buffers()).isdisjoint(storages(model.buffers()))
    torch.testing.assert_close(fast(x), model(x))


def test_optimize_result_in_training_leaves_the_models_running_stats_alone(bn_net) -> None:
    model, x = bn_net.train(), torch.randn(4, 8)
    before = model[1].running_mean.clone()
    fast = fxopt.optimize(model, x, passes="cleanup", compile=False)
    fast.train()
    fast(x)
    assert torch.equal(model[1].running_mean, before)
    stats = [b for name, b in fast.named_buffers() if name.endswith("running_mean")]
    assert stats and not torch.equal(stats[0], before)  # the copy's own statistics moved


def test_prune_shares_exactly_the_tensors_it_does_not_slice() -> None:
    model, x = Mlp().eval(), torch.randn(2, 16)
    small, _ = fxopt.prune(model, x, ratio=0.5)
    sliced = set(small.meta["fxopt"]["pruned"]["parameters"])
    assert sliced and "fc3.bias" not in sliced
    theirs = storages(model.parameters())
    for name, p in small.named_parameters():
        assert (p.untyped_storage().data_ptr() in theirs) == (name not in sliced), name
    assert small.get_parameter("fc3.bias") is model.fc3.bias


def test_prune_gives_the_pruned_model_its_own_buffers() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4))
    model.eval()
    small, _ = fxopt.prune(model, torch.randn(1, 3, 8, 8), ratio=0.5)
    assert any(True for _ in small.buffers())
    assert storages(small.buffers()).isdisjoint(storages(model.buffers()))


def test_unshare_buffers_copies_shared_buffers_only(bn_net) -> None:
    from fxopt.editor import GraphEditor
    from fxopt.pruning.removal import copy_sharing_tensors

    gm = fxopt.trace(bn_net.eval(), torch.randn(2, 8))
    twin = copy_sharing_tensors(gm)
    copied = unshare_buffers(GraphEditor(twin), gm)
    assert copied == len(list(gm.buffers()))
    assert storages(twin.buffers()).isdisjoint(storages(gm.buffers()))
    assert storages(twin.parameters()) == storages(gm.parameters())


def test_transformed_sums_in_slabs_match_the_whole_tensor() -> None:
    t = torch.randn(37, 6, 3, 3, dtype=torch.float64)
    slabs = transformed_sums(t, torch.square, (0, 1, 3), slab_bytes=5 * 6 * 9 * 8)
    for d in (0, 1, 3):
        np.testing.assert_allclose(slabs[d], dim_sums(t * t, d), rtol=1e-12)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_power_sums_match_summing_the_powered_tensor(p: float) -> None:
    t = torch.randn(9, 4, 3, dtype=torch.float64)
    sums = transformed_sums(t, p, (0, 1, 2))
    assert sums.keys() == {0, 1, 2}
    for d in (0, 1, 2):
        np.testing.assert_allclose(sums[d], dim_sums(t.abs() ** p, d), rtol=1e-10)
    np.testing.assert_allclose(power_sums(t[:, 0, 0], p, (0,))[0], (t[:, 0, 0].abs() ** p).numpy(), rtol=1e-12)


def test_slice_tensor_in_one_step_matches_slicing_dim_by_dim() -> None:
    t = torch.randn(6, 5, 4)
    kept = [np.array([0, 2, 5]), np.arange(5), np.array([1, 3])]
    out = _slice_tensor(t, kept)
    assert out.is_contiguous()
    assert torch.equal(out, t[[0, 2, 5]][:, :, [1, 3]])
