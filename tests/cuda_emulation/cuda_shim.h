// The CUDA names that curvext's kernels use, provided on the CPU, so that the kernels' own device
// code (csrc/cuda/*_kernel.cuh) runs without a GPU. Every CUDA thread of a block is a std::thread;
// __syncthreads is a barrier over the block, warp shuffles exchange values through a per-warp
// slot array between two barriers over the warp. Blocks run one after another, so a block's
// shared memory is plain static storage. Threads that return early leave the barriers
// (arrive_and_drop), as exited threads stop counting for __syncthreads on a GPU.
#pragma once
#define CURVEXT_EMULATE_CUDA 1

#include <barrier>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define CURVEXT_SHARED_ARRAY(T, name, n) static T name[n]
#define CURVEXT_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(curvext_emu::dynamic_shared.data())
#define CUDA_KERNEL_ASSERT(cond) \
  do { if (!(cond)) throw std::runtime_error("device assert failed: " #cond); } while (0)

using std::isfinite;
using std::sqrt;
using std::fabs;

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

namespace curvext_emu {

inline thread_local dim3 thread_idx;
inline dim3 block_idx, block_dim;
inline std::vector<double> dynamic_shared;
inline std::unique_ptr<std::barrier<>> block_barrier;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline std::vector<double> warp_slots;  // 32 per warp

}  // namespace curvext_emu

#define threadIdx (curvext_emu::thread_idx)
#define blockIdx (curvext_emu::block_idx)
#define blockDim (curvext_emu::block_dim)

inline void __syncthreads() { curvext_emu::block_barrier->arrive_and_wait(); }

inline double __shfl_down_sync(unsigned, double v, int offset) {
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  double* slots = curvext_emu::warp_slots.data() + 32 * warp;
  slots[lane] = v;
  curvext_emu::warp_barriers[warp]->arrive_and_wait();
  const double out = lane + offset < 32 ? slots[lane + offset] : v;
  curvext_emu::warp_barriers[warp]->arrive_and_wait();  // slots are rewritten by the next shuffle
  return out;
}
