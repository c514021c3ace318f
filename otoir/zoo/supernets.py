"""Erasing super-networks (OTOv3): networks whose operators and branches can be removed whole.

Each one is built so that the segments OTOv3's Algorithm 2 finds are easy to name: candidate
operators are separate ``nn.Module`` attributes whose outputs meet only at joint vertices
(``Add`` / ``Concat``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from otoir.zoo._common import ConvBN, ConvBNReLU, scaled

__all__ = ["DARTSSupernet", "DemoSupNet", "RegNetStyle", "StackedUnets", "SuperResNet"]


class DemoSupNet(nn.Module):
    """The demo super-network of OTOv3's Figure 1a (input 1×28×28, Fashion-MNIST).

    Figure-to-module mapping (ONNX node names are those of the legacy exporter, e.g.
    ``/conv1/Conv``; initializer prefixes are the state_dict prefixes)::

        figure            module attrs        ONNX nodes                        initializers
        Conv1-BN1         conv1, bn1          /conv1/Conv, /bn1/BatchNorm...    conv1.*, bn1.*
        Conv2-BN2         conv2, bn2          /conv2/Conv, /bn2/...             conv2.*, bn2.*
        MaxPool-Conv3-BN3 maxpool,conv3,bn3   /maxpool/MaxPool, /conv3/Conv …   conv3.*, bn3.*
        AvgPool-Conv4-BN4 avgpool,conv4,bn4   /avgpool/AveragePool, /conv4/Conv conv4.*, bn4.*
        Concat            (torch.cat)         /Concat                           -
        Conv6             conv6               /conv6/Conv                       conv6.weight, conv6.bias
        Conv5-BN5         conv5, bn5          /conv5/Conv, /bn5/...             conv5.*, bn5.*
        Add (5 + 6)       (+)                 /Add                              -
        Conv7-BN7         conv7, bn7          /conv7/Conv, /bn7/...             conv7.*, bn7.*
        Conv8-BN8         conv8, bn8          /conv8/Conv, /bn8/...             conv8.*, bn8.*
        Add (7 + 8)       (+)                 /Add_1                            -
        AvgPool           gap                 /gap/GlobalAveragePool            -
        Linear            linear              /linear/Gemm                      linear.*

    Topology (read from the paper's text, which fixes every edge the figure shows): Conv1-BN1
    feeds exactly Conv2, MaxPool and AvgPool ("removing Conv1-BN1 would cause Conv2, MaxPool and
    AvgPool to become invalid"); their three segments meet in a Concat whose only consumer is
    Conv6, so Conv6's flattened filter matrix has one column block per incoming segment
    (Conv2-BN2 columns first, then Conv3-BN3, then Conv4-BN4 — the concat order). Conv6 (a Conv
    with bias and no BN, as in the figure) and Conv5-BN5 are joined by an Add. Conv5 reads the
    network input directly (the text names Conv1 only as one of the vertices "adjacent to the
    input"; Conv1-BN1's consumers are exactly the three listed). The Add fans out to Conv7-BN7 and
    Conv8-BN8, joined by a second Add before AvgPool and Linear: Conv7-BN7 is the path that must
    stay once Conv8-BN8 is erased (Figure 2), and erasing Conv8-BN8 makes that Add unnecessary
    (Figure 3). Hence the GeZIG candidates are g2, g3, g4 (→ Concat), g5, g6 (→ Add) and g7, g8
    (→ Add_1); Conv1-BN1 (fan-out) and the AvgPool-Linear output segment are not erasable.

    Sizes: the branch convolutions run at 28×28 (pools are 3×3, stride 1), Conv5/Conv6 have
    stride 2, so Conv5..Conv8 run at 14×14. Channels: Conv1 48, Conv2..Conv4 64 each (Concat
    192), Conv5..Conv8 160. With ``width=1`` this has 0.826 M parameters and 210 M
    multiply-accumulates, matching Table 1 (0.82 M, 209 M "FLOPs", counted as MACs).

    Args:
        width: Multiplies every channel count (``width=0.125`` gives a tiny test network).
        num_classes: Linear outputs.
        in_channels: Input channels.
        relu: Insert a ReLU after every BN. The figure has none (default False).
    """

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 10,
        in_channels: int = 1,
        relu: bool = False,
    ) -> None:
        super().__init__()
        c1, cb, c6 = scaled(48, width), scaled(64, width), scaled(160, width)
        self.relu = relu
        self.conv1 = nn.Conv2d(in_channels, c1, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, cb, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(cb)
        self.maxpool = nn.MaxPool2d(3, 1, 1)
        self.conv3 = nn.Conv2d(c1, cb, 3, 1, 1)
        self.bn3 = nn.BatchNorm2d(cb)
        self.avgpool = nn.AvgPool2d(3, 1, 1)
        self.conv4 = nn.Conv2d(c1, cb, 3, 1, 1)
        self.bn4 = nn.BatchNorm2d(cb)
        self.conv5 = nn.Conv2d(in_channels, c6, 3, 2, 1)
        self.bn5 = nn.BatchNorm2d(c6)
        self.conv6 = nn.Conv2d(3 * cb, c6, 3, 2, 1)
        self.conv7 = nn.Conv2d(c6, c6, 3, 1, 1)
        self.bn7 = nn.BatchNorm2d(c6)
        self.conv8 = nn.Conv2d(c6, c6, 3, 1, 1)
        self.bn8 = nn.BatchNorm2d(c6)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(c6, num_classes)

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) if self.relu else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the network."""
        h = self._act(self.bn1(self.conv1(x)))
        b2 = self._act(self.bn2(self.conv2(h)))
        b3 = self._act(self.bn3(self.conv3(self.maxpool(h))))
        b4 = self._act(self.bn4(self.conv4(self.avgpool(h))))
        c6 = self.conv6(torch.cat([b2, b3, b4], dim=1))
        b5 = self._act(self.bn5(self.conv5(x)))
        s = b5 + c6
        b7 = self._act(self.bn7(self.conv7(s)))
        b8 = self._act(self.bn8(self.conv8(s)))
        y = self.gap(b7 + b8)
        return self.linear(torch.flatten(y, 1))


class _Up(nn.Module):
    """Nearest-neighbour ×2 upsampling (exported as ``Resize``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


class _LeftUnet(nn.Module):
    """Left U-Net of StackedUnets: max-pool downsampling (segment labels of oto-notes §6.2)."""

    def __init__(self, cin: int, c0: int, c: int) -> None:
        super().__init__()
        # 0-1-2-3 conv-bn-relu-conv
        self.stem = nn.Sequential(
            nn.Conv2d(cin, c0, 3, 1, 1),
            nn.BatchNorm2d(c0),
            nn.ReLU(),
            nn.Conv2d(c0, c0, 3, 1, 1),
        )
        # 4..9 maxpool-conv-relu-conv-relu-bn
        self.down1 = nn.Sequential(
            nn.MaxPool2d(2),
            nn.Conv2d(c0, c, 3, 1, 1),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, 1, 1),
            nn.ReLU(),
            nn.BatchNorm2d(c),
        )
        # 10-11-12 maxpool-conv-conv
        self.down2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, c, 3, 1, 1))
        # 13-14-15-19 maxpool-conv-conv-resize
        self.down3 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, c, 3, 1, 1), _Up())
        self.up24 = _Up()
        # 26..33 conv-conv-bn-relu-resize
        self.up26 = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1),
            nn.Conv2d(c, c0, 3, 1, 1),
            nn.BatchNorm2d(c0),
            nn.ReLU(),
            _Up(),
        )
        # 35..38 relu-conv-relu-bn
        self.out = nn.Sequential(nn.ReLU(), nn.Conv2d(c0, c0, 3, 1, 1), nn.ReLU(), nn.BatchNorm2d(c0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.stem(x)
        s1 = self.down1(s0)
        s2 = self.down2(s1)
        a20 = s2 + self.down3(s2)
        a25 = self.up24(a20) + s1
        a34 = self.up26(a25) + s0
        return self.out(a34)


class _RightUnet(nn.Module):
    """Right U-Net of StackedUnets: strided-convolution downsampling."""

    def __init__(self, cin: int, c0: int, c: int) -> None:
        super().__init__()
        # 39-41 conv-bn-relu
        self.stem = nn.Sequential(nn.Conv2d(cin, c0, 3, 1, 1), nn.BatchNorm2d(c0), nn.ReLU())
        # 42-44 conv(stride 2)-bn-relu
        self.down1 = nn.Sequential(nn.Conv2d(c0, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU())
        # 45..49 conv(stride 2)-relu-conv-bn-relu
        self.down2 = nn.Sequential(
            nn.Conv2d(c, c, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, 1, 1),
            nn.BatchNorm2d(c),
            nn.ReLU(),
        )
        # 50-51-52-56 conv(stride 2)-conv-resize
        self.down3 = nn.Sequential(nn.Conv2d(c, c, 3, 2, 1), nn.Conv2d(c, c, 3, 1, 1), _Up())
        self.up61 = _Up()
        # 63..70 conv-bn-relu-conv-bn-relu-resize
        self.up63 = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, c0, 3, 1, 1),
            nn.BatchNorm2d(c0),
            nn.ReLU(),
            _Up(),
        )
        # 72..75 relu-conv-relu-bn
        self.out = nn.Sequential(nn.ReLU(), nn.Conv2d(c0, c0, 3, 1, 1), nn.ReLU(), nn.BatchNorm2d(c0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t0 = self.stem(x)
        t1 = self.down1(t0)
        t2 = self.down2(t1)
        a57 = t2 + self.down3(t2)
        a62 = self.up61(a57) + t1
        a71 = self.up63(a62) + t0
        return self.out(a71)


class StackedUnets(nn.Module):
    """Two U-Nets on the same input, merged by an Add, then GAP → Linear (oto-notes §6.2).

    The left U-Net downsamples with max-pooling, the right one with stride-2 convolutions
    ("different downsamplers"). Each U-Net has three ×2 downsamplings (input 3×32×32, so its
    deepest level is 4×4) and nearest ``Resize`` upsampling; skip connections are Adds. The
    erasable segments (every consumer a joint) are ``left.down3``, ``left.up26``, ``left.out``,
    ``right.down3``, ``right.up63`` and ``right.out``, mirroring the vertex labels of the OTO
    rendering (13..19, 26..33, 35..38, 50..56, 63..70, 72..75).

    Args:
        width: Multiplies the channel counts (16 at full resolution, 32 below).
        num_classes: Linear outputs.
        in_channels: Input channels.
    """

    def __init__(self, width: float = 1.0, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        c0, c = scaled(16, width), scaled(32, width)
        self.left = _LeftUnet(in_channels, c0, c)
        self.right = _RightUnet(in_channels, c0, c)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(c0, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the network."""
        y = self.gap(self.left(x) + self.right(x))
        return self.linear(torch.flatten(y, 1))


class _SepConv(nn.Sequential):
    """DARTS separable convolution: (ReLU, depthwise k×k, pointwise 1×1, BN) twice."""

    def __init__(self, c: int, k: int, stride: int) -> None:
        p = k // 2
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(c, c, k, stride, p, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, c, k, 1, p, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c),
        )


class _DilConv(nn.Sequential):
    """DARTS dilated convolution: ReLU, depthwise 3×3 dilation 2, pointwise 1×1, BN."""

    def __init__(self, c: int, stride: int) -> None:
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(c, c, 3, stride, 2, dilation=2, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c),
        )


class _PoolConv(nn.Sequential):
    """3×3 pooling followed by a 1×1 conv and BN (gives the pooling candidates parameters)."""

    def __init__(self, c: int, stride: int, kind: str) -> None:
        pool: nn.Module = nn.MaxPool2d(3, stride, 1) if kind == "max" else nn.AvgPool2d(3, stride, 1, count_include_pad=False)
        super().__init__(pool, nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))


class _MixedOp(nn.Module):
    """One DARTS edge: the sum of all candidate operations."""

    CANDIDATES = (
        "sep_conv_3x3",
        "sep_conv_5x5",
        "dil_conv_3x3",
        "max_pool_3x3",
        "avg_pool_3x3",
    )

    def __init__(self, c: int, stride: int) -> None:
        super().__init__()
        self.sep_conv_3x3 = _SepConv(c, 3, stride)
        self.sep_conv_5x5 = _SepConv(c, 5, stride)
        self.dil_conv_3x3 = _DilConv(c, stride)
        self.max_pool_3x3 = _PoolConv(c, stride, "max")
        self.avg_pool_3x3 = _PoolConv(c, stride, "avg")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.sep_conv_3x3(x)
        for name in self.CANDIDATES[1:]:
            out = out + getattr(self, name)(x)
        return out


class _Cell(nn.Module):
    """A DARTS cell: two preprocessed inputs, ``steps`` nodes, output = concat of the nodes."""

    def __init__(
        self,
        c_pp: int,
        c_p: int,
        c: int,
        steps: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        # After a reduction cell, s0 has twice the resolution of s1: preprocess it with stride 2.
        self.pre0 = nn.Sequential(nn.ReLU(), ConvBN(c_pp, c, 1, stride=2 if reduction_prev else 1))
        self.pre1 = nn.Sequential(nn.ReLU(), ConvBN(c_p, c, 1))
        self.steps = steps
        self.edges = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                self.edges.append(_MixedOp(c, 2 if reduction and j < 2 else 1))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        k = 0
        for _ in range(self.steps):
            node = self.edges[k](states[0])
            for j in range(1, len(states)):
                node = node + self.edges[k + j](states[j])
            k += len(states)
            states.append(node)
        return torch.cat(states[2:], dim=1)


class DARTSSupernet(nn.Module):
    """A small DARTS super-network: stem, ``n_cells`` cells, GAP, Linear (input 3×32×32).

    Every edge of a cell is a :class:`_MixedOp` summing five candidates (sep-conv 3×3 and 5×5,
    dil-conv 3×3, max-pool+1×1 conv+BN, avg-pool+1×1 conv+BN), each a segment whose only consumer
    is an Add, hence a GeZIG. Cells at 1/3 and 2/3 of the depth are reduction cells (stride 2 on
    edges from the cell inputs, channels doubled). There are no architecture weights (as in OTOv3).

    Args:
        width: Multiplies the initial channel count (8).
        n_cells: Number of cells.
        steps: Intermediate nodes per cell.
        num_classes: Linear outputs.
        in_channels: Input channels.
    """

    def __init__(
        self,
        width: float = 1.0,
        n_cells: int = 3,
        steps: int = 2,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        c = scaled(8, width)
        self.stem = ConvBN(in_channels, steps * c, 3)
        c_pp, c_p = steps * c, steps * c
        reduce_at = {n_cells // 3, 2 * n_cells // 3} if n_cells >= 3 else set()
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(n_cells):
            reduction = i in reduce_at
            if reduction:
                c *= 2
            self.cells.append(_Cell(c_pp, c_p, c, steps, reduction, reduction_prev))
            reduction_prev = reduction
            c_pp, c_p = c_p, steps * c
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(c_p, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the network."""
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.linear(torch.flatten(self.gap(s1), 1))


class _SuperResBlock(nn.Module):
    """``relu(x + conv3x3-bn(x) + conv5x5-bn(x) + conv7x7-bn(x))``."""

    def __init__(self, c: int, kernels: tuple[int, ...]) -> None:
        super().__init__()
        self.kernels = kernels
        for k in kernels:
            self.add_module(f"conv{k}x{k}", ConvBN(c, c, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for k in self.kernels:
            out = out + getattr(self, f"conv{k}x{k}")(x)
        return F.relu(out)


class SuperResNet(nn.Module):
    """A ZenNAS-style SuperResNet: stages of super-residual blocks (input 3×32×32).

    Each block adds parallel 3×3/5×5/7×7 conv-BN candidates to the identity; each candidate is a
    GeZIG (its consumer is an Add). Stages are joined by stride-2 conv-BN-ReLU transitions that
    are not erasable.

    Args:
        width: Multiplies the channel counts (16, 32).
        blocks: Blocks per stage.
        kernels: Candidate kernel sizes.
        num_classes: Linear outputs.
        in_channels: Input channels.
    """

    def __init__(
        self,
        width: float = 1.0,
        blocks: tuple[int, ...] = (2, 2),
        kernels: tuple[int, ...] = (3, 5, 7),
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        c = scaled(16, width)
        self.stem = ConvBNReLU(in_channels, c, 3)
        layers: list[nn.Module] = []
        for s, n in enumerate(blocks):
            if s > 0:
                layers.append(ConvBNReLU(c, 2 * c, 3, stride=2))
                c *= 2
            layers.extend(_SuperResBlock(c, kernels) for _ in range(n))
        self.stages = nn.Sequential(*layers)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the network."""
        return self.linear(torch.flatten(self.gap(self.stages(self.stem(x))), 1))


class _Bottleneck(nn.Sequential):
    """RegNet X bottleneck: 1×1 conv-BN-ReLU, 3×3 group conv-BN-ReLU, 1×1 conv-BN."""

    def __init__(self, cin: int, cout: int, stride: int, ratio: float, group_width: int) -> None:
        mid = max(group_width, round(cout * ratio / group_width) * group_width)
        super().__init__(
            ConvBNReLU(cin, mid, 1),
            ConvBNReLU(mid, mid, 3, stride=stride, groups=mid // group_width),
            ConvBN(mid, cout, 1),
        )


class _RegNetBlock(nn.Module):
    """``relu(shortcut(x) + sum(candidate(x)))`` with parallel bottleneck candidates."""

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        candidates: tuple[tuple[float, int], ...],
    ) -> None:
        super().__init__()
        self.shortcut: nn.Module = ConvBN(cin, cout, 1, stride=stride) if stride != 1 or cin != cout else nn.Identity()
        self.candidates = nn.ModuleList(_Bottleneck(cin, cout, stride, r, g) for r, g in candidates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shortcut(x)
        for cand in self.candidates:
            out = out + cand(x)
        return F.relu(out)


class RegNetStyle(nn.Module):
    """RegNet-like network whose blocks sum several parallel bottleneck candidates (input 3×32×32).

    Each candidate differs in bottleneck ratio and group width; each is a GeZIG. The first block
    of every stage has stride 2 and a 1×1 conv-BN projection shortcut.

    Args:
        width: Multiplies the stage widths (16, 32, 64, … doubling per stage).
        depths: Blocks per stage.
        candidates: ``(bottleneck ratio, group width)`` per candidate.
        num_classes: Linear outputs.
        in_channels: Input channels.
    """

    def __init__(
        self,
        width: float = 1.0,
        depths: tuple[int, ...] = (1, 2, 1),
        candidates: tuple[tuple[float, int], ...] = ((1.0, 8), (0.5, 4), (0.25, 4)),
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        widths = [max(8, scaled(16 * 2**i, width) // 8 * 8) for i in range(len(depths))]
        self.stem = ConvBNReLU(in_channels, widths[0], 3)
        blocks: list[nn.Module] = []
        cin = widths[0]
        for w, d in zip(widths, depths, strict=True):
            for i in range(d):
                blocks.append(_RegNetBlock(cin, w, 2 if i == 0 else 1, candidates))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the network."""
        return self.linear(torch.flatten(self.gap(self.blocks(self.stem(x))), 1))
