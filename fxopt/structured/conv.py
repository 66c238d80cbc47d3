"""1x1 convolutions as structured linears over the channel dimension.

A 1x1 convolution with stride 1, no padding and one group is a linear map over channels applied at every position:
``from_conv1x1`` fits its (out, in) weight like a linear layer's, and ``ChannelLinear`` applies the fitted layer
over dimension 1 of (N, C, *spatial) inputs. Its FLOPs count one token per output position (N times the spatial
size).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fxopt.ops.structured import FactorLayout
from fxopt.structured.base import Structure, StructuredLinear
from fxopt.structured.calibration import InputStats, Scaling
from fxopt.structured.errors import StructureError
from fxopt.structured.fit import fit

ConvNd = nn.Conv1d | nn.Conv2d | nn.Conv3d


def conv1x1_weight(conv: ConvNd) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (out_channels, in_channels) weight and the bias of a 1x1 convolution that is a linear over channels.

    Args:
        conv: an ``nn.Conv1d``/``Conv2d``/``Conv3d``.

    Returns:
        The weight as a matrix (a view) and the bias (or ``None``).

    Raises:
        StructureError: the kernel is not 1x1, or stride, padding or groups make it more than a channel linear.
    """
    name = f"{type(conv).__name__}({conv.in_channels}, {conv.out_channels}, kernel_size={conv.kernel_size})"
    if any(k != 1 for k in conv.kernel_size):
        raise StructureError(f"{name} is not a 1x1 convolution; only 1x1 kernels are linears over channels")
    zero_padding = conv.padding in ("valid", "same") or all(p == 0 for p in conv.padding)
    if conv.groups != 1 or any(s != 1 for s in conv.stride) or not zero_padding:
        raise StructureError(f"{name} has groups={conv.groups}, stride={conv.stride}, padding={conv.padding}; a "
                             f"structured channel linear needs groups=1, stride 1 and no padding (subsample or pad "
                             f"the input separately)")
    return conv.weight.reshape(conv.out_channels, conv.in_channels), conv.bias


class ChannelLinear(nn.Module):
    """A structured linear applied over dimension 1 of (N, C, *spatial) inputs, i.e. a structured 1x1 convolution.

    Args:
        linear: the structured layer (in_features = input channels, out_features = output channels).

    Example:
        >>> conv = nn.Conv2d(32, 64, 1)
        >>> layer = ChannelLinear.from_conv1x1(conv, LowRank(rank=8))
        >>> layer(torch.randn(2, 32, 5, 5)).shape
        torch.Size([2, 64, 5, 5])
    """

    def __init__(self, linear: StructuredLinear) -> None:
        super().__init__()
        self.linear = linear

    @classmethod
    def from_conv1x1(cls, conv: ConvNd, structure: Structure, *,
                     activations: torch.Tensor | InputStats | None = None, scaling: Scaling = "whiten",
                     damp: float = 0.01) -> ChannelLinear:
        """Fit a structured layer to a 1x1 convolution (``fit(*conv1x1_weight(conv), ...)`` gives the report).

        Args:
            conv: the 1x1 convolution (checked by ``conv1x1_weight``).
            structure: the structure, e.g. ``Monarch(blocks=4, rank=2)``.
            activations: the convolution's calibration inputs (N, C, *spatial), or their ``InputStats`` over
                channels, for an activation-aware fit.
            scaling: the activation scaling, as for ``fit``.
            damp: the inputs' second moment's ridge, as for ``fit``.

        Returns:
            The structured convolution, in the convolution's dtype and device.
        """
        weight, bias = conv1x1_weight(conv)
        rows = activations.movedim(1, -1) if isinstance(activations, torch.Tensor) else activations
        return cls(fit(weight, structure, bias, activations=rows, scaling=scaling, damp=damp).layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.movedim(1, -1)).movedim(-1, 1)

    @property
    def factor_layout(self) -> FactorLayout:
        """The structured layer's layout over dimension 1 (channels)."""
        return self.linear.factor_layout.prefixed("linear.", 1)

    def to_dense(self) -> torch.Tensor:
        """The (out_channels, in_channels) matrix applied at every position."""
        return self.linear.to_dense()

    @property
    def num_parameters(self) -> int:
        """Exact number of parameters (the structured layer's)."""
        return self.linear.num_parameters

    def flops(self, positions: int = 1) -> int:
        """FLOPs on ``positions`` output positions (N times the spatial size), as ``StructuredLinear.flops``."""
        return self.linear.flops(positions)
