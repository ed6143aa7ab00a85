// Block-wide and warp-wide sums in double for the CUDA kernels.
#pragma once
#include <cstdint>

#include "device_compat.cuh"

namespace curvext {
namespace cuda {

constexpr int kThreads = 256;
// warp_sum's full mask and block_sum's 32 warp slots need whole warps and at most 1024 threads.
static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block size must be whole warps, <= 1024");

__device__ inline double warp_sum(double v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// Sum of v over the block; every thread gets the result. scratch: >= 33 doubles of shared memory.
__device__ inline double block_sum(double v, double* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    double t = lane < (int)((blockDim.x + 31) >> 5) ? scratch[lane] : 0.0;
    t = warp_sum(t);
    if (lane == 0) scratch[32] = t;
  }
  __syncthreads();
  return scratch[32];
}

template <typename T>
__device__ inline double block_dot(const T* x, const T* y, int64_t n, double* scratch) {
  double s = 0.0;
  for (int64_t t = threadIdx.x; t < n; t += blockDim.x) s += double(x[t]) * double(y[t]);
  return block_sum(s, scratch);
}

}  // namespace cuda
}  // namespace curvext
