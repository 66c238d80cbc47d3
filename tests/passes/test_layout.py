"""channels_last conversion of conv nets, and where it must not fire."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from fxopt.testing import assert_equivalent


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_channels_last_conv_net_gets_nhwc_weights_and_input(passes, frontend: str) -> None:
    model, x = ConvNet(), torch.randn(2, 3, 8, 8)
    gm, result = passes.run("channels_last", model, x, frontend=frontend)
    weights = [p for p in gm.parameters() if p.ndim == 4]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert passes.kinds(gm)[0] == "unary_zero"  # the input conversion
    out = gm(x)
    assert out.is_contiguous()  # 4-D outputs come back in the default format
    assert_equivalent(model, gm, (x,))
    assert result.metrics["convs"] == 2


def test_channels_last_view_after_conv_gets_contiguous_first(passes) -> None:
    class Viewing(ConvNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.b(self.a(x))
            return y.view(y.shape[0], -1)

    model, x = Viewing(), torch.randn(2, 3, 4, 4)
    gm, _ = passes.run("channels_last", model, x)
    assert passes.kinds(gm)[-2:] == ["unary_zero", "reshape"]  # contiguous() before the view
    assert_equivalent(model, gm, (x,))


def test_channels_last_linear_model_is_left_alone_with_reason(passes) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(4 * 8 * 8, 512), nn.Linear(512, 512))
    gm, result = passes.run("channels_last", model, torch.randn(1, 3, 8, 8))
    assert not result.changed and "not a conv net" in result.skips[0].reason
