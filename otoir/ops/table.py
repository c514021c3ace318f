"""Built-in op rules (registered when the package :mod:`otoir.ops` is imported).

Besides the vertex kind and channel behaviour, each rule carries the op's zero semantics
(``maps_zero``, refined by a ``zero_out`` callable where the answer depends on the node) and
its FLOP formula (``flops``: FLOPs per sample, multiply and add counted separately): Conv
``2·Cout·Cin/g·k·Hout·Wout``, ConvTranspose ``2·Cin·Cout/g·k·Hin·Win``, Gemm/MatMul ``2·M·K·N``,
normalisations 5 per element (BatchNorm 4), pooling and ReduceMean/ReduceSum one per input
element, the common element-wise ops one per output element, everything else 0.
"""

from __future__ import annotations

import math

import numpy as np

from otoir.ops.fold import FOLDS, constant_array
from otoir.ops.rules import ChannelMap as C
from otoir.ops.rules import ChannelWalk as W
from otoir.ops.rules import ConstFlow as F
from otoir.ops.rules import DropInput as D
from otoir.ops.rules import OpRule, ParamSpec, VertexKind, register_rule
from otoir.ops.rules import VertexKind as K
from otoir.ops.rules import ZeroJoin as Z

__all__: list[str] = []

# -- behaviour fields shared by op families (set on the rules by _add) ------------------------
#: ``OpRule.channel_walk``: where erasing's channel removal after a Concat passes, slices or ends.
_CHANNEL_WALK: dict[str, W] = {
    **dict.fromkeys(("Relu", "LeakyRelu", "HardSwish", "Tanh", "Gelu", "Elu", "Selu", "Celu", "Mish", "Softsign",
                     "Neg", "Abs", "Sign", "Erf", "Sin", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
                     "GlobalMaxPool", "GlobalLpPool", "Resize", "Upsample", "Identity", "Cast", "Dropout", "Clip"),
                    W.PASS),
    "BatchNormalization": W.NORM, "InstanceNormalization": W.NORM,
    "Flatten": W.FLATTEN,
    "Conv": W.CONSUME, "Gemm": W.CONSUME, "MatMul": W.CONSUME,
}
#: ``OpRule.const_flow``: how constant entries are followed back through the op.
_CONST_FLOW: dict[str, F] = {
    "Cast": F.SAME, "CastLike": F.SAME, "Identity": F.SAME,
    **dict.fromkeys(("Neg", "Exp", "Log", "Abs", "Sqrt", "Reciprocal", "Sigmoid", "Tanh", "Softplus", "Relu", "Sin",
                     "Cos", "Erf", "Floor", "Ceil", "Round", "Sign", "Softsign", "Elu", "Selu", "LeakyRelu",
                     "HardSigmoid", "Gelu"), F.UNARY),
    "Reshape": F.RELAYOUT, "Squeeze": F.RELAYOUT, "Unsqueeze": F.RELAYOUT,
    "Transpose": F.TRANSPOSE, "Gather": F.GATHER, "Expand": F.EXPAND, "Concat": F.CONCAT, "Shape": F.SHAPE,
    "Constant": F.CONSTANT,
}
# ``OpRule.fold``: how the op is evaluated on constant inputs (shape sub-graphs): the
# evaluators of :mod:`otoir.ops.fold`, by op type (:data:`otoir.ops.fold.FOLDS`).
#: ``OpRule.zero_join``: where an element-wise op of several inputs is zero.
_ZERO_JOIN: dict[str, Z] = {
    "Mul": Z.ANY, "And": Z.ANY,
    **dict.fromkeys(("Add", "Sub", "Max", "Min", "Sum", "Mean"), Z.ALL),
    "Div": Z.NUMERATOR, "Where": Z.SELECT,
    # Pow(x, c): zero where the base is, refined by its zero_out (only for a positive constant c)
    "Pow": Z.NUMERATOR,
}


def _add(r: OpRule) -> None:
    r = r.with_(channel_walk=r.channel_walk or _CHANNEL_WALK.get(r.op_type),
                const_flow=r.const_flow or _CONST_FLOW.get(r.op_type),
                zero_join=r.zero_join or _ZERO_JOIN.get(r.op_type),
                fold=r.fold or FOLDS.get(r.op_type))
    register_rule(r, builtin=True)


# -- FLOP formulas (per sample; shape_of gives per-sample shapes) ---------------------------
def _numel(shape) -> int:
    return math.prod(shape) if shape else 1


def _conv_flops_of(transposed: bool):
    """Convolution FLOPs: every output element meets ``Cin/g·k`` weights; transposed, every
    input element meets ``Cout/g·k`` (weight axis 1 either way)."""

    def flops(node, shape_of) -> int:
        ys, xs = shape_of(node.outputs[0]), shape_of(node.inputs[0])
        ws = shape_of(node.inputs[1]) if len(node.inputs) > 1 else None
        if ys is None or xs is None or ws is None:
            return 0
        k = _numel(ws[2:]) if len(ws) > 2 else 1
        return 2 * _numel(xs if transposed else ys) * ws[1] * k

    return flops


def _gemm_flops(node, shape_of) -> int:
    ys = shape_of(node.outputs[0])
    ws = shape_of(node.inputs[1]) if len(node.inputs) > 1 else None
    if ys is None or ws is None:
        return 0
    kdim = ws[1] if node.attributes.get_int("transB", 0) else ws[0]
    return 2 * _numel(ys) * int(kdim)


def _matmul_flops(node, shape_of) -> int:
    ys, xs = shape_of(node.outputs[0]), shape_of(node.inputs[0])
    if ys is None or not xs:
        return 0
    return 2 * _numel(ys) * int(xs[-1])


def _per_output(factor: int = 1):
    def flops(node, shape_of) -> int:
        ys = shape_of(node.outputs[0]) if node.outputs else None
        return 0 if ys is None else factor * _numel(ys)

    return flops


def _per_input(node, shape_of) -> int:
    ys = shape_of(node.outputs[0]) if node.outputs else None
    if ys is None:
        return 0
    xs = shape_of(node.inputs[0]) if node.inputs else None
    return _numel(xs) if xs else _numel(ys)


#: Element-wise ops counted one FLOP per output element.
_ELEMENTWISE_FLOPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Gelu", "Erf",
    "Softplus", "Clip", "PRelu", "Pow", "Sqrt", "Exp", "Max", "Min", "Where", "Elu", "Softmax", "LogSoftmax", "Neg",
    "Abs", "Mish", "Selu", "Celu"})
#: Pooling and reductions counted one FLOP per input element.
_POOL_FLOPS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "ReduceMean",
                         "ReduceSum"})


def _flops_of(op: str):
    if op in _ELEMENTWISE_FLOPS:
        return _per_output()
    if op in _POOL_FLOPS:
        return _per_input
    return None


# -- zero semantics that depend on the node --------------------------------------------------
def _const(node, i: int):
    """The value of constant input ``i`` (an initializer or a ``Constant`` node's ``value``), or None."""
    return constant_array(node.inputs[i] if i < len(node.inputs) else None)


def _clip_zero_out(node, is_data, is_zero) -> str:
    """Clip maps 0 to 0 exactly when ``min <= 0 <= max`` (bounds must be constants)."""
    lo, hi = -np.inf, np.inf
    if len(node.inputs) > 1 or node.attributes.get("min") is None:
        for i in (1, 2):
            v = node.inputs[i] if i < len(node.inputs) else None
            if v is None:
                continue
            c = _const(node, i)
            if c is None:
                return "Clip range excludes 0"
            if i == 1:
                lo = float(c.reshape(-1)[0])
            else:
                hi = float(c.reshape(-1)[0])
    else:
        lo = node.attributes.get_float("min", -np.inf)
        hi = node.attributes.get_float("max", np.inf)
    return "" if lo <= 0 <= hi else "Clip range excludes 0"


def _pad_zero_out(node, is_data, is_zero) -> str:
    """Pad maps 0 to 0 in reflect/edge/wrap mode, and in constant mode with a zero pad value."""
    why = "Pad with a non-zero constant"
    mode = node.attributes.get_string("mode", "constant")
    if mode in ("reflect", "edge", "wrap"):
        return ""
    if mode != "constant":
        return why
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        c = _const(node, 2)
        return "" if c is not None and bool(np.all(c == 0)) else why
    return "" if node.attributes.get_float("value", 0.0) == 0.0 else why


def _sum_zero_out(node, is_data, is_zero) -> str:
    """Add/Sub of a constant: zero only when every constant operand is zero too."""
    if all(is_data(v) or is_zero(v) for v in node.inputs if v is not None):
        return ""
    return f"{node.op_type} of a constant that is not a zeroed parameter"


def _div_zero_out(node, is_data, is_zero) -> str:
    """Div: ``0 / c = 0`` when the zero is the numerator; ``c / 0`` is not zero."""
    return "" if is_data(node.inputs[0]) else "Div by data"


def _pow_zero_out(node, is_data, is_zero) -> str:
    """Pow: ``0 ** c = 0`` when the exponent is a constant with every entry positive (RMSNorm's ``x²``)."""
    why = "Pow with an exponent that is not a positive constant"
    if is_data(node.inputs[1]) or not is_data(node.inputs[0]):
        return why
    c = _const(node, 1)
    return "" if c is not None and c.size and bool(np.all(c > 0)) else why


_ZERO_OUT = {"Add": _sum_zero_out, "Sub": _sum_zero_out, "Div": _div_zero_out, "Pow": _pow_zero_out}


# -- stems ---------------------------------------------------------------------------------
_add(OpRule("Conv", kind=K.STEM, reason="convolution: its weight rows set the output channels",
            params=(ParamSpec(1, out_axis=0, in_axis=1), ParamSpec(2, out_axis=0, role="bias")),
            data_inputs=(0,), channel_map=C.PRODUCE, zero_params_zero_output=True, maps_zero=True,
            flops=_conv_flops_of(transposed=False)))
_add(OpRule("ConvTranspose", kind=K.STEM, reason="transposed convolution: weight axis 1 sets the output channels",
            params=(ParamSpec(1, out_axis=1, in_axis=0), ParamSpec(2, out_axis=0, role="bias")),
            data_inputs=(0,), channel_map=C.PRODUCE, zero_params_zero_output=True, maps_zero=True,
            flops=_conv_flops_of(transposed=True),
            note="with group > 1 the output axis of the weight holds C_out/group channels"))


def _gemm(node, is_data):
    if not is_data(node.inputs[0]):
        return K.CONSTANT, "Gemm of constants"
    if len(node.inputs) > 1 and is_data(node.inputs[1]):
        return K.JOINT, "Gemm of two data operands"
    return K.STEM, "fully connected layer: its weight sets the output features"


def _gemm_params(node):
    trans_b = node.attributes.get_int("transB", 0) if hasattr(node.attributes, "get_int") else 0
    return (ParamSpec(1, out_axis=0 if trans_b else 1, in_axis=1 if trans_b else 0), ParamSpec(2, out_axis=0, role="bias"))


_add(OpRule("Gemm", classify=_gemm, reason="", params=(ParamSpec(1, out_axis=0, in_axis=1), ParamSpec(2, out_axis=0, role="bias")),
            data_inputs=(0,), channel_map=C.PRODUCE, channel_variant="gemm", channel_axis=1, zero_params_zero_output=True, maps_zero=True,
            flops=_gemm_flops, note="param axes depend on transB; use gemm_params(node)", extra={"params_of": _gemm_params}))


def _matmul(node, is_data):
    a, b = node.inputs[0], node.inputs[1]
    da, db = is_data(a), is_data(b)
    if da and db:
        return K.JOINT, "MatMul of two data operands (e.g. attention scores)"
    if da:
        return K.STEM, "MatMul with a constant right operand (a linear layer): its columns set the output features"
    if db:
        return K.STEM, "MatMul with a constant left operand"
    return K.CONSTANT, "MatMul of constants"


# Zero semantics of MatMul (erasing, OTOv3 GeZIGs): a contraction with an all-zero factor is all
# zero, whichever factor it is (zero_join ANY). With a constant weight: a zeroed weight, or a zero
# input. With two activations (attention): P @ V is zero when V is, so zeroing the V projection
# (weight and bias) zeroes the attention output and then the output projection gives its bias;
# zeroing the Q or K projection does NOT zero anything downstream: Q @ K^T = 0, but Softmax(0) is
# uniform, not zero. Only the V and output projections' parameters can zero an attention sub-layer.
_add(OpRule("MatMul", classify=_matmul, params=(ParamSpec(1, out_axis=-1, in_axis=-2),),
            channel_map=C.MATMUL, channel_axis=-1, zero_params_zero_output=True, maps_zero=True,
            zero_join=Z.ANY, flops=_matmul_flops,
            note="zero when either factor is all zero: a zeroed weight, a zero input, or (two activations, "
                 "attention P @ V) a zero V; Q or K zero gives Softmax(0) != 0"))


def _gather(node, is_data):
    table, idx = node.inputs[0], node.inputs[1]
    if is_data(table):
        return K.PASSTHROUGH_SHAPE, "Gather selects entries of a data tensor"
    if is_data(idx):
        return K.STEM, "embedding lookup: rows of a constant table selected by data indices"
    return K.CONSTANT, "Gather on constants (shape computation)"


_add(OpRule("Gather", classify=_gather, params=(ParamSpec(0, out_axis=1),), channel_map=C.GATHER, channel_axis=-1,
            zero_params_zero_output=True, maps_zero=True))

# -- normalisations ------------------------------------------------------------------------
_bn_params = (ParamSpec(1, role="scale"), ParamSpec(2, role="bias"),
              ParamSpec(3, trainable=False, role="running_mean"), ParamSpec(4, trainable=False, role="running_var"))
_add(OpRule("BatchNormalization", kind=K.ACCESSORY, reason="per-channel normalisation with per-channel parameters",
            params=_bn_params, data_inputs=(0,), channel_map=C.IDENTITY, zero_params_zero_output=True, maps_zero=False,
            flops=_per_output(4), note="training-mode BatchNorm computes batch statistics per channel, so removing a channel leaves the others exact"))
_add(OpRule("InstanceNormalization", kind=K.ACCESSORY, reason="per-channel instance normalisation",
            params=(ParamSpec(1, role="scale"), ParamSpec(2, role="bias")), data_inputs=(0,), channel_map=C.IDENTITY,
            zero_params_zero_output=True, flops=_per_output(5)))
_add(OpRule("GroupNormalization", kind=K.ACCESSORY, reason="group normalisation: statistics per group of channels",
            params=(ParamSpec(1, role="scale"), ParamSpec(2, role="bias")), data_inputs=(0,), channel_map=C.IDENTITY,
            channel_variant="group-norm", zero_params_zero_output=True, exact_invariance=False, flops=_per_output(5),
            note="pruning units are whole norm groups; removing part of a group changes its statistics"))
_add(OpRule("LayerNormalization", kind=K.ACCESSORY, reason="normalisation over the trailing axes with per-feature parameters",
            params=(ParamSpec(1, out_axis=0, role="scale"), ParamSpec(2, out_axis=0, role="bias")), data_inputs=(0,),
            channel_map=C.IDENTITY, channel_variant="layer-norm", channel_axis=-1, zero_params_zero_output=True,
            exact_invariance=False, flops=_per_output(5),
            note="not exactly zero-invariant when the normalised axis is pruned (mean/variance change)"))
_add(OpRule("RMSNormalization", since=23, kind=K.ACCESSORY,
            reason="root-mean-square normalisation over the trailing axes with a per-feature scale",
            params=(ParamSpec(1, out_axis=0, role="scale"),), data_inputs=(0,), channel_map=C.IDENTITY,
            channel_variant="rms-norm", channel_axis=-1, zero_params_zero_output=True, maps_zero=True,
            flops=_per_output(4),
            note="exact over the pruned axis when the removed inputs are zero: k of n removed scales the mean "
                 "square by n/(n-k); construction multiplies epsilon by n/(n-k) and the scale by its square root"))

# -- activations and other unary element-wise ops ------------------------------------------
for op, zero in [("Relu", True), ("LeakyRelu", True), ("Sigmoid", False), ("HardSigmoid", False),
                 ("HardSwish", True), ("Tanh", True), ("Gelu", True), ("Erf", True), ("Softplus", False),
                 ("Elu", True), ("Selu", True), ("Celu", True), ("Mish", True), ("Softsign", True),
                 ("ThresholdedRelu", True), ("Neg", True), ("Abs", True), ("Sqrt", True), ("Exp", False),
                 ("Log", False), ("Reciprocal", False), ("Sin", True), ("Cos", False), ("Sign", True),
                 ("Floor", True), ("Ceil", True), ("Round", True), ("Not", False), ("IsNaN", False)]:
    _add(OpRule(op, kind=K.ACCESSORY, reason="element-wise activation", data_inputs=(0,), channel_map=C.IDENTITY,
                channel_axis=None, maps_zero=zero, flops=_flops_of(op)))


def _clip(node, is_data):
    return K.ACCESSORY, "element-wise clamp"


_add(OpRule("Clip", classify=_clip, data_inputs=(0,), channel_map=C.IDENTITY, channel_variant="clip", channel_axis=None,
            maps_zero=False, zero_out=_clip_zero_out, flops=_per_output(), note="maps zero to zero only when min <= 0 <= max"))
_add(OpRule("PRelu", kind=K.ACCESSORY, reason="element-wise activation with a per-channel slope",
            params=(ParamSpec(1, out_axis=0, role="slope"),), data_inputs=(0,), channel_map=C.IDENTITY, maps_zero=True,
            flops=_per_output(), note="slope shape [C,1,1] (or [1]) broadcasts over the channel axis"))
for op in ("Softmax", "LogSoftmax", "Hardmax"):
    _add(OpRule(op, kind=K.ACCESSORY, reason="normalises along one axis", data_inputs=(0,), channel_map=C.REDUCE,
                channel_variant="axis", axis_attribute="axis", axis_default=-1, channel_axis=None, maps_zero=False,
                flops=_flops_of(op), note="channels are independent only when the softmax axis is not the channel axis"))
_add(OpRule("Dropout", kind=K.ACCESSORY, reason="dropout (identity at inference; element-wise mask in training)",
            data_inputs=(0,), channel_map=C.IDENTITY, channel_axis=None, maps_zero=True))
_add(OpRule("Identity", kind=K.PASSTHROUGH_SHAPE, reason="identity", data_inputs=(0,), channel_map=C.IDENTITY,
            channel_axis=None, maps_zero=True))
_add(OpRule("Cast", kind=K.PASSTHROUGH_SHAPE, reason="type conversion", data_inputs=(0,), channel_map=C.IDENTITY,
            channel_axis=None, maps_zero=True))
_add(OpRule("CastLike", kind=K.PASSTHROUGH_SHAPE, reason="type conversion", data_inputs=(0,), type_only_inputs=(1,),
            channel_map=C.IDENTITY, channel_axis=None, maps_zero=True))

# -- pooling, resizing, padding ------------------------------------------------------------
for op in ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"):
    _add(OpRule(op, kind=K.ACCESSORY, reason="spatial pooling per channel", data_inputs=(0,), channel_map=C.IDENTITY,
                maps_zero=True, flops=_flops_of(op)))
_add(OpRule("Resize", kind=K.ACCESSORY, reason="spatial resampling per channel", data_inputs=(0,),
            channel_map=C.IDENTITY, channel_variant="resize", maps_zero=True, note="assumes scales/sizes leave the channel axis unchanged (checked by the analyses)"))
_add(OpRule("Upsample", kind=K.ACCESSORY, reason="spatial resampling per channel", data_inputs=(0,),
            channel_map=C.IDENTITY, maps_zero=True))
_add(OpRule("Pad", kind=K.ACCESSORY, reason="spatial padding per channel", data_inputs=(0,), channel_map=C.IDENTITY,
            channel_variant="pad", maps_zero=False, zero_out=_pad_zero_out,
            note="maps zero to zero for constant mode with value 0 and reflect/edge/wrap modes"))
#: What a reduction over a channel axis does when the removed positions are zero (exact
#: hidden-size pruning: RMSNorm's ``ReduceMean(x²)``): sums are unchanged, a mean is scaled by
#: n/(n-k) and construction compensates; other reductions (max, product...) stay barriers there.
_CHANNEL_REDUCTION = {"ReduceSum": "sum", "ReduceL1": "sum", "ReduceL2": "sum", "ReduceSumSquare": "sum",
                      "ReduceMean": "mean"}
for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceL1", "ReduceProd",
           "ReduceSumSquare", "ReduceLogSumExp", "ArgMax", "ArgMin"):
    _add(OpRule(op, kind=K.ACCESSORY, reason="reduction over some axes", data_inputs=(0,), channel_map=C.REDUCE,
                channel_reduction=_CHANNEL_REDUCTION.get(op, ""),
                channel_variant="axis" if op.startswith("Arg") else "",
                axis_attribute="axis" if op.startswith("Arg") else None, channel_axis=None, flops=_flops_of(op),
                maps_zero=op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceL1", "ReduceSumSquare")))
_add(OpRule("CumSum", kind=K.ACCESSORY, reason="cumulative sum along one axis", data_inputs=(0,), channel_map=C.REDUCE,
            channel_variant="axis-input", channel_axis=None, maps_zero=True))


# -- element-wise binary ops and joints ----------------------------------------------------
def _elementwise(op: str, zero_with_const: bool):
    def classify(node, is_data):
        n_data = sum(1 for v in node.inputs if is_data(v))
        if n_data == 0:
            return K.CONSTANT, f"{op} of constants"
        if n_data == 1:
            return K.ACCESSORY, f"{op} with a constant operand (element-wise, broadcast)"
        return K.JOINT, f"{op} joins {n_data} data inputs element-wise: their channels are tied"

    return classify


for op, z in [("Add", False), ("Sub", False), ("Mul", True), ("Div", True), ("Pow", False),
              ("Max", False), ("Min", False), ("Mean", False), ("Sum", False),
              ("Equal", False), ("Less", False), ("Greater", False), ("LessOrEqual", False),
              ("GreaterOrEqual", False), ("And", False), ("Or", False), ("Xor", False), ("Mod", False),
              ("BitShift", False)]:
    _add(OpRule(op, classify=_elementwise(op, z), channel_map=C.BROADCAST, channel_axis=None, maps_zero=z,
                zero_out=_ZERO_OUT.get(op), flops=_flops_of(op), drop_input={"Add": D.SUM, "Sum": D.SUM, "Sub": D.SUBTRAHEND}.get(op, D.NEVER),
                note="with one constant operand, zero maps to zero only for Mul/Div by the constant or Add/Sub of a zeroed parameter"))


def _concat(node, is_data):
    n_data = sum(1 for v in node.inputs if is_data(v))
    if n_data == 0:
        return K.CONSTANT, "Concat of constants (shape computation)"
    if n_data == 1 and len(node.inputs) > 1:
        return K.JOINT, "Concat of one data input with constants"
    return K.JOINT, f"Concat stacks {n_data} data inputs along axis {node.attributes.get_int('axis', 0)}"


_add(OpRule("Concat", classify=_concat, channel_map=C.CONCAT, channel_axis=1, maps_zero=True, drop_input=D.STACK,
            axis_attribute="axis",
            note="erasing drops an input only along the channel axis 1 (NCHW channels, features of [N, F]); "
                 "along another axis the zeros are part of the output shape"))


def _where(node, is_data):
    n_data = sum(1 for v in node.inputs[1:] if is_data(v))
    if n_data == 0:
        return (K.ACCESSORY if is_data(node.inputs[0]) else K.CONSTANT), "Where selecting between constants"
    if n_data == 1:
        return K.ACCESSORY, "Where masking one data input with a constant"
    return K.JOINT, "Where selects between two data inputs element-wise"


_add(OpRule("Where", classify=_where, channel_map=C.BROADCAST, channel_axis=None, maps_zero=False,
            flops=_per_output()))

# -- data movement -------------------------------------------------------------------------
for op, cmap, zero in [("Reshape", C.RESHAPE, True), ("Flatten", C.FLATTEN, True), ("Transpose", C.TRANSPOSE, True),
                       ("Squeeze", C.RESHAPE, True), ("Unsqueeze", C.RESHAPE, True), ("Expand", C.BROADCAST, True),
                       ("Slice", C.SLICE, True), ("Split", C.SPLIT, True), ("Tile", C.BARRIER, True),
                       ("DepthToSpace", C.BARRIER, True), ("SpaceToDepth", C.BARRIER, True),
                       ("GatherElements", C.BARRIER, True), ("Trilu", C.IDENTITY, True)]:
    _add(OpRule(op, kind=K.PASSTHROUGH_SHAPE, reason=f"{op} moves data without arithmetic", data_inputs=(0,),
                channel_map=cmap, channel_variant={"Reshape": "target", "Expand": "expand"}.get(op, ""),
                channel_axis=None, maps_zero=zero))

# -- constants and shape computation -------------------------------------------------------
for op in ("Shape", "Size"):
    _add(OpRule(op, kind=K.CONSTANT, reason=f"{op} reads metadata, not values", data_inputs=(), channel_map=C.BARRIER,
                channel_axis=None))
_add(OpRule("ConstantOfShape", kind=K.CONSTANT, reason="produces a constant or a shape-derived tensor", data_inputs=(),
            channel_map=C.FILL, channel_axis=None))
for op in ("Constant", "Range", "EyeLike", "RandomNormal", "RandomUniform",
           "RandomNormalLike", "RandomUniformLike", "NonZero"):
    _add(OpRule(op, kind=K.CONSTANT, reason="produces a constant or a shape-derived tensor", data_inputs=(),
                channel_map=C.BARRIER, channel_axis=None))

__all__ += ["VertexKind"]
