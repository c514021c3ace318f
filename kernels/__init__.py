"""otoir.kernels: the optional native kernels of the DHSPG / H2SPG optimizers.

* :mod:`otoir.kernels.loader` — ctypes loader of the CUDA library (``halfspace.cu``): the fused
  half-space projection over all active groups (:class:`CudaHalfspace`);
  :func:`kernel_status` is ``"no-library"``, ``"no-device"`` or ``"ok"`` (the first two are
  normal states).
* :mod:`otoir.kernels.cpu` — the CPU step kernel (``cpu_step.c``, built at first use) and its
  flag constants (the one Python copy of the C defines).

The numpy/torch reference these kernels are tested against is
:func:`otoir.optim.halfspace.halfspace_project`. This package imports nothing from
``otoir.optim``; the optimizers import it lazily, when a step first needs a kernel.
"""

from __future__ import annotations

from .loader import CudaHalfspace, cuda_available, cuda_halfspace, find_library, kernel_status, load_library

__all__ = [
    "CudaHalfspace",
    "cuda_available",
    "cuda_halfspace",
    "find_library",
    "kernel_status",
    "load_library",
]
