"""Export a ``torch.nn.Module`` to an onnx-ir model whose initializers carry state_dict names.

The export uses torch's legacy TorchScript exporter in training mode without constant folding,
the only configuration of torch 2.13 that keeps train-mode ``BatchNormalization`` (and
``Dropout``) as nodes and keeps every initializer name equal to its ``state_dict`` key (see
``research/environment-notes.md`` §2). torch is imported lazily: importing this module does not
import torch.

Facts about the legacy exporter that callers can rely on (checked with torch 2.13):

* Every parameter or buffer that the forward pass reads becomes one initializer named by its
  ``state_dict`` key. ``BatchNorm*.num_batches_tracked`` is never exported (the exporter bakes the
  momentum into the node).
* Tied parameters (one tensor reachable under several names, e.g. ``fc.weight = emb.weight``) are
  exported once, under the name that comes first in ``named_parameters(remove_duplicate=False)``
  order; the other names are aliases. :func:`parameter_map` maps every name to that initializer.
* In TRAINING mode the exporter's tracing forward updates the running statistics of the copy
  it exports and writes the *updated* values; :func:`export_torch` writes the module's own
  values back, so every initializer equals the corresponding ``state_dict`` entry.
* In EVAL mode the exporter de-duplicates initializers with equal values (fresh BatchNorms:
  ``bn3.weight = Identity(bn2.weight)``); :func:`export_torch` undoes that.
* In TRAINING mode ``BatchNormalization`` has ``training_mode=1`` and three outputs (Y, running
  mean, running var); ``Dropout`` has two outputs and its ``ratio`` and ``training_mode`` inputs
  come from ``Constant`` nodes, not initializers.
* With ``training=False`` the module is exported in eval mode, again without constant folding:
  ``BatchNormalization`` has one output and ``Dropout`` becomes ``Identity``.
* Non-parameter constants become ``Constant`` nodes; shapes computed from the input (``x.view(B,
  -1)``) become ``Shape``/``Gather``/``Unsqueeze``/``Concat`` chains.

The dynamo exporter (``torch.onnx.export(..., dynamo=True)``, needs ``onnxscript``) is used when
asked (``exporter="dynamo"``) or when the TorchScript exporter is absent (``exporter="auto"``,
the default, on a torch without ``torch.onnx._internal.torchscript_exporter``). It is run without
its graph optimizer (which folds BatchNorm into the convolution's weights, so that no initializer
would hold the module's values), then its constant folding alone, and always traces the eval form: ``BatchNormalization`` comes
out with one output and ``Dropout`` is gone. The ``normalize-export`` pass then restores
BatchNorm's training form (``training_mode=1``, three outputs). Initializer names that are not
``state_dict`` keys (``p_conv1_weight``-style names of some torch versions) are mapped back to
their key; the same name contract as the legacy path is then checked.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx_ir as ir

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "ALIASES_KEY",
    "EXPORTER_KEY",
    "UNUSED_PARAMETERS_KEY",
    "EXPORTERS",
    "ExportError",
    "export_torch",
    "parameter_map",
    "positional_inputs",
    "torchscript_available",
]

#: Values of ``export_torch(exporter=...)``.
EXPORTERS = ("auto", "torchscript", "dynamo")

#: ``model.meta`` key: state_dict names of parameters/buffers that got no initializer (unused by forward).
UNUSED_PARAMETERS_KEY = "otoir.unused_parameters"
#: ``model.meta`` key: ``{alias name: initializer name}`` for tied parameters.
ALIASES_KEY = "otoir.parameter_aliases"
#: ``model.meta`` key: the exporter that made the model (``torchscript`` or ``dynamo``).
EXPORTER_KEY = "otoir.exporter"

_IR_VERSION = 10
#: Inputs (by position) that these ops read only the shape or element type of.
_READS_SHAPE_OR_TYPE = {"Shape": (0,), "Size": (0,), "CastLike": (1,)}


class ExportError(ValueError):
    """The torch export did not produce the model otoir needs (e.g. a parameter was renamed)."""


def torchscript_available() -> bool:
    """Whether this torch still has the legacy TorchScript ONNX exporter (``dynamo=False``)."""
    import importlib.util

    try:
        return importlib.util.find_spec("torch.onnx._internal.torchscript_exporter") is not None
    except (ImportError, ValueError):
        return False


def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    import torch

    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs)
    raise TypeError(f"example_inputs must be a tensor, a tuple of tensors or a dict of forward arguments, "
                    f"got {type(example_inputs).__name__}")


def positional_inputs(module: torch.nn.Module, example_inputs: Mapping[str, Any]) -> tuple[tuple[Any, ...], list[str]]:
    """A dict of forward arguments as positional arguments (forward's order) and their names.

    Raises:
        ExportError: A key is not a forward argument, or the keys skip an argument without a
            default (positional export cannot leave a gap).
    """
    import inspect

    params = list(inspect.signature(module.forward).parameters.values())
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = [k for k in example_inputs if k not in names]
    if unknown:
        raise ExportError(f"example input {unknown[0]!r} is not a positional argument of "
                          f"{type(module).__name__}.forward ({', '.join(names)})")
    last = max(names.index(k) for k in example_inputs)
    gap = [n for n in names[: last + 1] if n not in example_inputs]
    if gap:
        raise ExportError(f"example inputs skip {type(module).__name__}.forward argument {gap[0]!r}: give it too "
                          "(or a tuple of positional inputs)")
    keys = names[: last + 1]
    return tuple(example_inputs[k] for k in keys), keys


def _named_tensors(module: torch.nn.Module) -> list[tuple[str, Any, bool]]:
    """All (name, tensor, is_parameter) of ``module`` in state_dict order, aliases included."""
    out: list[tuple[str, Any, bool]] = []
    for name, p in module.named_parameters(remove_duplicate=False):
        out.append((name, p, True))
    for name, b in module.named_buffers(remove_duplicate=False):
        out.append((name, b, False))
    return out


def _canonical_names(module: torch.nn.Module) -> dict[str, str]:
    """Maps every parameter/buffer name to the first name of the same tensor (tied weights)."""
    first: dict[int, str] = {}
    canon: dict[str, str] = {}
    for name, t, _ in _named_tensors(module):
        key = id(t)
        first.setdefault(key, name)
        canon[name] = first[key]
    return canon


def _count_outputs(module: torch.nn.Module, inputs: tuple[Any, ...], training: bool) -> int:
    """Number of forward outputs (one no-grad forward on a copy)."""
    import torch

    with torch.no_grad():
        out = copy.deepcopy(module).train(training)(*inputs)
    return len(out) if isinstance(out, (tuple, list)) else 1


def _parameters_with_grad(module: torch.nn.Module, inputs: tuple[Any, ...], training: bool) -> set[str]:
    """Names of the parameters that get a gradient in one forward+backward on a copy."""
    import torch

    m = copy.deepcopy(module).train(training)
    params = dict(m.named_parameters())
    for p in params.values():
        p.grad = None
    with torch.enable_grad():
        out = m(*inputs)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        floats = [o for o in outs if isinstance(o, torch.Tensor) and o.is_floating_point() and o.requires_grad]
        if floats:
            sum(o.sum() for o in floats).backward()
    return {n for n, p in params.items() if p.grad is not None}


def export_torch(
    module: torch.nn.Module,
    example_inputs: Any,
    *,
    opset: int = 17,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = True,
    training: bool = True,
    exporter: str = "auto",
) -> ir.Model:
    """Exports ``module`` to an onnx-ir model with state_dict-named initializers.

    The module is deep-copied first, so neither it nor its BatchNorm running statistics change.
    The copy is put in train mode (``training=True``: BatchNormalization with batch statistics and
    ``training_mode=1``, Dropout kept) or eval mode (``training=False``) and exported with the
    legacy exporter, ``do_constant_folding=False``.

    Args:
        module: The torch module.
        example_inputs: A tensor or a tuple of tensors, the forward's positional arguments, or a
            dict ``{forward argument: tensor}`` (its keys become the graph input names; e.g.
            ``{"input_ids": ids, "attention_mask": mask}`` for a Hugging Face model).
        opset: ONNX opset of the default domain (≤ 21 for onnxruntime-training 1.19; the
            dynamo exporter needs ≥ 18 and uses ``max(opset, 18)``).
        input_names: Graph input names; default: the dict's keys, ``input`` (one input) or
            ``input_0``, ``input_1``…
        output_names: Graph output names; default ``output`` or ``output_0``, ``output_1``…
        dynamic_batch: Make dimension 0 of every input and output the symbolic dim ``batch``.
        training: Export in training mode (default) or eval mode (the dynamo exporter always
            traces the eval form; ``training=True`` then restores BatchNorm's training form with
            the ``normalize-export`` pass).
        exporter: ``torchscript`` (the legacy exporter), ``dynamo`` (``torch.export``-based,
            needs ``onnxscript``) or ``auto``: torchscript while torch still has it, else dynamo.

    Returns:
        The model, ``ir_version`` 10. ``model.meta[UNUSED_PARAMETERS_KEY]`` lists the state_dict
        names that have no initializer because the forward pass does not use them (and
        ``num_batches_tracked`` buffers); ``model.meta[ALIASES_KEY]`` maps tied-parameter aliases
        to their initializer.

    Raises:
        ExportError: A parameter that the forward pass uses has no initializer of its own name
            (renamed or folded), or its values were duplicated into another initializer.
        TypeError: ``example_inputs`` is neither a tensor nor a sequence of tensors.
        ValueError: Unknown ``exporter``.
    """
    import torch

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if isinstance(example_inputs, Mapping):
        inputs, keys = positional_inputs(module, example_inputs)
        if input_names is None:
            input_names = keys
    else:
        inputs = _as_tuple(example_inputs)
    if exporter == "dynamo" or (exporter == "auto" and not torchscript_available()):
        return _export_dynamo(module, inputs, opset=opset, input_names=input_names, output_names=output_names,
                              dynamic_batch=dynamic_batch, training=training)
    work = copy.deepcopy(module)
    work.train(training)
    given = {"input_names": input_names, "output_names": output_names}  # for a dynamo fallback
    input_names, output_names = _default_names(module, inputs, training, input_names, output_names)
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: "batch"} for name in [*input_names, *output_names]}

    buf = io.BytesIO()
    mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                work,
                inputs,
                buf,
                dynamo=False,
                export_params=True,
                keep_initializers_as_inputs=False,
                do_constant_folding=False,
                training=mode,
                opset_version=opset,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
            )
    except torch.onnx.errors.UnsupportedOperatorError as exc:
        # e.g. aten::rms_norm (torch.nn.RMSNorm) has no TorchScript symbolic at opset 17; the
        # dynamo exporter decomposes it. Only ``auto`` falls back: an explicit choice is kept.
        if exporter != "auto" or not _onnxscript_available():
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        warnings.warn(f"the TorchScript exporter refused the module ({first}); exported with the dynamo exporter "
                      f"instead", stacklevel=2)
        return _export_dynamo(module, inputs, opset=opset, dynamic_batch=dynamic_batch, training=training, **given)
    proto = onnx.load_from_string(buf.getvalue())
    proto.ir_version = _IR_VERSION
    model = ir.from_proto(proto)
    model.ir_version = _IR_VERSION
    _finish_export(module, model, inputs, training, "torchscript")
    return model


def _onnxscript_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxscript") is not None


def _finish_export(module: Any, model: ir.Model, inputs: Any, training: bool, exporter: str) -> None:
    """What every exporter's output gets: initializers the exporter merged by value un-shared,
    the module's exact values restored, names checked against the module, and the metadata."""
    _undo_initializer_dedup(model, list(module.state_dict(keep_vars=True)))
    _restore_state_values(module, model)
    unused, aliases = _verify_names(module, model, lambda: _parameters_with_grad(module, inputs, training))
    model.meta[UNUSED_PARAMETERS_KEY] = unused
    model.meta[ALIASES_KEY] = aliases
    model.meta[EXPORTER_KEY] = exporter


def _default_names(module: torch.nn.Module, inputs: tuple[Any, ...], training: bool,
                   input_names: Sequence[str] | None, output_names: Sequence[str] | None) -> tuple[list[str], list[str]]:
    if input_names is None:
        input_names = ["input"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]
    if output_names is None:
        n_out = _count_outputs(module, inputs, training)
        output_names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    return list(input_names), list(output_names)


def _export_dynamo(module: torch.nn.Module, inputs: tuple[Any, ...], *, opset: int,
                   input_names: Sequence[str] | None, output_names: Sequence[str] | None,
                   dynamic_batch: bool, training: bool) -> ir.Model:
    """The dynamo path of :func:`export_torch` (see the module docstring)."""
    import torch

    if not _onnxscript_available():
        raise ExportError("the dynamo exporter needs onnxscript (pip install 'otoir[torch]')"
                          + ("" if torchscript_available() else "; this torch has no TorchScript exporter"))
    input_names, output_names = _default_names(module, inputs, False, input_names, output_names)
    work = copy.deepcopy(module).eval()
    dynamic_shapes = None
    if dynamic_batch:
        # torch.export specialises a dimension of size 1: trace at batch 2 (rows repeated)
        inputs = tuple(torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.ndim and t.shape[0] == 1 else t
                       for t in inputs)
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} if isinstance(t, torch.Tensor) and t.ndim else None for t in inputs)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(work, inputs, dynamo=True, optimize=False, opset_version=max(opset, 18),
                                        input_names=input_names, output_names=output_names,
                                        dynamic_shapes=dynamic_shapes, verbose=False)
        except Exception as exc:  # torch.export raises many types
            first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            raise ExportError(f"the dynamo exporter failed on {type(module).__name__}: {first.strip()}") from None
    import onnxscript.optimizer

    # Constant folding only (not the exporter's optimizer, which fuses BatchNorm into the weights):
    # a bias-free Conv gets its zero bias from an Expand(CastLike(0), Shape(weight)) chain, which
    # would make every convolution a barrier; folded, it is a zero initializer.
    params = set(module.state_dict(keep_vars=True))

    def should_fold(node: ir.Node) -> bool | None:
        """Never fold a node that reads a parameter's values (``Transpose(weight)`` of a Linear
        must stay: folded, the parameter's values would move into a new constant)."""
        reads_type_only = _READS_SHAPE_OR_TYPE.get(node.op_type, ())
        for i, v in enumerate(node.inputs):
            if v is not None and v.name in params and i not in reads_type_only:
                return False
        return None

    onnxscript.optimizer.fold_constants(program.model, should_fold=should_fold)
    onnxscript.optimizer.remove_unused_nodes(program.model)
    model = ir.from_proto(ir.to_proto(program.model))  # a plain copy, detached from the exporter's objects
    model.ir_version = _IR_VERSION
    _map_names_back(module, model)
    _finish_export(module, model, inputs, False, "dynamo")  # traced in eval form
    if training:
        from otoir.infra import PassManager
        from otoir.infra.registry import get_pass

        PassManager([get_pass("normalize-export")()]).run(model)
    return model


def _map_names_back(module: torch.nn.Module, model: ir.Model) -> None:
    """Renames initializers the dynamo exporter named after the FX graph back to state_dict keys.

    ``p_layer1_0_conv1_weight`` / ``b_bn1_running_mean`` (parameter / buffer placeholders of
    ``torch.export``) and ``layer1_0_conv1_weight`` map to ``layer1.0.conv1.weight`` when exactly
    one state_dict key has that spelling.
    """
    keys = list(module.state_dict(keep_vars=True))
    taken = set(model.graph.initializers)
    spelled: dict[str, list[str]] = {}
    for k in keys:
        spelled.setdefault(k.replace(".", "_"), []).append(k)
    for name, value in list(model.graph.initializers.items()):
        if name in keys:
            continue
        bare = name[2:] if name[:2] in ("p_", "b_") else name
        cands = spelled.get(bare) or spelled.get(name) or []
        if len(cands) == 1 and cands[0] not in taken:
            model.graph.initializers.pop(name)
            value.name = cands[0]
            model.graph.register_initializer(value)
            taken.add(cands[0])


def _restore_state_values(module: torch.nn.Module, model: ir.Model) -> None:
    """Sets every state_dict-named initializer to the value in ``module`` (the caller's module).

    A TRAINING-mode export runs the forward pass while tracing, which updates the BatchNorm
    running statistics of the exported copy; the exporter then writes those *updated* running
    means and variances. Writing back the caller's values makes the model's initial state equal
    the module's state exactly.
    """
    state = module.state_dict()
    for name, value in model.graph.initializers.items():
        if name not in state:
            continue
        array = state[name].detach().cpu().numpy()
        old = value.const_value
        if old is not None and (tuple(old.shape) != array.shape or old.dtype != ir.DataType.from_numpy(array.dtype)):
            raise ExportError(
                f"initializer {name!r} has shape/type {old.shape}/{old.dtype}, state_dict {array.shape}/{array.dtype}"
            )
        value.const_value = ir.tensor(array.copy(), name=name)


def _undo_initializer_dedup(model: ir.Model, order: list[str]) -> None:
    """Gives back their own initializer to parameters the exporter merged by value.

    In EVAL mode the legacy exporter keeps one initializer per distinct value and turns the
    others into ``Identity`` nodes (``bn3.weight = Identity(bn2.weight)`` when both are still all
    ones). Each such Identity whose output is a state_dict name is replaced by an initializer of
    that name holding a copy of the values, so that every parameter stays independently
    trainable and prunable. Initializers are then ordered as in the state_dict.
    """
    graph = model.graph
    inits = graph.initializers
    names = set(order)
    changed = False
    for node in list(graph):
        if node.op_type != "Identity" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 1:
            continue
        src, out = node.inputs[0], node.outputs[0]
        if src is None or src.name not in inits or src.const_value is None:
            continue
        if out.name not in names or out.name in inits or out.is_graph_output():
            continue
        name = out.name
        out.name = f"{name}__dedup"
        value = ir.Value(
            name=name,
            shape=src.shape,
            type=src.type,
            const_value=ir.tensor(src.const_value.numpy().copy(), name=name),
        )
        out.replace_all_uses_with(value)
        graph.remove(node, safe=True)
        graph.register_initializer(value)
        changed = True
    if changed:
        rank = {n: i for i, n in enumerate(order)}
        values = list(inits.values())
        values.sort(key=lambda v: rank.get(v.name, len(rank)))  # stable: others keep their order
        inits.clear()
        for v in values:
            graph.register_initializer(v)


def _verify_names(
    module: torch.nn.Module, model: ir.Model, used_parameters: Callable[[], set[str]]
) -> tuple[list[str], dict[str, str]]:
    """Checks the name contract; returns (unused names, aliases).

    ``used_parameters`` (a forward+backward) is only called when a parameter has no
    initializer, to tell a parameter the forward does not use from one the exporter renamed.
    """
    used: set[str] | None = None
    inits = model.graph.initializers
    canon = _canonical_names(module)
    tensors = {name: (t, is_param) for name, t, is_param in _named_tensors(module)}

    foreign = _foreign_constants(model, set(tensors))

    unused: list[str] = []
    aliases: dict[str, str] = {}
    for name, target in canon.items():
        t, is_param = tensors[name]
        if name != target:
            if target in inits:
                aliases[name] = target
            elif name in inits:
                raise ExportError(f"tied parameter {name!r} was exported under its alias name instead of {target!r}")
            else:
                unused.append(name)
            continue
        if name in inits:
            _check_duplicates(name, t, foreign)
            continue
        renamed = _find_copy(t, foreign) if is_param else None
        if renamed is not None:
            raise ExportError(
                f"parameter {name!r} has no initializer of its name; its values were exported as {renamed!r}"
                " (a constant or renamed initializer: use the parameter directly, not .data, in forward)"
            )
        if is_param and used is None:
            used = used_parameters()
        if is_param and name in (used or set()):
            raise ExportError(f"parameter {name!r} is used by forward but no initializer is named {name!r}")
        unused.append(name)
    return unused, aliases


def _foreign_constants(model: ir.Model, names: set[str]) -> dict[str, np.ndarray]:
    """Initializers not named after a state_dict entry, and Constant-node tensors, by name."""
    out: dict[str, np.ndarray] = {}
    for name, v in model.graph.initializers.items():
        if name not in names and v.const_value is not None:
            out[name] = v.const_value.numpy()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = node.attributes.get("value")
            if attr is not None and attr.type == ir.AttributeType.TENSOR:
                out[node.outputs[0].name or node.name or "?"] = attr.value.numpy()
    return out


def _find_copy(t: Any, foreign: dict[str, np.ndarray]) -> str | None:
    """Name of a foreign constant holding the values of ``t``, possibly permuted (e.g. ``w.data.t()``).

    Tensors whose elements are all equal (fresh zero biases, unit BN weights) are never matched:
    they can coincide with ordinary exporter constants.
    """
    value = t.detach().cpu().numpy()
    if value.size < 2 or np.all(value == value.flat[0]):
        return None  # constant-valued tensors can coincide with exporter constants
    key = None
    for other, arr in foreign.items():
        if arr.size != value.size or arr.dtype != value.dtype:
            continue
        if arr.shape == value.shape and np.array_equal(arr, value):
            return other
        if key is None:
            key = np.sort(value, axis=None)
        if np.array_equal(np.sort(arr, axis=None), key):  # same multiset: transposed/reshaped copy
            return other
    return None


def _check_duplicates(name: str, t: Any, foreign: dict[str, np.ndarray]) -> None:
    other = _find_copy(t, foreign)
    if other is not None:
        raise ExportError(f"parameter {name!r} was duplicated into {other!r}")


def parameter_map(module: torch.nn.Module, model: ir.Model) -> dict[str, str]:
    """Maps each parameter and buffer name of ``module`` to the initializer that holds it.

    Tied parameters map every alias to the one exported initializer. Names without an
    initializer (unused by forward, ``num_batches_tracked``) are left out.

    Args:
        module: The module that was exported.
        model: The model returned by :func:`export_torch` (or any model with state_dict names).

    Returns:
        ``{state_dict name: initializer name}``.
    """
    inits = model.graph.initializers
    out: dict[str, str] = {}
    for name, target in _canonical_names(module).items():
        if target in inits:
            out[name] = target
        elif name in inits:
            out[name] = name
    return out
