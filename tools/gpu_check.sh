#!/usr/bin/env bash
# GPU device check (run on a machine with nvcc, cmake and a CUDA torch, from the repo root):
#   builds the CUDA kernel library with CMake and through setup.py, runs the kernel and optimizer
#   tests against the installed copy, and times the fused projection (bench_optim part b).
# Wheels of packages the machine lacks (onnx-ir>=1.1, onnx-graphsurgeon, filecheck) go in .devwheels/
# (git-ignored; carry it): pip download --no-deps -d .devwheels onnx-ir onnx_graphsurgeon filecheck
# Results are written to $OUT (the device tool) or ./gpu_check_out.
set -u
ROOT=$(pwd)
OUT=${OUT:-$ROOT/gpu_check_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi -L; nvcc --version | tail -2; cmake --version | head -1; python3 -V
[ -d .devwheels ] && python3 -m pip install -q --no-deps --no-index .devwheels/*.whl 2>&1 | tail -2
echo "== cmake build"; t0=$(date +%s)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release > $OUT/cmake.log 2>&1 && cmake --build build -j16 >> $OUT/cmake.log 2>&1; echo "cmake rc=$? $(( $(date +%s)-t0 ))s"; ls build/*.so
echo "== setup.py build ships the library"
OTOIR_BUILD_CUDA=1 python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/inst . > $OUT/pipinst.log 2>&1; echo "pip rc=$?"; ls /tmp/inst/otoir/kernels/ | grep -c "\.so$"
# (an editable install needs build dependencies from a registry, which this machine cannot reach:
#  the tests import the wheel-style install in /tmp/inst, which carries the library setup.py built)
export PYTHONPATH=/tmp/inst
(cd /tmp && python3 -c "from otoir import kernels; print('kernel status:', kernels.kernel_status(), kernels.cuda_available())")
echo "== tests"
(cd tests && timeout 300 python3 -m pytest -c ../pytest.ini --rootdir .. -q -p no:cacheprovider -rs unit/test_kernels.py unit/test_optim_torch.py unit/test_optim_fused.py 2>&1 | tail -25)
echo "== bench (b) cuda"
(cd /tmp && timeout 150 python3 "$ROOT/tools/bench_optim.py" --part b --steps 20 2>&1 | tail -30)
