"""Target registry: names to target factories (the CPU is detected on first use)."""

from __future__ import annotations

from collections.abc import Callable

from fxopt.registry import FactoryRegistry, Registry
from fxopt.targets.cpu import detect_cpu
from fxopt.targets.gpus import a100, h100, h200
from fxopt.targets.spec import Target

TargetFactory = Callable[[], Target]


class TargetRegistry(FactoryRegistry[TargetFactory]):
    """Target factories by name: a ``Registry`` that also takes ready Targets and passes a Target through."""

    def __init__(self) -> None:
        super().__init__(Registry("target"))

    def register(self, name: str, factory: TargetFactory | Target) -> None:
        """Register a target (or a function building it) under ``name``."""
        if isinstance(factory, Target):
            target = factory
            self.factories.register(name, lambda: target)
        else:
            self.factories.register(name, factory)

    def get(self, target: str | Target) -> Target:
        """The target named ``target`` (a Target is returned as is).

        Raises:
            FxoptError: for unknown names, listing the registered ones.
        """
        if isinstance(target, Target):
            return target
        return self.factories.get(target)()



TARGETS = TargetRegistry()
TARGETS.register("cpu", detect_cpu)
TARGETS.register("a100", a100)
TARGETS.register("h100", h100)
TARGETS.register("h200", h200)


def get_target(target: str | Target) -> Target:
    """Look up a target by name (``"cpu"``, ``"a100"``, ``"h100"``, ``"h200"``) or pass a Target through."""
    return TARGETS.get(target)


def register_target(name: str, target: Target | TargetFactory) -> None:
    """Make ``target`` available under ``name`` (for ``optimize(target=name)``)."""
    TARGETS.register(name, target)
