// The CUDA names that curvext's kernels use, provided on the CPU, so that the kernels' own device
// code (csrc/cuda/*_kernel.cuh) runs without a GPU. Every CUDA thread of a block is a std::thread;
// __syncthreads is a barrier over the block, warp shuffles exchange values through a per-warp
// slot array between two barriers over the warp. Blocks run one after another; each gets fresh
// shared memory filled with NaN (a read before any write shows), and the dynamic part is
// followed by a NaN guard that must still be intact after the block (a write past the launch's
// shared_bytes fails the launch). Threads that return early leave the barriers (arrive_and_drop),
// as exited threads stop counting for __syncthreads on a GPU.
//
// Stricter than a GPU, so some bugs pass here: blocks never overlap (inter-block races), and a
// shuffle is a full rendezvous of its warp (a missing __syncwarp). FMA contraction differs too.
// Include it after the torch headers: torch redefines CUDA_KERNEL_ASSERT.
#pragma once
#define CURVEXT_EMULATE_CUDA 1

#include <barrier>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define CURVEXT_SHARED_ARRAY(T, name, n) T* name = curvext_emu::shared_array<T>(#name, n)
#define CURVEXT_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(curvext_emu::dynamic_shared.data())
#undef CUDA_KERNEL_ASSERT
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
inline std::map<std::string, std::vector<double>> static_shared;  // CURVEXT_SHARED_ARRAYs of the block
inline std::mutex static_shared_lock;

// The block's shared array `name` of n T (all threads get the same storage), NaN-filled when the
// block first asks for it.
template <typename T>
T* shared_array(const char* name, size_t n) {
  static_assert(sizeof(T) % sizeof(double) == 0 || sizeof(double) % sizeof(T) == 0, "odd element size");
  std::lock_guard<std::mutex> guard(static_shared_lock);
  auto& storage = static_shared[name];
  if (storage.empty()) storage.assign((n * sizeof(T) + sizeof(double) - 1) / sizeof(double),
                                      std::numeric_limits<double>::quiet_NaN());
  return reinterpret_cast<T*>(storage.data());
}

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
