// Device code of curvext::tridiag_eigh's CUDA kernel and the host side around it (workspace,
// chunking, output layout), shared by the CUDA launcher (tridiag_eigh.cu) and its CPU emulation
// (tests/cuda_emulation): one thread block per matrix, one thread per eigenvalue for bisection (in
// the input dtype), one thread per cluster for inverse iteration (in float64, as on the CPU). The
// math is curvext/tridiag.h, the same code the CPU kernel runs.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "curvext/hash_random.h"
#include "curvext/tridiag.h"
#include "device_compat.cuh"

namespace curvext {
namespace kernels {

constexpr int kTridiagMaxThreads = 128;

// Per-matrix float64 workspace for the vector stage: a, b, w copies, vectors, LU factors.
struct TridiagWorkspace {
  double* abw;           // (chunk, 4n): a, b, w, start vector
  double* vecs;          // (chunk, n, n), vector-major
  double* work;          // (chunk, threads, 6n)
  unsigned char* piv;    // (chunk, threads, n)
};

template <typename T>
__global__ void __launch_bounds__(kTridiagMaxThreads)
tridiag_kernel(const T* alpha, const T* beta, int n, int mode, T* values, T* b2_ws,
               TridiagWorkspace ws) {
  const int64_t s = blockIdx.x;
  const T* a = alpha + s * n;
  const T* b = beta + s * (n - 1);
  T* w = values + s * n;
  T* b2 = b2_ws + s * n;
  for (int i = threadIdx.x; i + 1 < n; i += blockDim.x) b2[i] = b[i] * b[i];
  __syncthreads();
  const tridiag::Bounds<T> bd = tridiag::bounds(a, b, n);
  const int steps = tridiag::bisection_steps(bd);
  for (int k = threadIdx.x; k < n; k += blockDim.x) tridiag::bisect<T, 1>(a, b2, n, bd, steps, k, w);
  if (mode == 0) return;
  double* a64 = ws.abw + s * 4 * n;
  double* b64 = a64 + n;
  double* w64 = b64 + n;
  double* start = w64 + n;
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    a64[i] = double(a[i]);
    w64[i] = double(w[i]);
    if (i + 1 < n) b64[i] = double(b[i]);
    start[i] = hash_uniform<double>(0x5EEDULL, 0, (uint64_t)i);
  }
  __syncthreads();
  const tridiag::Bounds<double> bd64 = tridiag::bounds(a64, b64, n);
  const double ortol = tridiag::cluster_tolerance(bd64);
  double* vecs = ws.vecs + s * (int64_t)n * n;
  double* work = ws.work + (s * blockDim.x + threadIdx.x) * (int64_t)(6 * n);
  unsigned char* piv = ws.piv + (s * blockDim.x + threadIdx.x) * (int64_t)n;
  for (int k = threadIdx.x; k < n; k += blockDim.x) {
    if (k > 0 && w64[k] - w64[k - 1] < ortol) continue;  // not the first member of its cluster
    const int e = tridiag::cluster_end(w64, n, k, ortol);
    if (e == k + 1) {
      tridiag::inverse_iteration_isolated<double, 1>(a64, b64, n, w64, bd64, &k, 1, start, vecs, n, 1, work);
    } else {
      tridiag::inverse_iteration_cluster(a64, b64, n, w64, bd64, k, e, start, vecs, work, piv);
    }
  }
}

// Eigenvalues (and vectors per mode) of the contiguous (B, n) alpha, (B, n - 1) beta on their own
// device. ``launch(kernel, blocks, threads, shared_bytes, args...)`` runs ``kernel`` on ``blocks``
// blocks of ``threads`` threads: cuda::StreamLaunch for CUDA, the emulation on the CPU.
template <typename Launch>
std::tuple<at::Tensor, at::Tensor> tridiag_eigh_with(const at::Tensor& alpha, const at::Tensor& beta, int64_t mode,
                                                    Launch&& launch) {
  const int64_t B = alpha.size(0);
  const int n = static_cast<int>(alpha.size(1));
  const int threads = std::min(kTridiagMaxThreads, std::max(32, ((n + 31) / 32) * 32));
  at::Tensor values = at::empty({B, n}, alpha.options());
  at::Tensor vectors = mode == 0   ? at::empty({B, 0}, alpha.options())
                       : mode == 1 ? at::empty({B, n}, alpha.options())
                                   : at::empty({B, n, n}, alpha.options());
  if (B == 0) return {values, vectors};
  // Bound the workspace (vectors + per-thread LU factors) to ~256 MiB by chunking the batch.
  const int64_t per_matrix =
      mode == 0 ? (int64_t)n * alpha.element_size()
                : ((int64_t)n * n + (int64_t)threads * 6 * n + 4 * n) * 8 + (int64_t)threads * n + n * 8;
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(B, (int64_t(256) << 20) / per_matrix));
  const auto f64 = alpha.options().dtype(at::kDouble);
  at::Tensor abw = at::empty({mode == 0 ? 0 : chunk, 4 * n}, f64);
  at::Tensor vecs = at::empty({mode == 0 ? 0 : chunk, n, n}, f64);
  at::Tensor work = at::empty({mode == 0 ? 0 : chunk, threads, 6 * n}, f64);
  at::Tensor piv = at::empty({mode == 0 ? 0 : chunk, threads, n}, alpha.options().dtype(at::kByte));
  TridiagWorkspace ws{abw.data_ptr<double>(), vecs.data_ptr<double>(), work.data_ptr<double>(),
                      piv.data_ptr<unsigned char>()};
  AT_DISPATCH_FLOATING_TYPES(alpha.scalar_type(), "tridiag_eigh_kernels", [&] {
    at::Tensor b2 = at::empty({chunk, n}, alpha.options());
    for (int64_t c0 = 0; c0 < B; c0 += chunk) {
      const int64_t cb = std::min(chunk, B - c0);
      launch(&tridiag_kernel<scalar_t>, (unsigned)cb, (unsigned)threads, size_t(0),
             alpha.data_ptr<scalar_t>() + c0 * n, beta.data_ptr<scalar_t>() + c0 * (n - 1), n, (int)mode,
             values.data_ptr<scalar_t>() + c0 * n, b2.data_ptr<scalar_t>(), ws);
      if (mode == 1) {
        vectors.narrow(0, c0, cb).copy_(vecs.narrow(0, 0, cb).select(2, 0));
      } else if (mode == 2) {
        vectors.narrow(0, c0, cb).copy_(vecs.narrow(0, 0, cb).transpose(1, 2));
      }
    }
  });
  return {values, vectors};
}

}  // namespace kernels
}  // namespace curvext
