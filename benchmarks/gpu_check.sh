#!/usr/bin/env bash
# One command for a lent GPU machine: build curvext with its CUDA kernels, run the CUDA tests
# (every CPU-vs-CUDA comparison and the device-parametrised tests), the compiled-core
# benchmarks, restarted against unrestarted Lanczos (peak torch.cuda.max_memory_allocated and
# time at ImageNet size), the principal-curvature profiles against a per-image eigsh loop,
# collapsed Taylor mode against forward-over-forward mode, Algorithm 2's ResNet-50 throughput
# on the GPU and a `curvext detect` sweep over an image folder, and print a short table.
# Results land in $OUT (the device tool's output folder) or
# benchmarks/results/.
#
#   bash benchmarks/gpu_check.sh            # TORCH_CUDA_ARCH_LIST defaults to 9.0 here
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${OUT:-benchmarks/results}
mkdir -p "$RESULTS"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export PYTHONUNBUFFERED=1
stamp=$(date -u +%Y%m%d-%H%M)

echo "== build (CUDA, archs $TORCH_CUDA_ARCH_LIST)"
t0=$(date +%s)
if ! CURVEXT_CUDA=1 $PY setup.py -q build_ext --inplace > "$RESULTS/gpu_build.log" 2>&1; then
  tail -40 "$RESULTS/gpu_build.log"
  echo "BUILD FAILED"
  exit 1
fi
build_s=$(( $(date +%s) - t0 ))
$PY - <<'PY'
import torch, curvext._ops as o
assert torch.cuda.is_available(), "no CUDA device visible"
assert o.has_cuda_kernels(), "extension built without CUDA kernels"
print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__)
PY

echo "== CUDA tests"
$PY -m pytest -q -p no:cacheprovider tests -k cuda 2>&1 | tee "$RESULTS/gpu_tests.log" | tail -25
tests_rc=${PIPESTATUS[0]}
summary=$(tail -1 "$RESULTS/gpu_tests.log")

echo "== kernel benchmarks on the GPU"
$PY benchmarks/compare_core.py --device cuda --out "$RESULTS/gpu_core_$stamp.md" > "$RESULTS/gpu_bench.log" 2>&1
bench_rc=$?

echo "== restarted (basis_size=60) against unrestarted Lanczos: peak memory and time, B=64, d=3x224x224 and 3x32x32"
$PY benchmarks/bench_lanczos_memory.py --device cuda --out "$RESULTS/gpu_lanczos_memory_$stamp.md" \
  > "$RESULTS/gpu_memory.log" 2>&1
memory_rc=$?

echo "== principal-curvature profiles (64 images, 20 per end) against a per-image eigsh loop, on the GPU"
$PY benchmarks/bench_profiles.py --device cuda --repeat 3 --out "$RESULTS/gpu_profiles_$stamp.md" \
  > "$RESULTS/gpu_profiles.log" 2>&1
profiles_rc=$?

echo "== collapsed Taylor mode against forward-over-forward mode (digits zoo CNNs), on the GPU"
$PY benchmarks/bench_taylor_mode.py --device cuda --out "$RESULTS/gpu_taylor_$stamp.md" > "$RESULTS/gpu_taylor.log" 2>&1
taylor_rc=$?

echo "== Algorithm 2 on ResNet-50 (224x224, K=10, T=16)"
$PY benchmarks/bench_detect_resnet.py --device cuda --images 64 --out "$RESULTS/gpu_detect_resnet_$stamp.md" \
  > "$RESULTS/gpu_detect.log" 2>&1
detect_rc=$?

echo "== curvext detect over an image folder (ResNet-50, 224x224, K=10, T=16) against the passes alone"
$PY benchmarks/bench_sweep.py --device cuda --images 256 --workers 0,4,8 --batch-sizes 16,64 \
  --out "$RESULTS/gpu_sweep_$stamp.md" > "$RESULTS/gpu_sweep.log" 2>&1
sweep_rc=$?

echo
echo "| check | result |"
echo "|---|---|"
echo "| build (s) | $build_s |"
echo "| CUDA tests | $summary |"
echo "| benchmarks | $([ $bench_rc -eq 0 ] && echo ok || echo "FAILED (see gpu_bench.log)") |"
echo "| Lanczos memory | $([ $memory_rc -eq 0 ] && echo ok || echo "FAILED (see gpu_memory.log)") |"
echo "| profiles vs eigsh | $([ $profiles_rc -eq 0 ] && echo ok || echo "FAILED (see gpu_profiles.log)") |"
echo "| Taylor mode vs forward-over-forward | $([ $taylor_rc -eq 0 ] && echo ok || echo "FAILED (see gpu_taylor.log)") |"
echo "| ResNet-50 detection | $([ $detect_rc -eq 0 ] && echo ok || echo "FAILED (see gpu_detect.log)") |"
echo "| detect sweep | $([ $sweep_rc -eq 0 ] && echo ok || echo "FAILED (see gpu_sweep.log)") |"
echo
[ -f "$RESULTS/gpu_core_$stamp.md" ] && cat "$RESULTS/gpu_core_$stamp.md"
[ $bench_rc -ne 0 ] && tail -30 "$RESULTS/gpu_bench.log"
echo
[ -f "$RESULTS/gpu_lanczos_memory_$stamp.md" ] && cat "$RESULTS/gpu_lanczos_memory_$stamp.md"
[ $memory_rc -ne 0 ] && tail -30 "$RESULTS/gpu_memory.log"
echo
[ -f "$RESULTS/gpu_profiles_$stamp.md" ] && cat "$RESULTS/gpu_profiles_$stamp.md"
[ $profiles_rc -ne 0 ] && tail -30 "$RESULTS/gpu_profiles.log"
echo
[ -f "$RESULTS/gpu_taylor_$stamp.md" ] && cat "$RESULTS/gpu_taylor_$stamp.md"
[ $taylor_rc -ne 0 ] && tail -30 "$RESULTS/gpu_taylor.log"
echo
[ -f "$RESULTS/gpu_detect_resnet_$stamp.md" ] && cat "$RESULTS/gpu_detect_resnet_$stamp.md"
[ $detect_rc -ne 0 ] && tail -30 "$RESULTS/gpu_detect.log"
echo
[ -f "$RESULTS/gpu_sweep_$stamp.md" ] && cat "$RESULTS/gpu_sweep_$stamp.md"
[ $sweep_rc -ne 0 ] && tail -30 "$RESULTS/gpu_sweep.log"
exit $(( tests_rc != 0 || bench_rc != 0 || memory_rc != 0 || profiles_rc != 0 || taylor_rc != 0 || detect_rc != 0 \
         || sweep_rc != 0 ))
