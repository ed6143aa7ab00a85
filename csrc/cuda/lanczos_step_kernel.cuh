// Device code of curvext::lanczos_step's CUDA kernel (launched by lanczos_step.cu): one thread
// block per active sample, reorthogonalisation coefficients one basis row per warp, the decisions
// of curvext/lanczos_rules.h shared with the CPU kernel. Plain device code, so that
// tests/cuda_emulation runs it on the CPU as well.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <optional>

#include "block_reduce.cuh"
#include "curvext/hash_random.h"
#include "curvext/lanczos_rules.h"

namespace curvext {
namespace kernels {

using cuda::block_dot;
using cuda::block_sum;
using cuda::kThreads;
using cuda::warp_sum;

// One classical Gram-Schmidt pass of r against rows Q[0..rows); h (shared) receives Q r.
template <typename T>
__device__ void cgs_pass(const T* Q, int rows, int64_t n, T* r, double* h) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int row = warp; row < rows; row += warps) {
    const T* q = Q + (int64_t)row * n;
    double s = 0.0;
    for (int64_t t = lane; t < n; t += 32) s += double(q[t]) * double(r[t]);
    s = warp_sum(s);
    if (lane == 0) h[row] = s;
  }
  __syncthreads();
  for (int64_t t = threadIdx.x; t < n; t += blockDim.x) {
    double acc = double(r[t]);
    for (int row = 0; row < rows; ++row) acc -= h[row] * double(Q[(int64_t)row * n + t]);
    r[t] = T(acc);
  }
  __syncthreads();
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
lanczos_step_kernel(T* basis, const T* W, T* alpha, T* beta, const int64_t* index, const int64_t* rows,
                    int* flags, int64_t batch, int64_t rows_per_sample, int64_t n,
                    int64_t ld, int step, T tol, uint64_t seed) {
  CURVEXT_DYNAMIC_SHARED(double, shared);
  double* scratch = shared;     // 33 doubles for block sums
  double* h = shared + 33;      // j + 1 <= step + 1 reorthogonalisation coefficients
  const int64_t s = index[blockIdx.x];
  // The CPU kernel raises on an index (or row) out of range; checking it on the host here would
  // synchronise, so the device traps instead of touching another sample's memory.
  CUDA_KERNEL_ASSERT(s >= 0 && s < batch);
  const int j = rows == nullptr ? step : (int)rows[blockIdx.x];
  CUDA_KERNEL_ASSERT(j >= 0 && j <= step);
  T* Q = basis + s * rows_per_sample * n;
  const T* q = Q + (int64_t)j * n;
  T* r = Q + (int64_t)(j + 1) * n;
  const T* w = W + (int64_t)blockIdx.x * n;
  T* al = alpha + s * ld;
  T* be = beta + s * ld;

  for (int64_t t = threadIdx.x; t < n; t += blockDim.x) r[t] = w[t];
  const double applied = sqrt(block_dot(r, r, n, scratch));
  if (!isfinite(applied)) {
    if (threadIdx.x == 0) flags[blockIdx.x] = lanczos::kNonFinite;
    return;
  }
  double a = block_dot(q, r, n, scratch);
  const T bprev = j > 0 ? be[j - 1] : T(0);
  const T* qprev = j > 0 ? Q + (int64_t)(j - 1) * n : q;
  for (int64_t t = threadIdx.x; t < n; t += blockDim.x) r[t] = r[t] - T(a) * q[t] - bprev * qprev[t];
  __syncthreads();
  for (int pass = 0; pass < 2; ++pass) {
    cgs_pass(Q, j + 1, n, r, h);
    a += h[j];
    __syncthreads();  // h is rewritten by the next pass
  }
  const double b = sqrt(block_dot(r, r, n, scratch));
  if (!lanczos::is_breakdown<T>(b, applied, tol)) {
    for (int64_t t = threadIdx.x; t < n; t += blockDim.x) r[t] = T(double(r[t]) / b);
    if (threadIdx.x == 0) {
      al[j] = T(a);
      be[j] = T(b);
      flags[blockIdx.x] = lanczos::kOk;
    }
    return;
  }
  const uint64_t key = (uint64_t)(s * 1000003 + j);
  for (int64_t t = threadIdx.x; t < n; t += blockDim.x) r[t] = hash_uniform<T>(seed, key, (uint64_t)t);
  const double drawn = sqrt(block_dot(r, r, n, scratch));
  for (int pass = 0; pass < 2; ++pass) cgs_pass(Q, j + 1, n, r, h);
  const double kept = sqrt(block_dot(r, r, n, scratch));
  const bool usable = lanczos::restart_usable<T>(kept, drawn);
  for (int64_t t = threadIdx.x; t < n; t += blockDim.x) r[t] = usable ? T(double(r[t]) / kept) : T(0);
  if (threadIdx.x == 0) {
    al[j] = T(a);
    be[j] = T(0);
    flags[blockIdx.x] = usable ? lanczos::kBreakdown : lanczos::kExhausted;
  }
}

// The host side of the op on the contiguous-or-not inputs' own device (checked by the caller):
// the kernel on one block of kThreads threads per active sample (at its own row when `rows` is
// given; `step` bounds the rows), with shared memory for the block sums and the step + 1
// Gram-Schmidt coefficients. ``launch(kernel, blocks, threads,
// shared_bytes, args...)``: cuda::StreamLaunch, or the CPU emulation in tests/cuda_emulation.
template <typename Launch>
at::Tensor lanczos_step_with(at::Tensor& basis, const at::Tensor& w_in, at::Tensor& alpha, at::Tensor& beta,
                             const at::Tensor& index, int64_t step, double breakdown_tol, int64_t seed,
                             const std::optional<at::Tensor>& rows_in, Launch&& launch) {
  const at::Tensor w = w_in.contiguous();
  const at::Tensor idx = index.contiguous();
  const at::Tensor rows = rows_in.has_value() ? rows_in->contiguous() : at::Tensor();
  const int64_t b = idx.size(0);
  at::Tensor flags = at::zeros({b}, idx.options().dtype(at::kInt));
  if (b == 0) return flags;
  const size_t shared_bytes = (33 + step + 1) * sizeof(double);
  AT_DISPATCH_FLOATING_TYPES(basis.scalar_type(), "lanczos_step_kernels", [&] {
    launch(&lanczos_step_kernel<scalar_t>, (unsigned)b, (unsigned)kThreads, shared_bytes,
           basis.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), alpha.data_ptr<scalar_t>(),
           beta.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(),
           rows.defined() ? rows.data_ptr<int64_t>() : (const int64_t*)nullptr, flags.data_ptr<int>(), basis.size(0),
           basis.size(1), basis.size(2), alpha.size(1), (int)step, scalar_t(breakdown_tol), (uint64_t)seed);
  });
  return flags;
}

}  // namespace kernels
}  // namespace curvext
