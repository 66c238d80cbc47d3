"""fxopt.registry.Registry: the one table behind the pass, op, criterion and target registries."""

from __future__ import annotations

import pytest

from fxopt.errors import FxoptError, PassError
from fxopt.ops.registry import REGISTRY
from fxopt.passes.base import PASSES
from fxopt.pruning.importance import CRITERIA
from fxopt.registry import Registry
from fxopt.targets.registry import TARGETS


def test_registry_unknown_key_raises_its_error_listing_registered_names() -> None:
    shapes: Registry[int] = Registry("shape", PassError)
    shapes.register("square", 4)
    shapes.register("triangle", 3)
    assert shapes.get("square") == 4 and shapes["triangle"] == 3 and shapes.get("circle", None) is None
    with pytest.raises(PassError, match="unknown shape 'circle'; registered shapes: square, triangle"):
        shapes.get("circle")


def test_registry_scoped_drops_registrations_and_restores_removals() -> None:
    shapes: Registry[int] = Registry("shape")
    shapes.register("square", 4)
    with shapes.scoped() as inner:
        inner.register("circle", 0)
        inner.pop("square")
        assert inner.names() == ["circle"]
    assert shapes.names() == ["square"] and "circle" not in shapes and len(shapes) == 1


def test_registry_decorator_registers_under_every_key_and_returns_the_function() -> None:
    handlers: Registry[object] = Registry("handler")

    @handlers.decorator("add", "sum")
    def add(a: int, b: int) -> int:
        return a + b

    assert add(1, 2) == 3 and handlers["add"] is add and handlers["sum"] is add and handlers.names() == ["add", "sum"]


@pytest.mark.parametrize("table, kind", [
    (PASSES.passes, "pass"), (CRITERIA.factories, "criterion"), (TARGETS.factories, "target"),
    (REGISTRY.rules, "channel rule"),
])
def test_registries_of_fxopt_are_registry_tables_raising_fxopt_errors(table: Registry[object], kind: str) -> None:
    assert isinstance(table, Registry) and table.kind == kind
    with pytest.raises(FxoptError, match=f"unknown {kind} 'no-such-thing'; registered"):
        table.get("no-such-thing")
