"""Slice a torch module like its ONNX sub-network: the compressed torch module of the own-loop API.

The channel groups that ``prune-channels`` removed name, for every initializer, the indices
removed along each axis (their trainable ``slices`` and ``dependent`` entries). The exporter
names initializers by ``state_dict`` key, so the same indices are cut from the module's
parameters and buffers, and the modules' size attributes are updated so that ``forward``
still works:

* ``Conv1d/2d/3d`` (``groups=1``, or depthwise with one filter per channel),
  ``ConvTranspose1d/2d/3d`` (``groups=1``), ``Linear``, ``BatchNorm*``, ``LayerNorm``
  (one normalised axis), ``GroupNorm`` (whole groups), ``Embedding`` (the embedding axis),
  RMSNorm (``torch.nn.RMSNorm`` and Hugging Face ``*RMSNorm``: removed zero channels folded into
  epsilon and the gain);
* attention modules of Hugging Face ``transformers`` (and alike) that keep their head size in
  ``attention_head_size``/``head_dim``/``head_size`` next to ``query/key/value`` or
  ``q_proj/k_proj/v_proj`` children: ``num_attention_heads``/``num_heads`` (and
  ``num_key_value_heads``) and ``all_head_size`` follow the sliced projections. The shared
  ``config`` is left unchanged (one config value cannot describe layers that keep different
  counts); save the compressed module with ``torch.save`` or its ``state_dict``.

Anything else that holds a removed entry raises :class:`TorchSliceError` naming the module.
The caller checks the result against the ONNX sub-network (:func:`otoir.workflow`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from otoir.errors import OtoirError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from otoir.analyses.groups import Group

__all__ = ["TorchSliceError", "removal_plan", "slice_module"]

_UNAVAILABLE = "; the ONNX sub-network is still available"


class TorchSliceError(OtoirError):
    """The torch module cannot be sliced verifiably like the ONNX sub-network."""


def removal_plan(groups: Iterable[Group]) -> dict[str, dict[int, set[int]]]:
    """``{tensor name: {axis: removed indices}}`` of the removed groups.

    Args:
        groups: The groups the construction removed.

    Raises:
        TorchSliceError: A group removes a whole tensor (an erased segment).
    """
    plan: dict[str, dict[int, set[int]]] = {}
    for g in groups:
        for s in (*g.slices, *g.dependent):
            if s.axis is None:
                raise TorchSliceError(f"group {g.id} removes the whole tensor '{s.tensor}' (an erased branch): "
                                      f"whole branches cannot be removed from a torch module by slicing{_UNAVAILABLE}")
            plan.setdefault(s.tensor, {}).setdefault(int(s.axis), set()).update(int(i) for i in s.indices or ())
    return plan


def _dims(mod: torch.nn.Module) -> dict[str, tuple[str, ...]] | None:
    """Named axes of each own tensor of a supported module (``None``: not supported)."""
    import torch.nn as nn

    if isinstance(mod, nn.Linear):
        return {"weight": ("out", "in"), "bias": ("out",)}
    if isinstance(mod, nn.modules.conv._ConvTransposeNd):
        rest = ("k",) * (mod.weight.dim() - 2)
        return {"weight": ("in", "out", *rest), "bias": ("out",)}
    if isinstance(mod, nn.modules.conv._ConvNd):
        rest = ("k",) * (mod.weight.dim() - 2)
        return {"weight": ("out", "in", *rest), "bias": ("out",)}
    if isinstance(mod, nn.modules.batchnorm._NormBase):
        return {k: ("c",) for k in ("weight", "bias", "running_mean", "running_var")}
    if isinstance(mod, (nn.LayerNorm, nn.GroupNorm)):
        return {"weight": ("c",), "bias": ("c",)}
    if isinstance(mod, nn.Embedding):
        return {"weight": ("num", "dim")}
    if _rms_eps_attr(mod) is not None:
        return {"weight": ("c",)}
    return None


def _rms_eps_attr(mod: Any) -> str | None:
    """The epsilon attribute of an RMSNorm layer computing ``x / sqrt(mean(x²) + eps) * weight``
    (``torch.nn.RMSNorm`` and the Hugging Face ``*RMSNorm`` classes of that form), else ``None``.
    Layers of another form (a ``(1 + weight)`` gain) are refused by the check against ONNX."""
    import torch.nn as nn

    if isinstance(mod, getattr(nn, "RMSNorm", ())):
        return "eps"
    if type(mod).__name__.endswith("RMSNorm") and isinstance(getattr(mod, "weight", None), nn.Parameter) \
            and mod.weight.dim() == 1:
        for attr in ("variance_epsilon", "eps", "epsilon"):
            if isinstance(getattr(mod, attr, None), float):
                return attr
    return None


def _fold_rms(mod: Any, n: int, m: int) -> dict[str, Any]:
    """RMSNorm over n channels of which n - m zero ones were removed: the mean of squares grows by
    n/m, so epsilon is scaled by n/m and the gain by sqrt(n/m) (as ONNX construction folds it)."""
    import torch

    attr = _rms_eps_attr(mod)
    eps = getattr(mod, attr)
    if eps is None:  # torch.nn.RMSNorm's default: the dtype's machine epsilon
        eps = float(torch.finfo(mod.weight.dtype).eps)
    setattr(mod, attr, float(eps) * n / m)
    with torch.no_grad():
        mod.weight.mul_(float(np.sqrt(n / m)))
    if hasattr(mod, "normalized_shape"):
        mod.normalized_shape = (m,)
    return {attr: getattr(mod, attr)}


def _own_tensors(mod: torch.nn.Module) -> dict[str, Any]:
    out = dict(mod.named_parameters(recurse=False))
    out.update(dict(mod.named_buffers(recurse=False)))
    return out


def _fail(name: str, mod: Any, why: str) -> TorchSliceError:
    return TorchSliceError(f"cannot slice module '{name or '<root>'}' ({type(mod).__name__}) verifiably: {why}{_UNAVAILABLE}")


def _removed_per_dim(name: str, mod: Any, dims: dict[str, tuple[str, ...]], plan: Mapping[str, dict[int, set[int]]],
                     keys: Mapping[str, str]) -> dict[str, set[int]]:
    removed: dict[str, set[int]] = {}
    for attr, axes in plan_entries(mod, plan, keys):
        names = dims.get(attr)
        for axis, idx in axes.items():
            if names is None or axis >= len(names) or names[axis] == "k":
                raise _fail(name, mod, f"'{attr}' loses entries along axis {axis}, which otoir cannot map to a size")
            removed.setdefault(names[axis], set()).update(idx)
    return removed


def plan_entries(mod: Any, plan: Mapping[str, dict[int, set[int]]], keys: Mapping[str, str]):
    """``(attribute, {axis: indices})`` of the module's own tensors that the plan slices."""
    for attr, t in _own_tensors(mod).items():
        key = keys.get(id(t))
        if key is not None and key in plan:
            yield attr, plan[key]


def slice_module(module: torch.nn.Module, groups: Iterable[Group]) -> dict[str, dict[str, Any]]:
    """Removes the entries of ``groups`` from ``module`` in place and updates its size attributes.

    Args:
        module: The module (a deep copy of the trained one; changed in place).
        groups: The groups the ONNX construction removed (their tensor names are ``state_dict`` keys;
            a tied tensor goes by its first name, as the exporter names it).

    Returns:
        ``{module name: {attribute: new value}}`` of every module changed.

    Raises:
        TorchSliceError: A module holding removed entries is not one otoir slices, or its sizes
            cannot express the removal (one line naming the module).
    """
    import torch

    plan = removal_plan(groups)
    keys: dict[int, str] = {}
    for n, t in list(module.named_parameters(remove_duplicate=False)) + list(module.named_buffers(remove_duplicate=False)):
        keys.setdefault(id(t), n)
    # a tied tensor is exported once, under its first name in this order (torch_export's rule)
    found = {keys[i] for i in keys}
    missing = sorted(set(plan) - found)
    if missing:
        raise TorchSliceError(f"removed entries of '{missing[0]}' belong to no parameter or buffer of the module "
                              f"(a constant the exporter made){_UNAVAILABLE}")
    changes: dict[str, dict[str, Any]] = {}
    replaced: dict[int, Any] = {}  # id of an original tensor -> its sliced replacement (tied tensors: once)
    for name, mod in module.named_modules():
        own = _own_tensors(mod)
        if not any(keys.get(id(t)) in plan for t in own.values()):
            continue
        dims = _dims(mod)
        if dims is None:
            first = next(a for a, t in own.items() if keys.get(id(t)) in plan)
            raise _fail(name, mod, f"'{first}' loses entries and otoir slices only Conv, ConvTranspose, Linear, "
                                   "BatchNorm, LayerNorm, GroupNorm, RMSNorm and Embedding layers")
        removed = _removed_per_dim(name, mod, dims, plan, keys)
        if removed.get("in") and _reads_weight_its_own_way(mod):
            raise _fail(name, mod, f"{type(mod).__name__} overrides the convolution's forward (weight "
                                   "standardization, BiT's and timm's StdConv): its statistics run over the input "
                                   "channels, so slicing them changes what it computes (the ONNX sub-network, built from "
                                   "the standardized weights, is exact)")
        sizes = {d: _size_of(mod, own, dims, d) for d in removed}
        keep = {d: np.array(sorted(set(range(sizes[d])) - removed[d]), dtype=np.int64) for d in removed}
        new = _set_sizes(name, mod, {d: len(k) for d, k in keep.items()})
        for attr, axes in dims.items():
            t = own.get(attr)
            if t is None:
                continue
            if id(t) in replaced:
                setattr(mod, attr, replaced[id(t)])
                continue
            value = t.detach()
            for axis, d in enumerate(axes):
                if d in keep:
                    value = value.index_select(axis, torch.as_tensor(keep[d], device=value.device))
            if value.shape == t.shape:
                continue
            new_t = torch.nn.Parameter(value.clone(), requires_grad=t.requires_grad) if isinstance(
                t, torch.nn.Parameter) else value.clone()
            setattr(mod, attr, new_t)
            replaced[id(t)] = new_t
        if "c" in keep and _rms_eps_attr(mod) is not None and len(keep["c"]) < sizes["c"]:
            new.update(_fold_rms(mod, sizes["c"], len(keep["c"])))
        changes[name] = new
    _fix_attention(module, changes)
    return changes


def _reads_weight_its_own_way(mod: Any) -> bool:
    """Whether a convolution's class replaces torch's ``forward`` (and may transform its weight)."""
    import torch.nn as nn

    if not isinstance(mod, nn.modules.conv._ConvNd):
        return False
    for base in type(mod).__mro__:
        if base.__module__.startswith("torch.nn"):
            return type(mod).forward is not base.forward
    return True


def _size_of(mod: Any, own: dict[str, Any], dims: dict[str, tuple[str, ...]], d: str) -> int:
    for attr, axes in dims.items():
        if attr in own and own[attr] is not None and d in axes:
            return int(own[attr].shape[axes.index(d)])
    raise KeyError(d)


def _set_sizes(name: str, mod: Any, size: dict[str, int]) -> dict[str, Any]:
    """Updates the module's size attributes to the kept counts; returns them."""
    import torch.nn as nn

    new: dict[str, Any] = {}
    if isinstance(mod, nn.Linear):
        if "out" in size:
            new["out_features"] = size["out"]
        if "in" in size:
            new["in_features"] = size["in"]
    elif isinstance(mod, nn.modules.conv._ConvNd):
        transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
        if mod.groups != 1:
            depthwise = (not transposed and mod.groups == mod.in_channels == mod.out_channels)
            if not depthwise or "in" in size:
                raise _fail(name, mod, f"a grouped convolution (groups={mod.groups}) loses channels")
            new["groups"] = new["in_channels"] = new["out_channels"] = size["out"]
        else:
            if "out" in size:
                new["out_channels"] = size["out"]
            if "in" in size:
                new["in_channels"] = size["in"]
    elif isinstance(mod, nn.modules.batchnorm._NormBase):
        new["num_features"] = size["c"]
    elif isinstance(mod, nn.LayerNorm):
        if len(mod.normalized_shape) != 1:
            raise _fail(name, mod, f"normalized_shape {tuple(mod.normalized_shape)} has more than one axis")
        new["normalized_shape"] = (size["c"],)
    elif isinstance(mod, nn.GroupNorm):
        per = mod.num_channels // mod.num_groups
        if size["c"] % per:
            raise _fail(name, mod, f"{size['c']} channels left do not fill groups of {per}")
        new["num_channels"], new["num_groups"] = size["c"], size["c"] // per
    elif isinstance(mod, nn.Embedding):
        if "num" in size:
            raise _fail(name, mod, "rows of the embedding table (token ids) are removed")
        new["embedding_dim"] = size["dim"]
    for k, v in new.items():
        setattr(mod, k, v)
    return new


_HEAD_SIZE = ("attention_head_size", "head_dim", "head_size")
_PROJECTIONS = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"))


def _fix_attention(module: Any, changes: dict[str, dict[str, Any]]) -> None:
    """Head counts of attention modules whose projections were sliced (whole heads)."""
    for name, mod in module.named_modules():
        size_attr = next((a for a in _HEAD_SIZE if isinstance(getattr(mod, a, None), int)), None)
        proj = next((p for p in _PROJECTIONS if all(hasattr(mod, c) for c in p)), None)
        if size_attr is None or proj is None:
            continue
        prefix = f"{name}." if name else ""
        if not any(f"{prefix}{c}" in changes for c in proj):
            continue
        head = getattr(mod, size_attr)
        q, k, v = (getattr(mod, c) for c in proj)
        outs = [getattr(m, "out_features", None) for m in (q, k, v)]
        if any(o is None or o % head for o in outs):
            raise _fail(name, mod, f"projections of {outs} features are not whole heads of {head}")
        new: dict[str, Any] = {}
        for attr in ("num_attention_heads", "num_heads"):
            if isinstance(getattr(mod, attr, None), int):
                new[attr] = outs[0] // head
        gqa = any(isinstance(getattr(mod, a, None), int) for a in ("num_key_value_heads", "num_key_value_groups"))
        if isinstance(getattr(mod, "num_key_value_heads", None), int):
            new["num_key_value_heads"] = outs[1] // head
        if gqa and outs[1] != outs[2]:
            raise _fail(name, mod, f"key/value keep {outs[1:]} features (one key/value head count)")
        if not gqa and (outs[1] != outs[0] or outs[2] != outs[0]):
            raise _fail(name, mod, f"query/key/value keep {outs} features (the module has one head count)")
        if isinstance(getattr(mod, "all_head_size", None), int):
            new["all_head_size"] = outs[0]
        if isinstance(getattr(mod, "num_key_value_groups", None), int):  # grouped-query attention
            if outs[0] % outs[1]:
                raise _fail(name, mod, f"{outs[0] // head} query heads do not share {outs[1] // head} key/value heads")
            new["num_key_value_groups"] = outs[0] // outs[1]
        for a, val in new.items():
            setattr(mod, a, val)
        changes.setdefault(name, {}).update(new)
