"""The per-op rule table: what otoir knows about each ONNX operator.

Op knowledge is data keyed by ``(domain, op_type)`` with an opset range. User rules are
registered with :func:`rule` / :func:`register_rule` and take precedence over built-in ones.
An op with no rule is a barrier: nothing is pruned or erased across it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import onnx_ir as ir

__all__ = [
    "VertexKind",
    "ChannelMap",
    "CHANNEL_VARIANTS",
    "DropInput",
    "ChannelWalk",
    "ConstFlow",
    "ZeroJoin",
    "ParamSpec",
    "OpRule",
    "rule",
    "register_rule",
    "lookup_rule",
    "unregister_rule",
    "normalize_domain",
    "attr",
    "normalize_axis",
    "ZeroOut",
    "FlopCount",
    "Fold",
    "node_flops",
]


class VertexKind(str, enum.Enum):
    """The role a node plays for pruning and erasing (OTOv2/v3 taxonomy).

    STEM: has trainable parameters and sets the channel count of its output (Conv, Gemm).
    ACCESSORY: one data input, keeps the channel axis; may have per-channel parameters
    (BatchNorm, ReLU, pooling, bias Add).
    JOINT: combines several data inputs (Add/Mul tie channels; Concat stacks them).
    PASSTHROUGH_SHAPE: moves data without arithmetic (Reshape, Transpose, Slice, Gather).
    CONSTANT: computes constants or shapes only; not part of the data flow.
    UNKNOWN: no rule; a barrier.
    """

    STEM = "stem"
    ACCESSORY = "accessory"
    JOINT = "joint"
    PASSTHROUGH_SHAPE = "passthrough-shape"
    CONSTANT = "constant"
    UNKNOWN = "unknown"


class ChannelMap(str, enum.Enum):
    """How channel indices of a node's output relate to those of its data inputs.

    The ZIG analysis (:mod:`otoir.analyses.zig`) selects its handler from the rule's
    ``channel_map`` and ``channel_variant`` (see :data:`CHANNEL_VARIANTS`) and nothing else, so
    a user rule for a custom op gets exactly the behaviour it declares. What a rule must
    declare for each value (the op's inputs and attributes must then match the description):

    * ``PRODUCE``: a stem with fresh output channels. Default variant: a convolution; declare
      the weight ``ParamSpec(i, out_axis=0, in_axis=1)`` (``out_axis=1, in_axis=0`` for a
      transposed one) and optionally a ``ParamSpec(j, role="bias")``; data input
      ``data_inputs[0]`` (default 0), NCHW, output channels on axis 1, optional ``group``
      attribute; the vertex kind STEM (``kind`` or ``classify``) and, for erasing,
      ``zero_params_zero_output``/``maps_zero``. Variant ``gemm``: ONNX Gemm's signature
      (A, B, C; ``transA``/``transB``).
    * ``IDENTITY``: output position p comes from position p of input 0. A rule with ``params``
      gets per-channel parameters along axis 1 (each parameter's axis 0 follows the channels;
      BatchNorm, PRelu); the output is zero for a zeroed group if ``zero_params_zero_output``,
      zero where the input is if ``maps_zero``. Variants: ``layer-norm`` (``axis``
      attribute, scale and bias inputs 1, 2), ``rms-norm`` (ONNX RMSNormalization: ``axis``,
      ``epsilon``, scale input 1; exact over the pruned axis, construction folds the removed
      share into ``epsilon`` and the scale), ``group-norm`` (``num_groups``), ``clip``,
      ``pad`` (ONNX Pad's inputs), ``resize`` (a channel axis keeps its size).
    * ``BROADCAST``: element-wise with numpy broadcasting; the inputs share channel atoms.
      Variant ``expand``: ONNX Expand.
    * ``CONCAT``: stacking along the axis named by ``axis_attribute`` (``axis_default``).
    * ``SPLIT``, ``SLICE``, ``TRANSPOSE``, ``GATHER``, ``MATMUL``: the ONNX op's signature
      (Split, Slice, Transpose ``perm``, Gather ``axis``, MatMul).
    * ``RESHAPE``, ``FLATTEN``: any re-layout of input 0, read from the static shapes.
      Variant ``target`` (RESHAPE): input 1 is the target shape, rewritten by pruning.
    * ``REDUCE``: reduction or normalisation over axes without channels. Default variant: ONNX
      Reduce* (``axes`` attribute or input 1, ``keepdims``; a reduction over a channel axis
      is followed only as the rule's ``channel_reduction`` says); ``axis``: one axis named by
      ``axis_attribute``; ``axis-input``: one axis given by input 1 (CumSum).
    * ``FILL``: a uniform tensor whose shape input is read from other values' shapes
      (ConstantOfShape): it follows their channels.
    * ``BARRIER``: nothing propagates (also what an op without a rule gets).
    """

    PRODUCE = "produce"  # a stem: output channels are new (weight rows)
    IDENTITY = "identity"  # output channel c comes from input channel c
    BROADCAST = "broadcast"  # elementwise with numpy broadcasting; inputs share indices
    CONCAT = "concat"  # offsets along the concat axis
    SPLIT = "split"  # ranges along the split axis
    SLICE = "slice"  # a range along the sliced axis
    FLATTEN = "flatten"  # index expansion by the flattened stride
    RESHAPE = "reshape"  # factorisation of axes
    TRANSPOSE = "transpose"  # axis permutation
    MATMUL = "matmul"  # contraction
    GATHER = "gather"  # indexing along an axis
    REDUCE = "reduce"  # reduction over some axes
    FILL = "fill"  # a uniform tensor shaped like tracked values (ConstantOfShape)
    BARRIER = "barrier"  # nothing propagates


#: The ``channel_variant`` values each :class:`ChannelMap` accepts (``""``: the default).
CHANNEL_VARIANTS: dict[ChannelMap, tuple[str, ...]] = {
    ChannelMap.PRODUCE: ("", "gemm"),
    ChannelMap.IDENTITY: ("", "layer-norm", "rms-norm", "group-norm", "clip", "pad", "resize"),
    ChannelMap.BROADCAST: ("", "expand"),
    ChannelMap.CONCAT: ("",),
    ChannelMap.SPLIT: ("",),
    ChannelMap.SLICE: ("",),
    ChannelMap.FLATTEN: ("",),
    ChannelMap.RESHAPE: ("", "target"),
    ChannelMap.TRANSPOSE: ("",),
    ChannelMap.MATMUL: ("",),
    ChannelMap.GATHER: ("",),
    ChannelMap.REDUCE: ("", "axis", "axis-input"),
    ChannelMap.FILL: ("",),
    ChannelMap.BARRIER: ("",),
}


class DropInput(str, enum.Enum):
    """What erasing may do with an all-zero data input of a joint (OTOv3 section 3.3).

    NEVER: a zero input changes the output (Mul, Max, Where...); the joint needs every input.
    SUM: element-wise sum (Add, Sum); a zero input can be dropped when the remaining inputs
    still broadcast to the output shape.
    SUBTRAHEND: ``x - 0 = x`` (Sub); inputs after the first can be dropped, the first cannot.
    STACK: the inputs are stacked along the axis named by ``OpRule.axis_attribute`` (Concat).
    Dropping an input removes its entries from the output, so it is exact only along the
    rule's ``channel_axis``, and only when every consumer can lose the same channels (their
    weight columns are sliced). Along any other axis (height, width, batch) the zeros are part
    of the output's shape: the input is not removable.
    """

    NEVER = "never"
    SUM = "sum"
    SUBTRAHEND = "subtrahend"
    STACK = "stack"


class ChannelWalk(str, enum.Enum):
    """What erasing's channel-removal walk after a stacking joint does at an op (its input 0).

    When a Concat loses an all-zero input, the matching channels are removed downstream
    (:func:`otoir.analyses.erasability.plan_channel_removal`); ops without a value stop the walk.

    PASS: a channel-wise op without parameters that keeps the channel axis's size; the walk
    continues through it when the rule's zero semantics keep the removed channels zero
    (activations, pooling, Resize, Cast, Clip with 0 in range...).
    NORM: a per-channel normalisation whose parameters (``params``, axis 0) are sliced with the
    channels; the walk continues (BatchNorm, InstanceNorm).
    FLATTEN: ONNX Flatten with ``axis=1``: channel c becomes a block of features; the walk continues.
    CONSUME: a stem whose weight loses the matching input columns; the walk ends. The weight is
    the rule's ``channel_map``/``channel_variant`` signature: a convolution (``PRODUCE``: the
    parameter with an ``in_axis``, no ``group``), ONNX Gemm (``PRODUCE``/``gemm``), MatMul
    (``MATMUL``: rows of a 2-D constant right operand).
    """

    PASS = "pass"
    NORM = "norm"
    FLATTEN = "flatten"
    CONSUME = "consume"


class ConstFlow(str, enum.Enum):
    """How the entries of a constant input reach an op's output, for following constants back.

    The ZIG analysis follows parameters seen through constant sub-graphs
    (:meth:`~otoir.analyses.zig.state.ChannelState.param_source`: a torch Linear's transposed
    weight, an embedding table's Gather) and shape tensors computed at run time
    (:func:`~otoir.analyses.zig.handlers.fill.shape_provenance`: ``Shape -> Gather ->
    Unsqueeze -> Concat``). Ops without a value are not looked through.

    SAME: the output is input 0 (Cast, Identity); both.
    UNARY: an element-wise function of input 0 alone: slicing commutes with it but values
    change (zero need not stay zero); parameter sources asked for values only.
    RELAYOUT: input 0 re-laid out with only size-1 axes added or removed, in element order
    (Reshape, Squeeze, Unsqueeze); both.
    TRANSPOSE: ONNX Transpose (``perm``); parameter sources.
    GATHER: ONNX Gather with constant indices (``axis``); parameter sources (on another axis)
    and shape tensors (axis 0).
    EXPAND: ONNX Expand; parameter sources.
    CONCAT: ONNX Concat of 1-D shape tensors; shape tensors.
    SHAPE: ONNX Shape (``start``/``end``): the sizes of input 0; shape tensors.
    CONSTANT: a literal constant (its folded value); shape tensors.
    """

    SAME = "same"
    UNARY = "unary"
    RELAYOUT = "relayout"
    TRANSPOSE = "transpose"
    GATHER = "gather"
    EXPAND = "expand"
    CONCAT = "concat"
    SHAPE = "shape"
    CONSTANT = "constant"


class ZeroJoin(str, enum.Enum):
    """Where an element-wise op of several inputs (``ChannelMap.BROADCAST``) is exactly zero.

    The ZIG analysis combines, position by position, which inputs are zero once their group is
    zeroed; an op without a value is never zero there. The GeZIG analysis (erasing) uses the
    same field per whole tensor, for any op with several inputs
    (:func:`otoir.analyses.erasability.node_output_zero`): MatMul declares ``ANY`` (a
    contraction with an all-zero factor is zero: a zeroed weight, or the V of attention's
    ``P @ V``; the ZIG analysis's MatMul handler does its own contraction bookkeeping).

    ANY: zero where any input is (Mul, And); a constant operand drawn from a zeroed trainable
    parameter zeroes the output.
    ALL: zero where every input is (Add, Sub, Max, Min, Sum, Mean); a constant operand counts as
    zero when the rule's zero semantics (:meth:`OpRule.zero_output`) say a zeroed parameter or
    a zero constant leaves the output zero (Add/Sub), else it keeps the output non-zero.
    NUMERATOR: zero where input 0 is (Div).
    SELECT: zero where every input after the first is (Where: input 0 is the condition).
    """

    ANY = "any"
    ALL = "all"
    NUMERATOR = "numerator"
    SELECT = "select"


def attr(node: ir.Node, name: str, default: Any = None) -> Any:
    """The value of attribute ``name`` of ``node`` (``default`` when absent)."""
    a = node.attributes.get(name)
    return default if a is None else a.value


def normalize_axis(axis: int | None, rank: int | None) -> int | None:
    """``axis`` in ``[0, rank)`` (None when it is None, or negative with an unknown rank)."""
    if axis is None:
        return None
    if axis < 0:
        if rank is None:
            return None
        axis += rank
    return axis


@dataclass(frozen=True)
class ParamSpec:
    """A parameter input of an op.

    Attributes:
        input: Input index.
        out_axis: Axis of the parameter indexed by the op's output channels (None: none).
        in_axis: Axis indexed by the op's input channels (a stem's consumer side), or None.
        trainable: False for buffers such as BatchNorm running statistics.
        role: Short name (``weight``, ``bias``, ``scale``, ``running_mean``...).
    """

    input: int
    out_axis: int | None = 0
    in_axis: int | None = None
    trainable: bool = True
    role: str = "weight"


#: ``classify(node, is_data) -> (kind, reason)`` for ops whose role depends on the node.
Classifier = Callable[["ir.Node", Callable[["ir.Value | None"], bool]], "tuple[VertexKind, str]"]

#: ``zero_out(node, is_data, is_zero) -> reason``: whether an all-zero data input of ``node``
#: gives an all-zero output. ``is_data(value)`` says whether an input carries data;
#: ``is_zero(value)`` whether a non-data input is known to be all zero (a parameter zeroed with
#: the group). Returns ``""`` when the output is zero, else a one-line reason why not.
ZeroOut = Callable[["ir.Node", Callable[["ir.Value | None"], bool], Callable[["ir.Value | None"], bool]], str]

#: ``flops(node, shape_of) -> FLOPs`` of one forward pass of ``node`` per sample, multiply and
#: add counted separately (FLOPs = 2 x multiply-accumulates). ``shape_of(value)`` gives the
#: per-sample static shape of a value (symbolic dimensions count as 1) or None when unknown;
#: a formula returns 0 when a shape it needs is unknown.
FlopCount = Callable[["ir.Node", Callable[["ir.Value | None"], "tuple[int, ...] | None"]], int]

#: ``fold(node, values, shape_of) -> outputs``: ``node`` evaluated on constant inputs, for the
#: shape sub-graphs of the static-shape analysis (:func:`otoir.analyses.shapes.fold_constants`).
#: ``values[i]`` is the numpy value of input ``i``, None where the input is absent or not a
#: known constant; ``shape_of(value)`` its static shape (symbolic dimensions are
#: :data:`~otoir.analyses.shapes.SENTINEL`) or None. Returns one array per output, or None
#: when the node cannot be evaluated (an exception counts as None).
#: :func:`otoir.ops.fold.constant_inputs` wraps a function that needs every input constant.
Fold = Callable[["ir.Node", "Sequence[np.ndarray | None]", Callable[["ir.Value | None"], "tuple[int, ...] | None"]],
                "list[np.ndarray] | None"]


@dataclass(frozen=True)
class OpRule:
    """What otoir knows about one operator.

    Attributes:
        op_type: ONNX op type.
        domain: Operator domain (``""`` is the default ONNX domain).
        since: First opset version the rule applies to.
        until: Last opset version (inclusive), or None.
        kind: Vertex kind when the role does not depend on the node.
        reason: Why the op has that kind (shown by ``--annotate``).
        classify: Node-dependent classification, overrides ``kind``.
        params: Parameter inputs (by position) and which axes follow channels.
        data_inputs: Input positions that may carry data (None: every non-parameter input).
        type_only_inputs: Input positions whose values the op never reads, only their element
            type (``CastLike``'s target, as the dynamo exporter writes ``CastLike(gamma, x)``):
            a data value there makes neither the output data nor the node a barrier.
        channel_map: How channels propagate through the op (see :class:`ChannelMap` for what
            each value needs the rule to declare).
        channel_variant: Which handler of ``channel_map`` applies, where one value covers
            several (``gemm`` vs a convolution for ``PRODUCE``...); one of
            ``CHANNEL_VARIANTS[channel_map]``, ``""`` for the default.
        channel_axis: The channel axis of the output (1 for NCHW ops), if fixed.
        maps_zero: A zero data input gives a zero output (ReLU yes, Sigmoid no), whatever the
            node; ``zero_out`` refines it for ops where it depends on the node.
        zero_out: Node-dependent zero semantics (:data:`ZeroOut`): Clip only when its range
            contains 0, Pad only with a zero pad value, Div only when the zero is the
            numerator... Overrides ``maps_zero`` where set (see :meth:`zero_output`).
        flops: Forward FLOPs per sample of a node (:data:`FlopCount`); None: counted as 0.
        fold: How to evaluate the op on constant inputs, for shape sub-graphs (:data:`Fold`);
            None: not folded (its outputs are unknown to the static-shape analysis).
        zero_params_zero_output: All-zero trainable parameters force a zero output whatever
            the input (Conv, Gemm, BatchNorm with gamma=beta=0).
        exact_invariance: False when removing channels changes the remaining outputs
            (normalisation statistics over the pruned axis).
        drop_input: What erasing may do with an all-zero data input (joints only).
        axis_attribute: The integer attribute naming the axis the op works along (Concat:
            ``axis``, the stacking axis), or None.
        axis_default: The axis when the attribute is absent.
        channel_walk: What erasing's channel-removal walk after a Concat does at this op
            (:class:`ChannelWalk`); None: the walk stops with a reason.
        const_flow: How constant entries flow through this op when the ZIG analysis follows
            parameters and shape tensors back (:class:`ConstFlow`); None: not followed.
        zero_join: Where an element-wise op of several inputs is zero (:class:`ZeroJoin`);
            None: never.
        channel_reduction: What a ``REDUCE`` rule's reduction over a channel axis does when the
            removed positions are exactly zero: ``"sum"`` (ReduceSum, ReduceL1/L2,
            ReduceSumSquare: unchanged, exact), ``"mean"`` (ReduceMean: multiplied by
            ``n/(n-k)`` when k of n channels go; construction compensates, folding it into an
            RMSNorm's epsilon and gain where it can); ``""``: a barrier.
        note: Free text (limitations).
    """

    op_type: str
    domain: str = ""
    since: int = 1
    until: int | None = None
    kind: VertexKind = VertexKind.UNKNOWN
    reason: str = ""
    classify: Classifier | None = None
    params: tuple[ParamSpec, ...] = ()
    data_inputs: tuple[int, ...] | None = None
    type_only_inputs: tuple[int, ...] = ()
    channel_map: ChannelMap = ChannelMap.BARRIER
    channel_variant: str = ""
    channel_axis: int | None = 1
    maps_zero: bool = False
    zero_out: ZeroOut | None = field(default=None, compare=False)
    flops: FlopCount | None = field(default=None, compare=False)
    fold: Fold | None = field(default=None, compare=False)
    zero_params_zero_output: bool = False
    exact_invariance: bool = True
    drop_input: DropInput = DropInput.NEVER
    axis_attribute: str | None = None
    axis_default: int = 0
    channel_walk: ChannelWalk | None = None
    const_flow: ConstFlow | None = None
    zero_join: ZeroJoin | None = None
    channel_reduction: str = ""  # added for exact hidden-size pruning (RMSNorm statistics)
    note: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        cmap = ChannelMap(self.channel_map)
        object.__setattr__(self, "channel_map", cmap)  # a plain string names the same value
        for name, kind in (("channel_walk", ChannelWalk), ("const_flow", ConstFlow), ("zero_join", ZeroJoin)):
            value = getattr(self, name)
            if value is not None:
                try:
                    object.__setattr__(self, name, kind(value))
                except ValueError:
                    known = ", ".join(repr(k.value) for k in kind)
                    raise ValueError(f"rule {self.domain or 'ai.onnx'}::{self.op_type}: {name} {value!r} is "
                                     f"not one of {known}") from None
        if self.channel_reduction not in ("", "sum", "mean"):
            raise ValueError(f"rule {self.domain or 'ai.onnx'}::{self.op_type}: channel_reduction "
                             f"{self.channel_reduction!r} is not one of '', 'sum', 'mean'")
        if self.channel_variant not in CHANNEL_VARIANTS[cmap]:
            known = ", ".join(repr(v) for v in CHANNEL_VARIANTS[cmap])
            raise ValueError(f"rule {self.domain or 'ai.onnx'}::{self.op_type}: channel_variant "
                             f"{self.channel_variant!r} is not one of {known} for channel map {cmap.value}")

    def param_spec(self, index: int) -> ParamSpec | None:
        """Returns the spec of input ``index`` if it is a parameter input."""
        for p in self.params:
            if p.input == index:
                return p
        return None

    def node_axis(self, node: ir.Node, rank: int | None) -> int | None:
        """The axis ``node`` works along (``axis_attribute``), normalised for an output of ``rank``.

        None when the rule names no axis attribute, or the axis is negative and ``rank`` unknown.
        """
        if self.axis_attribute is None:
            return None
        a = node.attributes.get(self.axis_attribute)
        return normalize_axis(int(a.value) if a is not None else self.axis_default, rank)

    def node_channel_axis(self, rank: int | None) -> int | None:
        """``channel_axis`` normalised for an output of ``rank`` (None: any axis, or unknown)."""
        return normalize_axis(self.channel_axis, rank)

    def zero_output(self, node: ir.Node, is_data: Callable[[ir.Value | None], bool],
                    is_zero: Callable[[ir.Value | None], bool]) -> str:
        """Whether an all-zero data input of ``node`` gives an all-zero output.

        Args:
            node: The node.
            is_data: Whether an input carries data.
            is_zero: Whether a non-data input is known to be all zero.

        Returns:
            ``""`` when it does, else a one-line reason why not.
        """
        if self.zero_out is not None:
            return self.zero_out(node, is_data, is_zero)
        return "" if self.maps_zero else f"{node.op_type} does not map zero to zero"

    def with_(self, **changes) -> OpRule:
        """Returns a copy with fields changed."""
        return replace(self, **changes)


def normalize_domain(domain: str) -> str:
    """``ai.onnx`` and ``""`` name the same domain."""
    return "" if domain in ("", "ai.onnx") else domain


_BUILTIN: dict[tuple[str, str], list[OpRule]] = {}
_USER: dict[tuple[str, str], list[OpRule]] = {}


def register_rule(r: OpRule, *, builtin: bool = False) -> OpRule:
    """Adds a rule. User rules (the default) take precedence over built-in ones."""
    table = _BUILTIN if builtin else _USER
    table.setdefault((normalize_domain(r.domain), r.op_type), []).insert(0, r)
    return r


def unregister_rule(op_type: str, domain: str = "") -> None:
    """Removes every user rule for ``(domain, op_type)``."""
    _USER.pop((normalize_domain(domain), op_type), None)


def rule(op_type: str, *, domain: str = "", since: int = 1, until: int | None = None, **fields):
    """Decorator registering a user rule whose ``classify`` is the decorated function.

    Example (a convolution in a custom domain; :class:`ChannelMap` says what each channel map
    needs the rule to declare)::

        @rule("MyConv", domain="com.acme", data_inputs=(0,), channel_map=ChannelMap.PRODUCE,
              params=(ParamSpec(1, out_axis=0, in_axis=1), ParamSpec(2, role="bias")),
              zero_params_zero_output=True, maps_zero=True)
        def my_conv(node, is_data):
            return VertexKind.STEM, "custom convolution"
    """

    def deco(fn: Classifier) -> Classifier:
        register_rule(OpRule(op_type, domain=domain, since=since, until=until, classify=fn, **fields))
        return fn

    return deco


def lookup_rule(op_type: str, domain: str = "", version: int | None = None) -> OpRule | None:
    """Returns the rule for an op at an opset version (user rules first), or None.

    The built-in rules are registered by :mod:`otoir.ops.table`, which the package
    ``otoir.ops`` imports (so they are present whenever this module is).
    """
    key = (normalize_domain(domain), op_type)
    for candidates in (_USER.get(key, ()), _BUILTIN.get(key, ())):
        for r in candidates:
            if version is None or (r.since <= version and (r.until is None or version <= r.until)):
                return r
    return None


def node_flops(node: ir.Node, shape_of: Callable[[ir.Value | None], tuple[int, ...] | None]) -> int:
    """Forward FLOPs per sample of ``node`` from its rule's ``flops`` (0 without a formula).

    The one FLOP count of otoir (FLOPs = 2 x multiply-accumulates): ``otoir.stats``, the GeZIG
    partition and the channel groups all use it.

    Args:
        node: The node.
        shape_of: Per-sample static shape of a value, or None when unknown.
    """
    r = lookup_rule(node.op_type, node.domain, node.version)
    if r is None or r.flops is None:
        return 0
    return int(r.flops(node, shape_of))
