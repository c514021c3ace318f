"""ctypes loader of the optional CUDA kernel library ``libotoir_kernels.so``.

Three states are normal and reported by :func:`kernel_status`:

* ``"no-library"``: the library was not built (no ``nvcc`` at install time) or cannot be loaded;
* ``"no-device"``: it loads, but ``cudaGetDeviceCount`` fails (e.g. error 35,
  ``cudaErrorInsufficientDriver``, on a machine without a driver) or finds no device;
* ``"ok"``: a device is usable.

Only ``"ok"`` enables :class:`CudaHalfspace`; everything else falls back to the CPU/torch
reference in :mod:`otoir.optim.halfspace` (this package imports nothing from ``otoir.optim``;
the optimizers import it lazily). The library is searched at ``$OTOIR_KERNELS_LIB``,
next to this file (where ``setup.py`` installs it), then in ``build/`` of a source checkout.
"""

from __future__ import annotations

import ctypes
import glob
import os
from functools import lru_cache
from typing import Any

__all__ = [
    "ABI_VERSION",
    "CUDA_ERROR_INSUFFICIENT_DRIVER",
    "CudaHalfspace",
    "cuda_available",
    "cuda_halfspace",
    "device_count",
    "find_library",
    "kernel_status",
    "load_library",
]

#: ``otoir_kernels_abi_version()`` of a matching library (``OTOIR_KERNELS_ABI`` in halfspace.cu).
ABI_VERSION = 1
CUDA_ERROR_INSUFFICIENT_DRIVER = 35
_LIB_GLOB = "libotoir_kernels*.so"


def find_library() -> str | None:
    """Path of the kernel library, or ``None`` when it is not built."""
    env = os.environ.get("OTOIR_KERNELS_LIB")
    if env:
        return env if os.path.isfile(env) else None
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (here, os.path.join(os.path.dirname(here), "build")):
        hits = sorted(glob.glob(os.path.join(folder, _LIB_GLOB)))
        if hits:
            return hits[0]
    return None


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.otoir_cuda_device_count.argtypes = [ctypes.POINTER(ctypes.c_int)]
    lib.otoir_cuda_device_count.restype = ctypes.c_int
    lib.otoir_kernels_abi_version.argtypes = []
    lib.otoir_kernels_abi_version.restype = ctypes.c_int
    p = ctypes.c_void_p
    lib.otoir_halfspace_f32.argtypes = [
        p, p, p, p, p, p, p, ctypes.c_int,
        ctypes.c_double, ctypes.c_double, ctypes.c_double, ctypes.c_double, ctypes.c_int,
        ctypes.c_double, ctypes.c_int, p, p,
    ]
    lib.otoir_halfspace_f32.restype = ctypes.c_int
    return lib


def load_library(path: str | None = None) -> ctypes.CDLL | None:
    """Loads the kernel library (``None`` if absent, unloadable or of another ABI version).

    Args:
        path: Explicit path; default :func:`find_library`.
    """
    path = path or find_library()
    if not path:
        return None
    try:
        lib = _declare(ctypes.CDLL(path))
    except (OSError, AttributeError):
        return None
    if lib.otoir_kernels_abi_version() != ABI_VERSION:
        return None
    return lib


def device_count(lib: ctypes.CDLL) -> tuple[int, int]:
    """``(cuda_error, count)`` as reported through the library (never raises)."""
    n = ctypes.c_int(0)
    err = int(lib.otoir_cuda_device_count(ctypes.byref(n)))
    return err, (n.value if err == 0 else 0)


@lru_cache(maxsize=1)
def _status() -> tuple[str, ctypes.CDLL | None, int]:
    lib = load_library()
    if lib is None:
        return "no-library", None, -1
    err, n = device_count(lib)
    if err != 0 or n == 0:
        return "no-device", lib, err
    return "ok", lib, 0


def kernel_status() -> str:
    """``"no-library"``, ``"no-device"`` or ``"ok"`` (cached for the process)."""
    return _status()[0]


def cuda_available() -> bool:
    """True when the library is loaded and a CUDA device is usable."""
    return _status()[0] == "ok"


class CudaHalfspace:
    """The fused half-space projection on float32 CUDA tensors, in place.

    Same contract as :func:`otoir.optim.halfspace.halfspace_project` (``project=True``); the
    layout's index arrays are uploaded once.

    Args:
        layout: A :class:`otoir.optim.layout.GroupLayout`.
        device: The torch CUDA device of the parameters.
        lib: Loaded library (default: the process-wide one; must be in state ``"ok"``).
    """

    def __init__(self, layout: Any, device: Any, lib: ctypes.CDLL | None = None) -> None:
        import torch

        status, default_lib, _ = _status()
        self.lib = lib or default_lib
        if self.lib is None or (lib is None and status != "ok"):
            raise RuntimeError(f"otoir CUDA kernel unavailable ({status})")
        dev = torch.device(device)
        self.device = dev
        self.layout = layout
        i64 = torch.int64
        self.dims = torch.tensor(
            [[t.outer, t.rows, t.inner] for t in layout.tensors], dtype=i64, device=dev
        ).reshape(-1)
        self.group_row_ptr = torch.tensor(layout.group_row_ptr, dtype=i64).to(dev)
        self.row_tensor = torch.tensor(layout.row_tensor[layout.group_rows], dtype=i64).to(dev)
        self.row_local = torch.tensor(layout.row_local[layout.group_rows], dtype=i64).to(dev)

    def supports(self, xs: list[Any], ds: list[Any]) -> bool:
        """True when every tensor is a contiguous float32 tensor on this device."""
        import torch

        for t in list(xs) + [d for d in ds if d is not None]:
            if t.dtype != torch.float32 or t.device != self.device or not t.is_contiguous():
                return False
        return True

    def __call__(
        self,
        xs: list[Any],
        ds: list[Any],
        active: Any,
        lr: float,
        rule: Any,
        epsilon: float,
        *,
        force: bool = False,
    ) -> Any:
        """Runs the kernel; returns the ``(G,)`` numpy bool mask of projected groups."""
        import numpy as np
        import torch

        G = self.layout.num_groups
        ids = np.flatnonzero(np.asarray(active, dtype=bool)).astype(np.int32)
        projected = torch.zeros(G, dtype=torch.uint8, device=self.device)
        if ids.size == 0:
            return np.zeros(G, dtype=bool)
        x_ptrs = torch.tensor([x.data_ptr() for x in xs], dtype=torch.int64).to(self.device)
        d_ptrs = torch.tensor(
            [0 if d is None else d.data_ptr() for d in ds], dtype=torch.int64
        ).to(self.device)
        active_dev = torch.from_numpy(ids).to(self.device)
        stream = torch.cuda.current_stream(self.device).cuda_stream
        err = self.lib.otoir_halfspace_f32(
            x_ptrs.data_ptr(), d_ptrs.data_ptr(), self.dims.data_ptr(),
            self.group_row_ptr.data_ptr(), self.row_tensor.data_ptr(), self.row_local.data_ptr(),
            active_dev.data_ptr(), int(ids.size),
            float(lr), float(rule.lam), float(rule.amplify), float(rule.hat_coeff),
            int(bool(rule.adaptive)), float(epsilon), int(bool(force)),
            projected.data_ptr(), ctypes.c_void_p(stream),
        )
        if err != 0:
            raise RuntimeError(f"otoir_halfspace_f32 failed with cudaError {err}")
        return projected.cpu().numpy().astype(bool)


def cuda_halfspace(layout: Any, device: Any) -> CudaHalfspace | None:
    """A :class:`CudaHalfspace` for ``device``, or ``None`` when the kernel is unavailable."""
    if not cuda_available():
        return None
    try:
        return CudaHalfspace(layout, device)
    except RuntimeError:
        return None
