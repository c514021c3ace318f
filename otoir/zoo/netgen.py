"""Random CNN-like ONNX networks for the correctness oracle, built without torch.

:func:`generate` draws a small network from a seed: a stem convolution, a few blocks, and a
head. Each block is one of

* a chain (Conv, then a random subset of BatchNormalization / activation / pooling),
* a residual ``Add`` of the block input and a chain (or a ``Sum``/``Add`` of two or three
  chains),
* a ``Concat`` of chains along the channel axis, the height axis or the width axis (positive
  or negative ``axis``), followed by a random consumer (Conv, pooling, ReLU, BatchNorm or none),
* a pair of Conv nodes that read **one** weight initializer (shared weights), joined by Add or
  Concat,
* a module (Conv [+ BatchNorm] + ReLU, all parameters shared) applied twice in sequence,
* a ``Concat`` of a chain with a constant tensor,
* a pooling step (stride 2, or height-only),
* a ``Sub`` or ``Mul`` of two chains,
* nested concats (channel inside height/width and back), a channel concat read by two
  consumers, a tensor concatenated with itself, a channel concat split again (``Split``),
* a layout detour (NCHW -> NHWC Transpose, element-wise, back), a depthwise Conv, or a ``Pad``
  before an unpadded Conv.

The head flattens (after global pooling or directly) into a ``Gemm`` (or ``MatMul`` + ``Add``),
sometimes from two tensors concatenated *after* flattening, along the feature or the batch
axis. Some intermediate tensors are also graph outputs. Every tensor the graph computes is used
or is a graph output, and all shapes are static (batch 2), so the network runs as built in
ONNX Runtime.

Everything is a function of the seed: the same seed gives the same model, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

__all__ = ["GeneratedNet", "FEATURES", "generate", "generate_proto"]

OPSET = 17
IR_VERSION = 10
BATCH = 2

#: Feature tags a generated network may carry (see :attr:`GeneratedNet.features`).
FEATURES = (
    "concat-channel",
    "concat-height",
    "concat-width",
    "concat-flat",
    "concat-batch",
    "concat-const",
    "shared-weight",
    "reused-module",
    "extra-output",
    "residual",
    "pool",
    "matmul-head",
    "other-joint",
    "concat-self",
    "split",
    "layout",
)


@dataclass
class GeneratedNet:
    """A generated network.

    Attributes:
        seed: The seed it was drawn from.
        proto: The model (opset 17, IR version 10), checked by ``onnx.checker``.
        features: Tags from :data:`FEATURES` the network exercises.
    """

    seed: int
    proto: onnx.ModelProto
    features: frozenset[str] = field(default_factory=frozenset)

    def model(self) -> ir.Model:
        """A fresh onnx-ir model (callers may modify it)."""
        return ir.serde.deserialize_model(self.proto)


@dataclass(frozen=True)
class _T:
    """A tensor of the graph under construction: its name and static shape."""

    name: str
    shape: tuple[int, ...]

    @property
    def c(self) -> int:
        return self.shape[1]


class _Net:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.counts: dict[str, int] = {}
        self.features: set[str] = set()
        self.computed: list[_T] = []  # every node output, in order

    # -- naming and constants ---------------------------------------------------------------
    def fresh(self, prefix: str) -> str:
        i = self.counts.get(prefix, 0)
        self.counts[prefix] = i + 1
        return f"{prefix}{i}"

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def int_const(self, prefix: str, values: list[int]) -> str:
        name = self.fresh(prefix)
        self.inits.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
        return name

    def node(self, op: str, inputs: list[str], shape: tuple[int, ...], **attrs) -> _T:
        name = self.fresh(op.lower())
        out = _T(f"{name}_out", tuple(int(d) for d in shape))
        self.nodes.append(helper.make_node(op, inputs, [out.name], name=name, **attrs))
        self.computed.append(out)
        return out

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    # -- layers ----------------------------------------------------------------------------
    def conv_weight(self, cout: int, cin: int, k: int) -> str:
        w = self.rng.normal(0.0, np.sqrt(2.0 / (cin * k * k)), size=(cout, cin, k, k))
        return self.const(self.fresh("w"), w)

    def conv(self, x: _T, cout: int, k: int | None = None, stride: int = 1, weight: str | None = None,
             bias: str | None | bool = None) -> _T:
        if k is None:
            k = int(self.pick([1, 3]))
        if weight is None:
            weight = self.conv_weight(cout, x.c, k)
        inputs = [x.name, weight]
        if bias is None:
            bias = self.chance(0.5)
        if bias is True:
            inputs.append(self.const(self.fresh("b"), self.rng.normal(0.0, 0.1, size=cout)))
        elif isinstance(bias, str):
            inputs.append(bias)
        pad = k // 2
        _, _, h, w = x.shape
        oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        return self.node("Conv", inputs, (BATCH, cout, oh, ow), kernel_shape=[k, k], strides=[stride, stride],
                         pads=[pad] * 4)

    def bn_params(self, c: int) -> list[str]:
        return [
            self.const(self.fresh("bn_scale"), self.rng.uniform(0.5, 1.5, size=c)),
            self.const(self.fresh("bn_bias"), self.rng.normal(0.0, 0.2, size=c)),
            self.const(self.fresh("bn_mean"), self.rng.normal(0.0, 0.2, size=c)),
            self.const(self.fresh("bn_var"), self.rng.uniform(0.5, 1.5, size=c)),
        ]

    def bn(self, x: _T, params: list[str] | None = None) -> _T:
        params = params or self.bn_params(x.c)
        return self.node("BatchNormalization", [x.name, *params], x.shape, epsilon=1e-5)

    def act(self, x: _T, op: str | None = None) -> _T:
        op = op or self.pick(["Relu", "Relu", "Relu", "LeakyRelu", "Tanh", "Sigmoid"])
        return self.node(op, [x.name], x.shape)

    def pool(self, x: _T, kind: str | None = None) -> _T:
        """A 3x3 stride-1 pooling (shape kept)."""
        op = kind or self.pick(["MaxPool", "AveragePool"])
        attrs = {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}
        if op == "AveragePool":
            attrs["count_include_pad"] = 0
        return self.node(op, [x.name], x.shape, **attrs)

    def downsample(self, x: _T) -> _T:
        """Halves height and width (or the height only)."""
        _, c, h, w = x.shape
        op = self.pick(["MaxPool", "AveragePool"])
        if h >= 4 and w >= 4 and self.chance(0.6):
            return self.node(op, [x.name], (BATCH, c, h // 2, w // 2), kernel_shape=[2, 2], strides=[2, 2])
        if h >= 4:
            return self.node(op, [x.name], (BATCH, c, h // 2, w), kernel_shape=[2, 1], strides=[2, 1])
        return x

    def chain(self, x: _T, cout: int, keep_shape: bool = True) -> _T:
        """Conv, then a random subset of BN / activation / pooling (spatial shape kept)."""
        if self.chance(0.2):
            x = self.pool(x)
        y = self.conv(x, cout)
        if self.chance(0.7):
            y = self.bn(y)
        if self.chance(0.75):
            y = self.act(y)
        if self.chance(0.15):
            y = self.pool(y)
            self.features.add("pool")
        if self.chance(0.15):
            y = self.conv(y, cout)
        return y

    def consumer(self, x: _T) -> _T:
        """A random op reading the output of a Concat (or nothing)."""
        r = self.rng.random()
        if r < 0.3:
            return self.chain(x, int(self.rng.integers(2, 6)))
        if r < 0.45:
            return self.act(x, "Relu")
        if r < 0.6:
            return self.pool(x)
        if r < 0.75:
            return self.bn(x)
        return x

    # -- blocks ----------------------------------------------------------------------------
    def block(self, hist: list[_T]) -> _T:
        x = hist[-1]
        kind = self.pick(["chain", "residual", "sum", "cat-c", "cat-c", "cat-h", "cat-w", "shared", "reuse",
                          "cat-const", "down", "sub", "mul", "nested-cat", "fanout-cat", "cat-dup", "split",
                          "layout"])
        _, c, h, w = x.shape
        if kind == "chain":
            return self.chain(x, int(self.rng.integers(2, 7)))
        if kind == "residual":
            self.features.add("residual")
            same = [t for t in hist[:-1] if t.shape == x.shape]
            other = self.pick(same) if same and self.chance(0.4) else x
            return self.node("Add", [other.name, self.chain(x, c).name], x.shape)
        if kind == "sum":
            self.features.add("residual")
            cout = int(self.rng.integers(2, 6))
            outs = [self.chain(x, cout) for _ in range(int(self.rng.integers(2, 4)))]
            if len(outs) == 2 and self.chance(0.5):
                return self.node("Add", [o.name for o in outs], outs[0].shape)
            return self.node("Sum", [o.name for o in outs], outs[0].shape)
        if kind == "cat-c":
            self.features.add("concat-channel")
            outs = [self.chain(x, int(self.rng.integers(1, 4))) for _ in range(int(self.rng.integers(2, 4)))]
            if self.chance(0.25):
                outs.append(x)
            axis = self.pick([1, 1, -3])
            y = self.node("Concat", [o.name for o in outs], (BATCH, sum(o.c for o in outs), h, w), axis=axis)
            return self.consumer(y)
        if kind in ("cat-h", "cat-w"):
            self.features.add("concat-height" if kind == "cat-h" else "concat-width")
            ax = 2 if kind == "cat-h" else 3
            cout = int(self.rng.integers(2, 5))
            outs = [self.chain(x, cout) for _ in range(int(self.rng.integers(2, 4)))]
            if kind == "cat-h" and h >= 4 and self.chance(0.3):
                _, oc, oh, ow = outs[-1].shape
                outs[-1] = self.node("MaxPool", [outs[-1].name], (BATCH, oc, oh // 2, ow), kernel_shape=[2, 1],
                                     strides=[2, 1])
            shape = list(outs[0].shape)
            shape[ax] = sum(o.shape[ax] for o in outs)
            axis = self.pick([ax, ax - 4])
            y = self.node("Concat", [o.name for o in outs], tuple(shape), axis=axis)
            return self.consumer(y)
        if kind == "shared":
            self.features.add("shared-weight")
            cout = int(self.rng.integers(2, 6))
            k = int(self.pick([1, 3]))
            wname = self.conv_weight(cout, c, k)
            # the second use reads x itself (through ReLU or pooling) or another tensor of the same
            # shape computed by a different stem
            same = [t for t in hist[:-1] if t.shape == x.shape]
            if same and self.chance(0.5):
                other = self.pick(same)
            elif same or self.chance(0.5):
                other = self.act(x, "Relu") if self.chance(0.5) else self.pool(x)
            else:
                other = self.chain(x, c)
            a = self.conv(x, cout, k, weight=wname, bias=False)
            b = self.conv(other, cout, k, weight=wname, bias=False)
            if self.chance(0.5):
                a = self.bn(a)
            if self.chance(0.5):
                y = self.node("Add", [a.name, b.name], a.shape)
            else:
                self.features.add("concat-channel")
                y = self.node("Concat", [a.name, b.name], (BATCH, 2 * cout, a.shape[2], a.shape[3]), axis=1)
            return self.act(y, "Relu") if self.chance(0.5) else y
        if kind == "reuse":
            self.features.add("reused-module")
            k = int(self.pick([1, 3]))
            wname = self.conv_weight(c, c, k)
            bname = self.const(self.fresh("b"), self.rng.normal(0.0, 0.1, size=c)) if self.chance(0.5) else False
            bnp = self.bn_params(c) if self.chance(0.5) else None
            y = x
            for _ in range(2):
                y = self.conv(y, c, k, weight=wname, bias=bname)
                if bnp is not None:
                    y = self.bn(y, bnp)
                y = self.act(y, "Relu")
            return y
        if kind == "cat-const":
            self.features.add("concat-const")
            y = self.chain(x, int(self.rng.integers(2, 5)))
            _, yc, yh, yw = y.shape
            k = int(self.rng.integers(1, 3))
            cname = self.const(self.fresh("cst"), self.rng.normal(0.0, 1.0, size=(BATCH, k, yh, yw)))
            ins = [y.name, cname] if self.chance(0.5) else [cname, y.name]
            return self.consumer(self.node("Concat", ins, (BATCH, yc + k, yh, yw), axis=1))
        if kind in ("sub", "mul"):
            self.features.add("other-joint")
            cout = int(self.rng.integers(2, 5))
            a, b = self.chain(x, cout), self.chain(x, cout)
            return self.node("Sub" if kind == "sub" else "Mul", [a.name, b.name], a.shape)
        if kind == "nested-cat":
            # a channel concat inside a height (or width) concat, or the other way round
            self.features.update({"concat-channel", "concat-height"})
            cout = int(self.rng.integers(1, 3))
            a = self.node("Concat", [self.chain(x, cout).name, self.chain(x, cout).name], (BATCH, 2 * cout, h, w),
                          axis=1)
            b = self.chain(x, 2 * cout)
            ax = int(self.pick([2, 3]))
            shape = [BATCH, 2 * cout, h, w]
            shape[ax] *= 2
            y = self.node("Concat", [a.name, b.name], tuple(shape), axis=ax)
            if self.chance(0.5):
                y2 = self.node("Concat", [self.chain(x, 2 * cout).name, self.chain(x, 2 * cout).name],
                               tuple(shape), axis=ax)
                y = self.node("Concat", [y.name, y2.name], (BATCH, 4 * cout, *shape[2:]), axis=1)
            return self.consumer(y)
        if kind == "fanout-cat":
            # a channel concat read by two consumers that are added again
            self.features.add("concat-channel")
            outs = [self.chain(x, int(self.rng.integers(1, 4))) for _ in range(2)]
            y = self.node("Concat", [o.name for o in outs], (BATCH, sum(o.c for o in outs), h, w), axis=1)
            cout = int(self.rng.integers(2, 5))
            a, b = self.chain(y, cout), self.chain(y, cout)
            return self.node("Add", [a.name, b.name], a.shape)
        if kind == "cat-dup":
            # one tensor concatenated with itself
            self.features.add("concat-self")
            a = self.chain(x, int(self.rng.integers(1, 4)))
            if self.chance(0.5):
                y = self.node("Concat", [a.name, a.name], (BATCH, 2 * a.c, h, w), axis=1)
            else:
                self.features.add("concat-height")
                y = self.node("Concat", [a.name, a.name], (BATCH, a.c, 2 * h, w), axis=2)
            return self.consumer(y)
        if kind == "split":
            # a channel concat split again along the channels
            self.features.update({"concat-channel", "split"})
            outs = [self.chain(x, int(self.rng.integers(1, 4))) for _ in range(2)]
            ctot = sum(o.c for o in outs)
            y = self.node("Concat", [o.name for o in outs], (BATCH, ctot, h, w), axis=1)
            k = int(self.rng.integers(1, ctot)) if ctot > 1 else 0
            if k == 0:
                return self.consumer(y)
            name = self.fresh("split")
            p1, p2 = _T(f"{name}_a", (BATCH, k, h, w)), _T(f"{name}_b", (BATCH, ctot - k, h, w))
            sizes = self.int_const("split_sizes", [k, ctot - k])
            self.nodes.append(helper.make_node("Split", [y.name, sizes], [p1.name, p2.name], axis=1, name=name))
            self.computed += [p1, p2]
            cout = int(self.rng.integers(2, 5))
            return self.node("Add", [self.chain(p1, cout).name, self.chain(p2, cout).name], (BATCH, cout, h, w))
        if kind == "layout":
            # NCHW -> NHWC -> element-wise -> NCHW inside a chain, or a grouped / padded conv
            r = self.rng.random()
            y = self.chain(x, int(self.rng.integers(2, 5)))
            _, yc, yh, yw = y.shape
            self.features.add("layout")
            if r < 0.4:
                t = self.node("Transpose", [y.name], (BATCH, yh, yw, yc), perm=[0, 2, 3, 1])
                t = self.act(t, "Relu")
                return self.node("Transpose", [t.name], y.shape, perm=[0, 3, 1, 2])
            if r < 0.7:
                wname = self.conv_weight(yc, 1, 3)
                return self.node("Conv", [y.name, wname], y.shape, kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=yc)
            pd = self.node("Pad", [y.name, self.int_const("pads", [0, 0, 1, 1, 0, 0, 1, 1])], (BATCH, yc, yh + 2, yw + 2))
            return self.node("Conv", [pd.name, self.conv_weight(yc, yc, 3)], y.shape, kernel_shape=[3, 3])
        # "down"
        self.features.add("pool")
        return self.downsample(x)

    # -- heads -----------------------------------------------------------------------------
    def flat(self, x: _T) -> _T:
        if self.chance(0.5) or x.shape[2] * x.shape[3] * x.c > 200:
            x = self.node("GlobalAveragePool", [x.name], (BATCH, x.c, 1, 1))
        return self.node("Flatten", [x.name], (BATCH, int(np.prod(x.shape[1:]))), axis=1)

    def linear(self, x: _T, nout: int) -> _T:
        fin = x.shape[1]
        if self.chance(0.3):
            self.features.add("matmul-head")
            wname = self.const(self.fresh("fc_w"), self.rng.normal(0.0, 1.0 / np.sqrt(fin), size=(fin, nout)))
            y = self.node("MatMul", [x.name, wname], (x.shape[0], nout))
            bname = self.const(self.fresh("fc_b"), self.rng.normal(0.0, 0.1, size=nout))
            return self.node("Add", [y.name, bname], y.shape)
        trans_b = int(self.chance(0.7))
        wshape = (nout, fin) if trans_b else (fin, nout)
        wname = self.const(self.fresh("fc_w"), self.rng.normal(0.0, 1.0 / np.sqrt(fin), size=wshape))
        bname = self.const(self.fresh("fc_b"), self.rng.normal(0.0, 0.1, size=nout))
        return self.node("Gemm", [x.name, wname, bname], (x.shape[0], nout), transB=trans_b)

    def head(self, hist: list[_T]) -> _T:
        x = hist[-1]
        nout = int(self.rng.integers(2, 5))
        r = self.rng.random()
        if r < 0.35 and len(hist) > 1:
            other = self.pick(hist[:-1])
            a, b = self.flat(x), self.flat(other)
            if self.chance(0.75):
                self.features.add("concat-flat")
                y = self.node("Concat", [a.name, b.name], (BATCH, a.shape[1] + b.shape[1]), axis=self.pick([1, -1]))
            else:
                self.features.add("concat-batch")
                if b.shape[1] != a.shape[1]:
                    b = self.linear(b, a.shape[1])
                y = self.node("Concat", [a.name, b.name], (2 * BATCH, a.shape[1]), axis=0)
            return self.linear(y, nout)
        return self.linear(self.flat(x), nout)


def _value_info(t: _T) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.shape))


def generate_proto(seed: int, *, max_blocks: int = 5) -> tuple[onnx.ModelProto, frozenset[str]]:
    """Draws one network; returns the model and its feature tags (see :func:`generate`)."""
    rng = np.random.default_rng(seed)
    net = _Net(rng)
    cin = int(rng.integers(2, 5))
    h, w = int(net.pick([6, 8])), int(net.pick([5, 6, 8]))
    x = _T("x", (BATCH, cin, h, w))
    y = net.conv(x, int(rng.integers(2, 6)), 3)
    if net.chance(0.5):
        y = net.bn(y)
    hist = [net.act(y, "Relu")]
    for _ in range(int(rng.integers(1, max_blocks + 1))):
        hist.append(net.block(hist))
    out = net.head(hist)
    outputs = [out]
    # Every computed tensor must reach an output: unused ones (a block's skipped input never
    # occurs, but a head may ignore a block output) become graph outputs too.
    used = {i for n in net.nodes for i in n.input}
    dangling = [t for t in net.computed if t.name not in used and t.name != out.name]
    outputs += dangling
    extra = [t for t in net.computed if t.name in used and t.name != out.name]
    if extra and net.chance(0.4):
        outputs.append(net.pick(extra))
    if len(outputs) > 1:
        net.features.add("extra-output")
    graph = helper.make_graph(net.nodes, f"netgen_{seed}", [_value_info(x)], [_value_info(t) for t in outputs],
                              net.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="otoir.zoo.netgen")
    onnx.checker.check_model(proto, full_check=True)
    return proto, frozenset(net.features)


def generate(seed: int, *, max_blocks: int = 5) -> GeneratedNet:
    """Draws one network from ``seed`` (deterministic).

    Args:
        seed: Seed of ``numpy.random.default_rng``.
        max_blocks: Most blocks after the stem (at least one is drawn).

    Returns:
        The network with input ``x`` of shape ``(2, C, H, W)`` (C in 2..4, H in {6, 8}, W in
        {5, 6, 8}), one head output (``(2, K)``, or ``(4, K)`` after a batch concat) and
        possibly further graph outputs. Node names are ``conv0``, ``concat1`` …
    """
    proto, features = generate_proto(seed, max_blocks=max_blocks)
    return GeneratedNet(seed, proto, features)
