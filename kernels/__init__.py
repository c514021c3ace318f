"""otoir.kernels: the fused half-space projection of DHSPG / H2SPG.

* :func:`halfspace_project` — one operation per step over all active groups; runs the CUDA
  kernel for float32 CUDA tensors when the library is built and a device is present, and the
  vectorised numpy/torch reference otherwise.
* :mod:`otoir.kernels.loader` — the ctypes loader (:func:`kernel_status` is ``"no-library"``,
  ``"no-device"`` or ``"ok"``; the first two are normal states).
* :mod:`otoir.kernels.reference` — the CPU reference the kernel is tested against.
"""

from __future__ import annotations

from typing import Any

from .loader import CudaHalfspace, cuda_available, find_library, kernel_status, load_library

__all__ = [
    "CudaHalfspace",
    "cuda_available",
    "find_library",
    "halfspace_project",
    "kernel_status",
    "load_library",
]

_cuda_cache: dict[Any, CudaHalfspace] = {}


def halfspace_project(
    layout: Any,
    xs: list[Any],
    ds: list[Any],
    active: Any,
    lr: float,
    rule: Any,
    epsilon: float,
    *,
    force: bool = False,
) -> Any:
    """Fused half-space projection, dispatched to CUDA when possible (see module docstring).

    Arguments and result as :func:`otoir.optim.halfspace.halfspace_project` with ``project=True``.
    """
    if xs and type(xs[0]).__module__.startswith("torch") and xs[0].is_cuda and cuda_available():
        key = (id(layout), str(xs[0].device))
        impl = _cuda_cache.get(key)
        if impl is None:
            impl = _cuda_cache[key] = CudaHalfspace(layout, xs[0].device)
        if impl.supports(xs, ds):
            return impl(xs, ds, active, lr, rule, epsilon, force=force)
    from .reference import halfspace_project as reference

    return reference(layout, xs, ds, active, lr, rule, epsilon, force=force)
