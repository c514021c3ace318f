"""Convolutional networks for structured pruning (OTOv2 ZIG groups).

Each network exercises a channel-dependency pattern: residual Adds (ResNet), nested Concats
(DenseNet), depthwise and grouped convolutions (MobileNetV2, ResNeXt), broadcast Mul (SE),
channel shuffle through Reshape/Transpose (ShuffleNet), Flatten into Linear (conv_view_linear,
VGG), ConvTranspose and Concat skips (U-Net).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from otoir.zoo._common import ConvBN, ConvBNReLU, make_divisible, scaled

__all__ = [
    "VGG",
    "ConvViewLinear",
    "DenseNet",
    "MobileNetV2",
    "ResNeXt",
    "ResNet",
    "SENet",
    "ShuffleNetV2",
    "UNet",
]


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, c: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != c:
            self.downsample = ConvBN(cin, c, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        cin: int,
        c: int,
        stride: int,
        groups: int = 1,
        base_width: int | None = None,
    ) -> None:
        super().__init__()
        mid = c if base_width is None else base_width * groups
        cout = c * self.expansion
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = ConvBN(cin, cout, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with basic or bottleneck blocks, torchvision names; CIFAR stem by default.

    ``ResNet(64, "basic", (2, 2, 2, 2))`` is ResNet-18 for CIFAR (11.2 M parameters); the state
    dict keys follow torchvision (``layer1.0.conv1.weight``, ``layer2.0.downsample.0.weight``).
    ``ResNet(64, "bottleneck", (3, 4, 6, 3), num_classes=1000, stem="imagenet")`` has
    torchvision's ResNet-50 layout (25.6 M parameters, 4.1 G multiply-accumulates at 224×224).

    Args:
        width: Channels of the first stage (doubled per stage).
        block: ``"basic"`` or ``"bottleneck"``.
        layers: Blocks per stage.
        num_classes: Linear outputs.
        in_channels: Input channels.
        groups: Groups of the bottleneck 3×3 conv (ResNeXt when > 1).
        base_width: Per-group width of the bottleneck 3×3 conv (ResNeXt), default ``width``-based.
        stem: ``"cifar"`` (3×3 stride-1 conv, no max-pool: 32×32 inputs) or ``"imagenet"``
            (7×7 stride-2 conv and a 3×3 stride-2 max-pool: 224×224 inputs).

    Raises:
        ValueError: An unknown ``block`` or ``stem``.
    """

    def __init__(
        self,
        width: int = 8,
        block: str = "basic",
        layers: tuple[int, ...] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        groups: int = 1,
        base_width: int | None = None,
        stem: str = "cifar",
    ) -> None:
        super().__init__()
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
            self.maxpool: nn.Module | None = None
        elif stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            raise ValueError(f"unknown stem {stem!r} (cifar or imagenet)")
        self.bn1 = nn.BatchNorm2d(width)
        cin = width
        for i, n in enumerate(layers):
            c = width * 2**i
            blocks: list[nn.Module] = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                if block == "basic":
                    blk: nn.Module = _BasicBlock(cin, c, stride)
                    cin = c
                elif block == "bottleneck":
                    bw = None if base_width is None else base_width * 2**i
                    blk = _Bottleneck(cin, c, stride, groups, bw)
                    cin = c * _Bottleneck.expansion
                else:
                    raise ValueError(f"unknown block {block!r}")
                blocks.append(blk)
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.n_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the network."""
        x = F.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for i in range(self.n_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class VGG(nn.Module):
    """VGG with BN for CIFAR; the last feature map (2×2) is flattened into a Linear classifier.

    Args:
        width: Multiplies the channel counts of ``cfg``.
        cfg: Channel counts, ``"M"`` for a 2×2 max-pool.
        num_classes: Linear outputs.
        in_channels: Input channels.
    """

    def __init__(
        self,
        width: float = 1.0,
        cfg: tuple[int | str, ...] = (16, "M", 32, "M", 64, 64, "M", 64, 64, "M"),
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                co = scaled(int(v), width)
                layers += [nn.Conv2d(c, co, 3, 1, 1), nn.BatchNorm2d(co), nn.ReLU()]
                c = co
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(c * 4, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the network (input 3×32×32)."""
        return self.classifier(torch.flatten(self.features(x), 1))


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return torch.cat([x, out], dim=1)


class DenseNet(nn.Module):
    """DenseNet-BC: every layer concatenates its output to its input (nested Concats).

    Args:
        growth: Growth rate.
        blocks: Layers per dense block.
        num_classes: Linear outputs.
        in_channels: Input channels.
    """

    def __init__(
        self,
        growth: int = 8,
        blocks: tuple[int, ...] = (3, 3),
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        c = 2 * growth
        self.conv0 = nn.Conv2d(in_channels, c, 3, 1, 1, bias=False)
        layers: list[nn.Module] = []
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(_DenseLayer(c, growth))
                c += growth
            if i != len(blocks) - 1:
                co = c // 2
                layers.append(
                    nn.Sequential(
                        nn.BatchNorm2d(c),
                        nn.ReLU(),
                        nn.Conv2d(c, co, 1, bias=False),
                        nn.AvgPool2d(2),
                    )
                )
                c = co
        self.features = nn.Sequential(*layers)
        self.norm5 = nn.BatchNorm2d(c)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the network."""
        x = F.relu(self.norm5(self.features(self.conv0(x))))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [
                nn.Conv2d(cin, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(),
            ]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2: inverted residuals with depthwise 3×3 convs, ReLU6 (→ Clip); CIFAR-sized by default.

    With the seven ImageNet stages as ``settings``, ``stem_stride=2``, ``last=1280``,
    ``num_classes=1000`` and width 1.0 it has torchvision's MobileNetV2 layout (3.5 M
    parameters, 0.3 G multiply-accumulates at 224×224).

    Args:
        width: Multiplies the channel counts (rounded to multiples of 4).
        settings: ``(expand, channels, repeats, stride)`` per stage.
        num_classes: Linear outputs.
        in_channels: Input channels.
        stem_stride: Stride of the 3×3 stem conv (1 for 32×32 inputs, 2 for ImageNet's).
        last: Channels of the final 1×1 conv before pooling (scaled by ``width``).
    """

    def __init__(
        self,
        width: float = 0.5,
        settings: tuple[tuple[int, int, int, int], ...] = (
            (1, 16, 1, 1),
            (6, 24, 2, 2),
            (6, 32, 2, 2),
            (6, 64, 1, 2),
        ),
        num_classes: int = 10,
        in_channels: int = 3,
        stem_stride: int = 1,
        last: int = 128,
    ) -> None:
        super().__init__()
        c = make_divisible(scaled(32, width), 4)
        layers: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(in_channels, c, 3, stem_stride, 1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU6(),
            )
        ]
        for t, ch, n, s in settings:
            co = make_divisible(scaled(ch, width), 4)
            for i in range(n):
                layers.append(_InvertedResidual(c, co, s if i == 0 else 1, t))
                c = co
        last = make_divisible(scaled(last, width), 4)
        layers.append(nn.Sequential(nn.Conv2d(c, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the network."""
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def ResNeXt(
    width: int = 8,
    layers: tuple[int, ...] = (1, 1, 1),
    groups: int = 4,
    num_classes: int = 10,
    in_channels: int = 3,
) -> ResNet:
    """A small ResNeXt: bottleneck blocks whose 3×3 conv has ``groups`` groups (default 4).

    Args:
        width: Channels of the first stage.
        layers: Blocks per stage.
        groups: Cardinality.
        num_classes: Linear outputs.
        in_channels: Input channels.

    Returns:
        A :class:`ResNet` with grouped bottlenecks.
    """
    return ResNet(
        width,
        "bottleneck",
        layers,
        num_classes,
        in_channels,
        groups=groups,
        base_width=max(1, width // 2),
    )


class _SEBlock(nn.Module):
    """Conv-BN-ReLU then squeeze-and-excitation: ``x * sigmoid(fc2(relu(fc1(gap(x)))))``."""

    def __init__(self, cin: int, c: int, reduction: int = 4) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, c, 3)
        self.fc1 = nn.Conv2d(c, max(1, c // reduction), 1)
        self.fc2 = nn.Conv2d(max(1, c // reduction), c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * s


class SENet(nn.Module):
    """A plain CNN of squeeze-and-excitation blocks (channel gating by broadcast Mul).

    Args:
        width: Multiplies the channel counts (16, 32, 64).
        num_classes: Linear outputs.
        in_channels: Input channels.
    """

    def __init__(self, width: float = 1.0, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        cs = [scaled(c, width) for c in (16, 32, 64)]
        self.block1 = _SEBlock(in_channels, cs[0])
        self.block2 = _SEBlock(cs[0], cs[1])
        self.block3 = _SEBlock(cs[1], cs[2])
        self.fc = nn.Linear(cs[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the network."""
        x = F.max_pool2d(self.block1(x), 2)
        x = F.max_pool2d(self.block2(x), 2)
        x = self.block3(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: view as (B, g, C/g, H, W), swap axes 1 and 2, flatten back."""
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, c, h, w)


class _ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1: nn.Module = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
                nn.BatchNorm2d(cin),
                nn.Conv2d(cin, half, 1, bias=False),
                nn.BatchNorm2d(half),
                nn.ReLU(),
            )
            bin_ = cin
        else:
            self.branch1 = nn.Identity()
            bin_ = half
        self.branch2 = nn.Sequential(
            nn.Conv2d(bin_, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False),
            nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 units: channel split (Split), branch, Concat, channel shuffle (Reshape/Transpose).

    Args:
        width: Multiplies the stage widths (24, 48, 96).
        repeats: Units per stage (the first has stride 2).
        num_classes: Linear outputs.
        in_channels: Input channels.
    """

    def __init__(
        self,
        width: float = 1.0,
        repeats: tuple[int, ...] = (2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        c = make_divisible(scaled(16, width), 4)
        self.conv1 = ConvBNReLU(in_channels, c, 3)
        units: list[nn.Module] = []
        for i, n in enumerate(repeats):
            co = make_divisible(scaled(24 * 2**i, width), 4)
            for j in range(n):
                units.append(_ShuffleUnit(c, co, 2 if j == 0 else 1))
                c = co
        self.stages = nn.Sequential(*units)
        self.conv5 = ConvBNReLU(c, 2 * c, 1)
        self.fc = nn.Linear(2 * c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the network."""
        x = self.conv5(self.stages(self.conv1(x)))
        return self.fc(x.mean([2, 3]))


class ConvViewLinear(nn.Module):
    """conv → BN → ReLU → ``x.view(B, -1)`` → Linear, with a 4×4 feature map (input 3×8×8).

    Channel ``c`` of the conv owns Linear input columns ``16c … 16c+15``.

    Args:
        channels: Conv output channels.
        num_classes: Linear outputs.
        in_channels: Input channels.
    """

    def __init__(self, channels: int = 8, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, 2, 1)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the network."""
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(x.view(x.size(0), -1))


class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(ConvBNReLU(cin, cout, 3), ConvBNReLU(cout, cout, 3))


class UNet(nn.Module):
    """U-Net for segmentation: max-pool encoder, ConvTranspose decoder, ``torch.cat`` skips.

    The output is per-pixel logits ``(B, num_classes, H, W)``.

    Args:
        width: Channels of the first level (doubled per level).
        depth: Number of downsamplings.
        num_classes: Output channels.
        in_channels: Input channels.
    """

    def __init__(self, width: int = 8, depth: int = 2, num_classes: int = 2, in_channels: int = 3) -> None:
        super().__init__()
        self.depth = depth
        self.inc = _DoubleConv(in_channels, width)
        self.downs = nn.ModuleList(_DoubleConv(width * 2**i, width * 2 ** (i + 1)) for i in range(depth))
        self.ups = nn.ModuleList(nn.ConvTranspose2d(width * 2 ** (i + 1), width * 2**i, 2, 2) for i in reversed(range(depth)))
        self.up_convs = nn.ModuleList(_DoubleConv(width * 2 ** (i + 1), width * 2**i) for i in reversed(range(depth)))
        self.outc = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the network."""
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        y = skips.pop()
        for up, conv in zip(self.ups, self.up_convs, strict=True):
            y = conv(torch.cat([skips.pop(), up(y)], dim=1))
        return self.outc(y)
