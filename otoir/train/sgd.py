"""Plain numpy SGD with momentum and weight decay (torch.optim.SGD semantics)."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

import numpy as np

__all__ = ["SGD"]


class SGD:
    """Stochastic gradient descent over named numpy arrays, updated in place.

    Matches ``torch.optim.SGD(lr, momentum, dampening=0, weight_decay, nesterov)``::

        g = grad + weight_decay * p
        buf = g                      (first step)
        buf = momentum * buf + g     (later steps)
        p -= lr * (g + momentum * buf if nesterov else buf)

    Args:
        lr: Learning rate (may be changed between steps through the ``lr`` attribute).
        momentum: Momentum factor (0 disables the buffer).
        weight_decay: L2 penalty coefficient.
        nesterov: Nesterov momentum.
    """

    def __init__(self, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr, momentum and weight_decay must be >= 0 (got {lr}, {momentum}, {weight_decay})")
        if nesterov and momentum == 0:
            raise ValueError("SGD: nesterov needs momentum > 0")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.nesterov = bool(nesterov)
        self.buffers: dict[str, np.ndarray] = {}
        self.steps = 0

    def step(self, params: MutableMapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> None:
        """Updates every parameter that has a gradient, in place.

        Args:
            params: Name -> parameter array (written in place; float32 views are fine).
            grads: Name -> gradient array of the same shape. Parameters without a gradient are
                left unchanged.
        """
        lr, mom, wd = np.float32(self.lr), np.float32(self.momentum), np.float32(self.weight_decay)
        for name, p in params.items():
            g = grads.get(name)
            if g is None:
                continue
            d = g + wd * p if self.weight_decay else np.array(g, dtype=p.dtype, copy=True)
            if self.momentum:
                buf = self.buffers.get(name)
                if buf is None:
                    buf = self.buffers[name] = d.astype(p.dtype, copy=True)
                else:
                    buf *= mom
                    buf += d
                d = d + mom * buf if self.nesterov else buf
            p -= lr * d
        self.steps += 1
