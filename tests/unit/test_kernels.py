"""otoir.kernels: loader states, constants shared with the C/CUDA sources, no import cycle with
otoir.optim, CMake build of the CUDA library, GPU equivalence."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from otoir import kernels
from otoir.kernels import cpu, loader
from otoir.optim import GroupLayout, LambdaRule
from otoir.optim.halfspace import halfspace_project as reference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KERNELS = os.path.join(ROOT, "kernels")


def _layout_and_data(seed=0, dtype=np.float32):
    shapes = {"a": (16, 8, 3, 3), "bn": (16,), "c": (10, 16), "g": (4, 5)}
    groups = [[("a", 0, [i]), ("bn", 0, [i])] for i in range(16)]
    groups += [[("c", 1, [j])] for j in range(16)] + [[("g", None, None)]]
    lay = GroupLayout.from_slices(groups, shapes)
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=shapes[n]).astype(dtype) for n in lay.names]
    ds = [(rng.normal(size=x.shape) + rng.choice([-2.0, 2.0]) * x).astype(dtype) for x in xs]
    return lay, xs, ds


def test_package_is_found():
    assert kernels is not None
    assert kernels.kernel_status() in ("no-library", "no-device", "ok")


def test_missing_library_is_a_normal_state(tmp_path, monkeypatch):
    monkeypatch.setenv("OTOIR_KERNELS_LIB", str(tmp_path / "missing.so"))
    assert kernels.find_library() is None
    assert kernels.load_library() is None
    bogus = tmp_path / "libotoir_kernels.so"
    bogus.write_bytes(b"not an ELF file")
    assert kernels.load_library(str(bogus)) is None


def _defines(filename):
    with open(os.path.join(KERNELS, filename)) as f:
        text = f.read()
    return {m[1]: int(m[2]) for m in re.finditer(r"^\s*#define\s+(OTOIR_\w+)\s+(\d+)\b", text, re.M)}


def test_python_constants_equal_the_c_defines():
    c = _defines("cpu_step.c")
    flags = {k[len("OTOIR_FLAG_"):]: v for k, v in c.items() if k.startswith("OTOIR_FLAG_")}
    stats = {k[len("OTOIR_STATS_"):]: v for k, v in c.items() if k.startswith("OTOIR_STATS_")}
    assert flags == {"WD": cpu.FLAG_WD, "HM": cpu.FLAG_HM, "UX": cpu.FLAG_UX, "FM": cpu.FLAG_FM}
    assert stats == {"NONE": cpu.STATS_NONE, "BEFORE": cpu.STATS_BEFORE, "AFTER": cpu.STATS_AFTER}
    assert c["OTOIR_CPU_ABI"] == cpu.CPU_ABI
    assert _defines("halfspace.cu")["OTOIR_KERNELS_ABI"] == loader.ABI_VERSION
    bits = [cpu.FLAG_WD, cpu.FLAG_HM, cpu.FLAG_UX, cpu.FLAG_FM]
    assert all(b & (b - 1) == 0 for b in bits) and len(set(bits)) == 4  # distinct single bits


def test_flag_constants_have_one_python_definition():
    """Only kernels/cpu.py assigns the flag constants; otoir.optim imports them."""
    owners = []
    for folder in ("kernels", os.path.join("otoir", "optim")):
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            if not name.endswith(".py"):
                continue
            with open(os.path.join(ROOT, folder, name)) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                targets = node.targets if isinstance(node, ast.Assign) else []
                for t in targets:
                    elts = t.elts if isinstance(t, ast.Tuple) else [t]
                    if any(isinstance(e, ast.Name) and re.fullmatch(r"_?(FLAG_)?(WD|HM|UX|FM)", e.id) for e in elts):
                        owners.append(os.path.join(folder, name))
    assert owners == [os.path.join("kernels", "cpu.py")]


def test_kernels_import_nothing_from_optim():
    for name in sorted(os.listdir(KERNELS)):
        if name.endswith(".py"):
            with open(os.path.join(KERNELS, name)) as f:
                tree = ast.parse(f.read())
            mods = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
            mods += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            assert not [m for m in mods if m.startswith("otoir.optim")], name
    code = ("import sys, otoir.kernels, otoir.kernels.cpu; "
            "assert not [m for m in sys.modules if m.startswith('otoir.optim')], 'optim imported'; "
            "import otoir.optim; assert 'otoir.kernels' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    lazy = "import sys, otoir.optim; assert 'otoir.kernels' not in sys.modules, 'kernels imported eagerly'"
    subprocess.run([sys.executable, "-c", lazy], check=True, timeout=120)


def test_no_cuda_kernel_means_none():
    lay, _, _ = _layout_and_data()
    if not kernels.cuda_available():
        assert kernels.cuda_halfspace(lay, "cuda") is None


@pytest.fixture(scope="module")
def built_library(tmp_path_factory):
    if shutil.which("nvcc") is None or shutil.which("cmake") is None:
        pytest.skip("nvcc or cmake not found")
    build = tmp_path_factory.mktemp("cuda_build")
    subprocess.run(["cmake", "-S", ROOT, "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
                   check=True, capture_output=True, timeout=300)
    subprocess.run(["cmake", "--build", str(build), "-j2"], check=True, capture_output=True, timeout=300)
    libs = [f for f in os.listdir(build) if f.startswith("libotoir_kernels") and f.endswith(".so")]
    assert libs, "cmake --build produced no libotoir_kernels*.so"
    return str(build / libs[0])


def test_cmake_build_loads_and_reports_devices(built_library):
    from otoir.kernels import loader

    lib = loader.load_library(built_library)
    assert lib is not None
    assert lib.otoir_kernels_abi_version() == loader.ABI_VERSION
    err, n = loader.device_count(lib)
    # without a driver the runtime answers cudaErrorInsufficientDriver (35) instead of crashing
    assert (err == 0 and n >= 0) or (err != 0 and n == 0)


def _cuda_ready():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if not kernels.cuda_available():
        pytest.skip(f"kernel library not usable ({kernels.kernel_status()})")
    return torch


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.5])
def test_cuda_kernel_matches_cpu_reference(force, eps):
    torch = _cuda_ready()
    lay, xs, ds = _layout_and_data(3)
    rule = LambdaRule(lam=0.3)
    active = np.random.default_rng(1).uniform(size=lay.num_groups) < 0.8
    cpu = [torch.from_numpy(x.copy()) for x in xs]
    gpu = [torch.from_numpy(x.copy()).cuda() for x in xs]
    dcpu = [torch.from_numpy(d) for d in ds]
    dgpu = [d.cuda() for d in dcpu]
    p_ref = reference(lay, cpu, dcpu, active, 0.5, rule, eps, force=force)
    impl = kernels.CudaHalfspace(lay, gpu[0].device)
    p_gpu = impl(gpu, dgpu, active, 0.5, rule, eps, force=force)
    assert np.array_equal(p_ref, p_gpu)
    for a, b in zip(cpu, gpu):
        np.testing.assert_allclose(b.cpu().numpy(), a.numpy(), rtol=1e-6, atol=1e-6)


def test_cuda_optimizer_uses_kernel_and_matches_cpu():
    torch = _cuda_ready()
    from otoir.optim import DHSPG

    torch.manual_seed(0)
    shapes = {"w": (64, 32), "b": (64,)}
    groups = [[("w", 0, [i]), ("b", 0, [i])] for i in range(64)]
    lay = GroupLayout.from_slices(groups, shapes)
    w0, b0 = torch.randn(64, 32), torch.randn(64)
    res = {}
    for dev in ("cpu", "cuda"):
        w = torch.nn.Parameter(w0.clone().to(dev))
        b = torch.nn.Parameter(b0.clone().to(dev))
        opt = DHSPG({"w": w, "b": b}, lay, lr=0.05, momentum=0.9, target=20, warmup_steps=3,
                    projection_steps=6, epsilon=0.5, lam=0.1, cuda_kernel=(dev == "cuda"))
        g = torch.Generator().manual_seed(1)
        for _ in range(10):
            w.grad = torch.randn(64, 32, generator=g).to(dev)
            b.grad = torch.randn(64, generator=g).to(dev)
            opt.step()
        res[dev] = (w.detach().cpu(), opt.zero_groups)
    assert np.array_equal(res["cpu"][1], res["cuda"][1]) and res["cpu"][1].sum() == 20
    torch.testing.assert_close(res["cuda"][0], res["cpu"][0], rtol=1e-5, atol=1e-5)


_FAKE_CMAKE = r'''#!/usr/bin/env python3
import os, sys
args = sys.argv[1:]
if "--build" in args:
    out = args[args.index("--build") + 1]
    open(os.path.join(out, "libotoir_kernels.so"), "wb").close()
else:
    os.makedirs(args[args.index("-B") + 1], exist_ok=True)
'''


def test_wheel_build_ships_the_kernel_library(tmp_path):
    """setup.py's build_py step (run when nvcc exists or OTOIR_BUILD_CUDA=1) builds the library in
    the build command's temporary folder and copies it into the built package (what a wheel ships). A stand-in ``cmake`` writes
    an empty library, so this runs without nvcc (the real build is checked on a GPU machine)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "cmake").write_text(_FAKE_CMAKE)
    (bin_dir / "cmake").chmod(0o755)
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".devwheels", "tests", "out"))
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", OTOIR_BUILD_CUDA="1")
    # ``setup.py build`` runs the same build_py step as a wheel build, without needing the
    # ``wheel`` package (a fresh venv's setuptools may lack bdist_wheel)
    done = subprocess.run([sys.executable, "setup.py", "-q", "build", "--build-base", str(tmp_path / "b")],
                          cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    libs = list((tmp_path / "b").glob("lib*/otoir/kernels/libotoir_kernels.so"))
    assert libs, sorted(str(p) for p in (tmp_path / "b").rglob("*.so"))
