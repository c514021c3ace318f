"""Random convolutional DAGs built directly in onnx-ir (no torch).

:func:`random_conv_dag` draws a network of Conv / BatchNormalization (inference form, one
output) / Relu / MaxPool / AveragePool branches joined by ``Add`` and ``Concat`` (axis 1), with a
``GlobalAveragePool → Flatten → Gemm`` head. Everything is a function of the seed, so a failing
property test can be reproduced from its seed alone.

Structure: a stem conv, then ``n_blocks`` blocks. A block reads the latest tensor and, with some
probability, one earlier tensor of the same spatial size (a skip). It has 1–``max_branches``
branches, each a short chain (conv, then a random subset of BN / ReLU / pooling, sometimes a
pooling before the conv), all reading a block input; several branches are joined by an ``Add``
(equal channels; an input of matching width may join as the identity) or a ``Concat``. A block
may downsample by 2 (all its branches then start with a stride-2 conv or a 2×2 max-pool). Every
tensor but the head's input is consumed, so the graph has no dead nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

__all__ = ["random_conv_dag"]

OPSET = 17
IR_VERSION = 10


@dataclass
class _T:
    """A tensor of the graph under construction."""

    value: ir.Value
    channels: int
    size: int  # spatial side (square maps)


class _Builder:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[ir.Node] = []
        self.initializers: list[ir.Value] = []
        self.counts: dict[str, int] = {}

    def name(self, op: str) -> str:
        i = self.counts.get(op, 0)
        self.counts[op] = i + 1
        return f"{op}{i}"

    def init(self, name: str, array: np.ndarray) -> ir.Value:
        array = np.ascontiguousarray(array, dtype=np.float32)
        v = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.FLOAT))
        v.const_value = ir.tensor(array, name=name)
        self.initializers.append(v)
        return v

    def node(self, op: str, inputs: list[ir.Value], attrs: dict | None = None, name: str | None = None) -> ir.Value:
        name = name or self.name(op.lower())
        out = ir.Value(name=f"{name}_out")
        self.nodes.append(ir.node(op, inputs, attrs or {}, outputs=[out], name=name))
        return out

    # ops --------------------------------------------------------------------------------
    def conv(self, x: _T, cout: int, kernel: int, stride: int = 1) -> _T:
        name = self.name("conv")
        fan_in = x.channels * kernel * kernel
        w = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(cout, x.channels, kernel, kernel))
        inputs = [x.value, self.init(f"{name}.weight", w)]
        if self.rng.random() < 0.5:
            inputs.append(self.init(f"{name}.bias", self.rng.normal(0.0, 0.1, size=cout)))
        pad = kernel // 2
        out = self.node(
            "Conv",
            inputs,
            {"kernel_shape": [kernel, kernel], "strides": [stride, stride], "pads": [pad] * 4},
            name=name,
        )
        size = (x.size + 2 * pad - kernel) // stride + 1
        return _T(out, cout, size)

    def bn(self, x: _T) -> _T:
        name = self.name("bn")
        c = x.channels
        inputs = [
            x.value,
            self.init(f"{name}.scale", self.rng.uniform(0.5, 1.5, size=c)),
            self.init(f"{name}.bias", self.rng.normal(0.0, 0.2, size=c)),
            self.init(f"{name}.mean", self.rng.normal(0.0, 0.2, size=c)),
            self.init(f"{name}.var", self.rng.uniform(0.5, 1.5, size=c)),
        ]
        return _T(self.node("BatchNormalization", inputs, {"epsilon": 1e-5}, name=name), c, x.size)

    def relu(self, x: _T) -> _T:
        return _T(self.node("Relu", [x.value]), x.channels, x.size)

    def pool(self, x: _T, kind: str, kernel: int = 3, stride: int = 1) -> _T:
        pad = 1 if kernel == 3 else 0
        attrs = {"kernel_shape": [kernel, kernel], "strides": [stride, stride], "pads": [pad] * 4}
        op = "MaxPool" if kind == "max" else "AveragePool"
        if op == "AveragePool":
            attrs["count_include_pad"] = 0
        size = (x.size + 2 * pad - kernel) // stride + 1
        return _T(self.node(op, [x.value], attrs), x.channels, size)

    # structure -----------------------------------------------------------------------------
    def branch(self, x: _T, cout: int, downsample: bool) -> _T:
        rng = self.rng
        if downsample and rng.random() < 0.3:
            x = self.pool(x, "max", kernel=2, stride=2)
            downsample = False
        elif rng.random() < 0.25:
            x = self.pool(x, "max" if rng.random() < 0.5 else "avg")
        kernel = int(rng.choice([1, 3]))
        y = self.conv(x, cout, 3 if downsample else kernel, stride=2 if downsample else 1)
        if rng.random() < 0.8:
            y = self.bn(y)
        if rng.random() < 0.7:
            y = self.relu(y)
        if rng.random() < 0.2:
            y = self.pool(y, "max" if rng.random() < 0.5 else "avg")
        if rng.random() < 0.2:  # a second conv makes longer segments
            y = self.conv(y, cout, int(rng.choice([1, 3])))
            if rng.random() < 0.7:
                y = self.bn(y)
        return y


def random_conv_dag(
    seed: int,
    n_blocks: int = 4,
    channels: tuple[int, int] = (2, 8),
    in_channels: int = 3,
    image_size: int = 8,
    num_classes: int = 5,
    max_branches: int = 3,
    skip_probability: float = 0.4,
    downsample_probability: float = 0.2,
) -> ir.Model:
    """Builds a random convolutional DAG, deterministic in ``seed``.

    Args:
        seed: Seed of ``numpy.random.default_rng``; the same arguments give the same model.
        n_blocks: Number of blocks after the stem.
        channels: Inclusive range of channel counts drawn for convolutions.
        in_channels: Input channels.
        image_size: Input height and width.
        num_classes: Outputs of the final Gemm.
        max_branches: Most branches per block.
        skip_probability: Chance that a block also reads an earlier tensor.
        downsample_probability: Chance that a block halves the spatial size (while ≥ 4).

    Returns:
        An onnx-ir model (opset 17, IR version 10) with input ``input`` of shape
        ``(N, in_channels, image_size, image_size)`` (``N`` symbolic) and output ``output`` of
        shape ``(N, num_classes)``. Node names are ``conv0``, ``bn0``, ``add0`` …; initializers
        are ``conv0.weight``, ``conv0.bias``, ``bn0.scale``/``.bias``/``.mean``/``.var``,
        ``fc.weight``, ``fc.bias``.
    """
    rng = np.random.default_rng(seed)
    lo, hi = channels
    b = _Builder(rng)

    def draw_channels() -> int:
        return int(rng.integers(lo, hi + 1))

    x_in = ir.Value(
        name="input",
        shape=ir.Shape(["N", in_channels, image_size, image_size]),
        type=ir.TensorType(ir.DataType.FLOAT),
    )
    x = b.relu(b.bn(b.conv(_T(x_in, in_channels, image_size), draw_channels(), 3)))
    history: list[_T] = [x]
    for _ in range(n_blocks):
        latest = history[-1]
        inputs = [latest]
        earlier = [t for t in history[:-1] if t.size == latest.size]
        if earlier and rng.random() < skip_probability:
            inputs.append(earlier[int(rng.integers(len(earlier)))])
        downsample = latest.size >= 4 and latest.size % 2 == 0 and rng.random() < downsample_probability
        n_br = int(rng.integers(1, max_branches + 1))
        n_br = max(n_br, len(inputs))  # every block input feeds at least one branch
        join = "add" if rng.random() < 0.5 else "concat"
        cout = draw_channels()
        branches: list[_T] = []
        for i in range(n_br):
            src = inputs[i] if i < len(inputs) else inputs[int(rng.integers(len(inputs)))]
            branches.append(b.branch(src, cout if join == "add" else draw_channels(), downsample))
        if join == "add" and not downsample:
            for t in inputs:  # identity joins the sum when widths match
                if t.channels == cout and rng.random() < 0.5:
                    branches.append(t)
        if len(branches) == 1:
            out = branches[0]
        elif join == "add":
            acc = branches[0]
            for t in branches[1:]:
                acc = _T(b.node("Add", [acc.value, t.value]), cout, acc.size)
            out = acc
        else:
            out = _T(
                b.node("Concat", [t.value for t in branches], {"axis": 1}),
                sum(t.channels for t in branches),
                branches[0].size,
            )
        history.append(out)

    last = history[-1]
    gap = b.node("GlobalAveragePool", [last.value], name="gap")
    flat = b.node("Flatten", [gap], {"axis": 1}, name="flatten")
    w = b.init("fc.weight", rng.normal(0.0, 1.0 / np.sqrt(last.channels), size=(num_classes, last.channels)))
    bias = b.init("fc.bias", rng.normal(0.0, 0.1, size=num_classes))
    out = ir.Value(name="output", shape=ir.Shape(["N", num_classes]), type=ir.TensorType(ir.DataType.FLOAT))
    b.nodes.append(ir.node("Gemm", [flat, w, bias], {"transB": 1}, outputs=[out], name="fc"))

    graph = ir.Graph(
        [x_in],
        [out],
        nodes=b.nodes,
        initializers=b.initializers,
        opset_imports={"": OPSET},
        name=f"random_conv_dag_{seed}",
    )
    return ir.Model(graph, ir_version=IR_VERSION, producer_name="otoir.zoo.random_dag")
