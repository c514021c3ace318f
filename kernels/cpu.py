"""ctypes loader of the optional CPU step kernel ``cpu_step.c`` (built at first use).

The fused optimizer step (:mod:`otoir.optim.fused`) calls it to stream each row of a tensor
once through the cache for the momentum update, the DHSPG row statistics and the base step
(see the C file's header). It is compiled with the system C compiler (``$CC`` or ``cc``) into a
cache folder (``$OTOIR_CACHE_DIR``, else ``$XDG_CACHE_HOME/otoir``, else ``~/.cache/otoir``),
once per source version; ``OTOIR_CPU_KERNEL=0`` disables it. Any failure (no compiler, a
read-only cache, a load error) means "no kernel" and the numpy/torch code path is used.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
import threading
from typing import Any

__all__ = [
    "CPU_ABI",
    "CpuStep",
    "FLAG_FM",
    "FLAG_HM",
    "FLAG_UX",
    "FLAG_WD",
    "STATS_AFTER",
    "STATS_BEFORE",
    "STATS_NONE",
    "cpu_kernel",
    "cpu_kernel_status",
]

# The one Python copy of the constants #defined in cpu_step.c (tests/unit/test_kernels.py
# parses the C source and compares).
#: ``otoir_cpu_abi()`` of a matching library.
CPU_ABI = 1
#: Bits of the ``flags`` argument: weight decay, momentum buffer, update x, fused multiply-add.
FLAG_WD, FLAG_HM, FLAG_UX, FLAG_FM = 1, 2, 4, 8
#: Values of the ``sm`` argument of ``otoir_sweep_*``: no row statistics, of ``(x, g)`` before
#: the update, of ``(x, d)`` after it.
STATS_NONE, STATS_BEFORE, STATS_AFTER = 0, 1, 2
_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_step.c")
_FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp-simd", "-ffp-contract=off"],
    ["-O3", "-fopenmp-simd", "-ffp-contract=off"],
)
_lock = threading.Lock()
_state: dict[str, Any] = {}


def _cache_dir() -> str:
    base = os.environ.get("OTOIR_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "otoir")
    return base


def _build() -> str | None:
    try:
        with open(_SRC, "rb") as f:
            src = f.read()
    except OSError:
        return None
    cc = os.environ.get("CC", "cc")
    folder = _cache_dir()
    for flags in _FLAG_SETS:
        tag = hashlib.sha256(src + " ".join([cc, *flags]).encode()).hexdigest()[:16]
        path = os.path.join(folder, f"libotoir_cpu_step_{tag}.so")
        if os.path.isfile(path):
            return path
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
            os.close(fd)
            res = subprocess.run(
                [cc, *flags, "-shared", "-fPIC", "-o", tmp, _SRC],
                capture_output=True,
                timeout=300,
            )
            if res.returncode == 0:
                os.replace(tmp, path)  # atomic: concurrent builders race harmlessly
                return path
            os.unlink(tmp)
        except (OSError, subprocess.SubprocessError):
            continue
    return None


class CpuStep:
    """The loaded kernel: :meth:`sweep` and :meth:`scale` on numpy arrays or CPU tensors."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        p, i64, d, i = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
        for sfx in ("f32", "f64"):
            fn = getattr(lib, f"otoir_sweep_{sfx}")
            fn.argtypes = [p, p, p, i64, i64, d, d, d, d, p, p, p, p, i, i]
            fn.restype = None
            fn = getattr(lib, f"otoir_scale_{sfx}")
            fn.argtypes = [p, p, i64, i64, p, d, d, p, i]
            fn.restype = None
        self.sweep_f32, self.sweep_f64 = lib.otoir_sweep_f32, lib.otoir_sweep_f64
        self.scale_f32, self.scale_f64 = lib.otoir_scale_f32, lib.otoir_scale_f64
        self.lib = lib


def cpu_kernel() -> CpuStep | None:
    """The kernel, built and loaded on first call; ``None`` when unavailable."""
    with _lock:
        if "kernel" in _state:
            return _state["kernel"]
        kernel = None
        status = "disabled"
        if os.environ.get("OTOIR_CPU_KERNEL", "1") != "0":
            path = _build()
            status = "no-compiler"
            if path is not None:
                try:
                    lib = ctypes.CDLL(path)
                    if lib.otoir_cpu_abi() == CPU_ABI:
                        kernel = CpuStep(lib)
                        status = "ok"
                    else:
                        status = "abi-mismatch"
                except (OSError, AttributeError):
                    status = "load-error"
        _state["kernel"], _state["status"] = kernel, status
        return kernel


def cpu_kernel_status() -> str:
    """``"ok"``, ``"disabled"``, ``"no-compiler"``, ``"load-error"`` or ``"abi-mismatch"``."""
    cpu_kernel()
    return str(_state["status"])
