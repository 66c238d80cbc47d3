"""Shared fixtures: deterministic, single-threaded torch, a guard on global state, and the ``rig`` of helpers.

The models in these tests are tiny; torch's intra-op threads only fight over the cores with the other pytest-xdist
worker, which makes a 2x3x8x8 conv take 100x longer. One thread per worker is the fast setting.

Every test must leave the process as it found it (the suite runs in random order and split across workers): the
``_no_global_state_change`` guard fails a test that changes torch's, inductor's or dynamo's configuration, torch's
thread count, default dtype, grad mode or matmul precision, a logger's level, or an fxopt registry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import fxopt
from fxopt.equivalence import run
from fxopt.testing import assert_equivalent, check_zero_invariance
from fxopt.testing.zero_invariance import zero_producers


@pytest.fixture(scope="session", autouse=True)
def _single_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _registries() -> dict[str, Any]:
    from fxopt.ops.registry import REGISTRY
    from fxopt.passes.base import PASSES
    from fxopt.pruning.importance import CRITERIA
    from fxopt.registry import Registry
    from fxopt.targets.registry import TARGETS

    return {f"{name}.{attr}": sorted(map(str, value)) for name, registry in
            (("ops", REGISTRY), ("passes", PASSES), ("criteria", CRITERIA), ("targets", TARGETS))
            for attr, value in vars(registry).items() if isinstance(value, (dict, Registry))}


def global_state() -> dict[str, Any]:
    """What no test may change: library configuration, torch's process-wide settings, loggers, registries."""
    from torch._dynamo import config as dynamo_config
    from torch._inductor import config as inductor_config

    loggers = {name: lg.level for name, lg in logging.root.manager.loggerDict.items()
               if isinstance(lg, logging.Logger) and name.split(".")[0] in ("torch", "fxopt")}
    return {
        "inductor": inductor_config.get_config_copy(), "dynamo": dynamo_config.get_config_copy(),
        "threads": torch.get_num_threads(), "dtype": torch.get_default_dtype(), "grad": torch.is_grad_enabled(),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "tf32": (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32),
        "fxopt_handlers": len(logging.getLogger("fxopt").handlers), "loggers": loggers, **_registries(),
    }


def state_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """The entries of ``global_state()`` that differ (loggers created in between are not changes)."""
    changed = []
    for key, old in before.items():
        new = after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += [f"{key}.{k}" for k, v in old.items() if k in new and new[k] != v]
        elif new != old:
            changed.append(key)
    return changed


@pytest.fixture(autouse=True)
def _no_global_state_change() -> Iterator[None]:
    before = global_state()
    yield
    changed = state_changes(before, global_state())
    if changed:
        pytest.fail(f"the test changed global state it must restore: {', '.join(changed[:10])}")


class _BetweenLinears(nn.Module):
    def __init__(self, f: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.a, self.b, self.f = nn.Linear(4, 8), nn.Linear(8, 2), f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.f(self.a(x)))


class Rig:
    """Helpers every rule test uses: member listings, random affine parameters, removal checked against zeroing."""

    @staticmethod
    def members(group: fxopt.Group | fxopt.FrozenGroup) -> set[tuple[str, int, str]]:
        """``{(qualname, dim, "p" | "c")}``: the group's parameter slices and whether each is a producer."""
        return {(m.qualname, m.dim, m.role[0]) for m in group.members}

    @staticmethod
    def randomize(model: nn.Module) -> nn.Module:
        """Random values in every float parameter and buffer (positive running variances), eval mode.

        Default norm parameters (weight 1, bias 0, mean 0, var 1) would let a wrong rule pass by luck.
        """
        with torch.no_grad():
            for name, t in [*model.named_parameters(), *model.named_buffers()]:
                if t.is_floating_point():
                    t.copy_(torch.rand_like(t) + 0.5 if name.endswith("running_var") else torch.randn_like(t))
        return model.eval()

    @staticmethod
    def between_linears(f: Callable[[torch.Tensor], torch.Tensor]) -> nn.Module:
        """``Linear(4, 8) -> f -> Linear(8, 2)``: the 8 hidden features are one group whose exactness ``f`` decides."""
        return _BetweenLinears(f)

    def analyze(self, model: nn.Module, *inputs: torch.Tensor, frontend: str = "auto") -> fxopt.Analysis:
        """``fxopt.analyze`` of the randomized model."""
        return fxopt.analyze(self.randomize(model), tuple(inputs), frontend=frontend)  # type: ignore[arg-type]

    @staticmethod
    def group(analysis: fxopt.Analysis, prefix: str) -> fxopt.Group:
        """The one group whose id starts with ``prefix``."""
        found = [g for g in analysis.groups if g.id.startswith(prefix)]
        assert len(found) == 1, f"{prefix!r} matches {[g.id for g in found]} among {[g.id for g in analysis.groups]}"
        return found[0]

    @staticmethod
    def frozen(analysis: fxopt.Analysis, prefix: str) -> fxopt.FrozenGroup:
        """The one frozen group whose id starts with ``prefix``."""
        found = [f for f in analysis.frozen if f.id.startswith(prefix)]
        assert len(found) == 1, f"{prefix!r} matches {[f.id for f in found]} among {[f.id for f in analysis.frozen]}"
        return found[0]

    @staticmethod
    def errors(analysis: fxopt.Analysis) -> dict[str, float]:
        """Run the zero-invariance oracle on every group (it raises if an exact group fails or a removal
        errors); returns each group's relative error."""
        checks = check_zero_invariance(analysis)
        assert len(checks) == len(analysis.groups)
        return {c.group: c.relative for c in checks}

    @staticmethod
    def prune(analysis: fxopt.Analysis, plan: Mapping[fxopt.Group, Sequence[int]]) -> fx.GraphModule:
        """Remove ``plan``; the result must run, keep the output shapes and, for exact groups, equal zeroing."""
        small = fxopt.prune_groups(analysis, plan)
        inputs = list(analysis.example_inputs)
        reference = run(analysis.gm, inputs)
        outputs = run(small, inputs)
        assert [o.shape for o in outputs] == [r.shape for r in reference]
        if all(g.exact for g in plan):
            assert_equivalent(zero_producers(analysis, {g: list(u) for g, u in plan.items()}), small, inputs)
        return small

    @staticmethod
    def shapes(gm: nn.Module) -> dict[str, tuple[int, ...]]:
        """Every parameter's and buffer's shape by name."""
        return {k: tuple(v.shape) for k, v in gm.state_dict().items()}


@pytest.fixture
def rig() -> Rig:
    """The shared checking helpers."""
    return Rig()
