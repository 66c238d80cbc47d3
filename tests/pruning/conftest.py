"""Small models shared by the pruning tests."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn


class ConvNet(nn.Module):
    """conv-BN-ReLU x2 with a residual add, pooled into a classifier."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv1, self.bn1 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width)
        self.conv2, self.bn2 = nn.Conv2d(2 * width, width, 1, bias=False), nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        y = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(x + self.bn2(self.conv2(y)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class MLP(nn.Module):
    """Linear-ReLU-Linear-ReLU-Linear."""

    def __init__(self, d: int = 12, h: int = 32) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(d, h), nn.Linear(h, h), nn.Linear(h, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def randomized(model: nn.Module) -> nn.Module:
    """Random parameters and BN statistics (positive variances), eval mode."""
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if name.endswith("running_var") else torch.randn_like(t) * 0.5)
    return model.eval()


@pytest.fixture
def convnet() -> tuple[nn.Module, torch.Tensor]:
    """A randomized ConvNet and a 2x3x8x8 input."""
    return randomized(ConvNet()), torch.randn(2, 3, 8, 8)


@pytest.fixture
def mlp() -> tuple[nn.Module, torch.Tensor]:
    """A randomized MLP and a 4x12 input."""
    return randomized(MLP()), torch.randn(4, 12)
