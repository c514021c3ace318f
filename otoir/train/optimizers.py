"""The optimizer protocol of the training backends and the factory the ``train`` pass uses.

An optimizer is any object with::

    step(params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None

that updates ``params`` in place (the arrays may be views of the backend's buffers: write
into them, never rebind). Optional attributes the progress bar and the trainer use:

* ``lr`` (float, settable): learning rate;
* ``num_zero_groups`` (int) and ``num_groups`` (int), or ``group_sparsity`` (float in [0, 1]):
  shown as group sparsity.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from otoir.train.sgd import SGD

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["Optimizer", "OptimizerUnavailable", "OPTIMIZERS", "make_optimizer", "group_sparsity"]

#: Structured-sparsity optimizers offered by the training backends (``hspg``, also in
#: :data:`otoir.optim.ALGORITHMS`, has no target and is not offered).
STRUCTURED = ("h2spg", "dhspg")
#: Optimizer names accepted by :func:`make_optimizer`.
OPTIMIZERS = ("sgd", *STRUCTURED)


@runtime_checkable
class Optimizer(Protocol):
    """What the training backends need from an optimizer."""

    def step(self, params: MutableMapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> None:
        """Updates ``params`` in place from ``grads``."""
        ...


class OptimizerUnavailable(RuntimeError):
    """The requested optimizer is not available in this build of otoir."""


def group_sparsity(opt: Any) -> float | None:
    """The optimizer's current group sparsity (zero groups / groups), or None if it has no groups."""
    val = getattr(opt, "group_sparsity", None)
    if isinstance(val, (int, float)):
        return float(val)
    zero, total = getattr(opt, "num_zero_groups", None), getattr(opt, "num_groups", None)
    if isinstance(zero, (int, np.integer)) and isinstance(total, (int, np.integer)) and total > 0:
        return float(zero) / float(total)
    return None


def make_optimizer(name: str, model: ir.Model | None = None, groups: Any = None, **opts: Any) -> Optimizer:
    """Builds the ONNX Runtime backend's optimizer by name.

    ``sgd`` is :class:`~otoir.train.sgd.SGD`; the structured-sparsity optimizers come from the one
    factory, :func:`otoir.optim.build_optimizer` (numpy front end, shapes of the model's trainable
    parameters).

    Args:
        name: ``sgd``, ``h2spg`` or ``dhspg``.
        model: The model being trained (used by the structured-sparsity optimizers).
        groups: The prunable groups (``h2spg``/``dhspg`` only).
        **opts: ``lr``, ``momentum``, ``weight_decay`` (all; ``None`` means the default), and
            for the structured-sparsity optimizers ``target_sparsity`` (an alias of ``target``),
            ``base``, ``schedule`` and the flat options of :mod:`otoir.optim.options`.

    Returns:
        The optimizer.

    Raises:
        ValueError: Unknown name or bad options.
    """
    key = name.strip().lower()
    if key == "sgd":
        known = {"lr", "momentum", "weight_decay", "nesterov"}
        return SGD(**{k: v for k, v in opts.items() if k in known and v is not None})
    if key in STRUCTURED:
        from otoir.optim import build_optimizer
        from otoir.optim.from_groups import trainable_shapes

        if groups is None:
            raise ValueError(f"optimizer '{key}' needs the group analysis (gezig or zig groups)")
        opts = {k: v for k, v in opts.items() if v is not None}
        if "target_sparsity" in opts:
            opts["target"] = opts.pop("target_sparsity")
        try:
            return build_optimizer(key, trainable_shapes(model), groups=groups, front="numpy", **opts)
        except TypeError as exc:  # an unknown or inapplicable option: a bad option, not a crash
            raise ValueError(str(exc)) from exc
    raise ValueError(f"unknown optimizer '{name}' (choose one of: {', '.join(OPTIMIZERS)})")
