"""Small building blocks shared by the torch zoo modules (imports torch)."""

from __future__ import annotations

from torch import nn

__all__ = ["ConvBN", "ConvBNReLU", "make_divisible", "scaled"]


def scaled(channels: int, width: float) -> int:
    """Returns ``channels * width`` rounded, at least 1."""
    return max(1, round(channels * width))


def make_divisible(channels: int, divisor: int) -> int:
    """Rounds ``channels`` up to a multiple of ``divisor`` (at least ``divisor``)."""
    return max(divisor, -(-channels // divisor) * divisor)


class ConvBN(nn.Sequential):
    """Conv2d followed by BatchNorm2d (no activation)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        bias: bool = False,
    ) -> None:
        pad = dilation * (kernel - 1) // 2
        super().__init__(
            nn.Conv2d(
                cin,
                cout,
                kernel,
                stride,
                pad,
                dilation=dilation,
                groups=groups,
                bias=bias,
            ),
            nn.BatchNorm2d(cout),
        )


class ConvBNReLU(nn.Sequential):
    """Conv2d, BatchNorm2d, ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=False),
        )
