"""Write and test a channel rule for an op fxopt does not know.

``scale_shift`` below is a per-channel affine function kept as one node in the graph (``torch.fx.wrap``). fxopt
has no rule for it, so it is a *barrier*: every dim it touches is frozen and the conv that feeds it cannot be
pruned. Registering a rule (a normalizer saying which arguments are inputs and parameters, and a ~10-line rule
stating the facts) makes the conv's channels a prunable, exact group again; the zero-invariance oracle checks it.
A cost registered beside the rule tells ``fxopt.cost`` and the pruning cost model what the op computes.

Run: python examples/custom_op_rule.py
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

import fxopt
from fxopt.analysis.cost import B
from fxopt.ops import REGISTRY, Facts, OpCost, OpRegistry, OpView, Sizes
from fxopt.ops.cost import op_cost, out_numel
from fxopt.ops.forms import function_form
from fxopt.testing import check_zero_invariance
from fxopt.testing.zero_invariance import pick_units


@torch.fx.wrap
def scale_shift(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Per-channel ``x * scale + shift`` along dim 1 (a fused kernel in real code)."""
    return x * scale[None, :, None, None] + shift[None, :, None, None]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.scale = nn.Parameter(torch.rand(16) + 0.5)
        self.shift = nn.Parameter(torch.randn(16))
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(scale_shift(self.conv1(x), self.scale, self.shift)))


def register_scale_shift(registry: OpRegistry) -> None:
    """Teach ``registry`` what ``scale_shift`` does to channels and what it costs."""
    registry.register_ops("scale_shift", [scale_shift],
                          function_form(["x", "scale", "shift"], inputs=["x"], params=["scale", "shift"]))

    @registry.rule("scale_shift")
    def scale_shift_rule(view: OpView, facts: Facts) -> None:
        """scale_shift: per-channel affine on dim 1; a channel is zero when its input and its shift are."""
        x, out = view.inputs[0], view.out
        scale, shift = view.params["scale"], view.params["shift"]
        assert x is not None and scale is not None and shift is not None
        for d in range(x.ndim):
            if d != 1:
                facts.transfer(out.axis(d), x.axis(d))  # same channels, zero where the input is zero
        facts.same(out.axis(1), x.axis(1))
        facts.same(x.axis(1), scale.axis(0))
        facts.same(x.axis(1), shift.axis(0))
        facts.zero(out.axis(1), "all", [x.axis(1), shift.axis(0)])

    @registry.cost("scale_shift")
    def scale_shift_cost(view: OpView, sizes: Sizes) -> OpCost:
        """scale_shift: a multiply and an add per output element."""
        return op_cost(view, sizes, "elementwise", 2 * out_numel(view, sizes))


def main() -> None:
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 8, 8)

    before = fxopt.analyze(model, x, frontend="fx")
    assert [b.node.name for b in before.barriers] == ["scale_shift"], before.summary()
    assert not any(g.id.startswith("conv1.") for g in before.groups)
    print("without a rule:", before.barriers[0].reason)

    with REGISTRY.scoped() as registry:  # a private copy: the registration is dropped at the end of the block
        register_scale_shift(registry)
        after = fxopt.analyze(model, x, frontend="fx")
        assert not after.barriers
        group = next(g for g in after.groups if g.id.startswith("conv1."))
        assert group.exact and group.size == 16, group
        roles = {m.qualname: m.role for m in group.members}
        assert roles["shift"] == "producer" and roles["scale"] == "consumer" and roles["conv2.weight"] == "consumer"
        checks = check_zero_invariance(after, groups=[group])  # zeroing the producers == removing the units
        assert checks[0].passed and checks[0].exact
        small = fxopt.prune_groups(after, {group: pick_units(group, 0.5)})
        assert small.get_parameter("scale").shape == (8,) and small.conv1.out_channels == 8
        print(f"with the rule: {group!r}; pruned to {small.conv1.out_channels} channels, "
              f"max error vs zeroing {checks[0].max_abs:.1e}")
        row = next(r for r in fxopt.cost(model, x).rows if r.kind == "scale_shift")
        assert row.category == "elementwise" and row.flops == 2 * 16 * 8 * 8 * B
        print(f"its cost: {row.flops} FLOPs, {row.bytes} bytes")


if __name__ == "__main__":
    main()
