// CUDA kernel of curvext::tridiag_eigh: one thread block per matrix, one thread per eigenvalue
// for bisection, one thread per cluster for inverse iteration. The math is curvext/tridiag.h,
// the same code the CPU kernel runs.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <algorithm>

#include "curvext/checks.h"
#include "curvext/tridiag.h"

namespace curvext {
namespace {

constexpr int kMaxThreads = 128;

template <typename T>
__global__ void tridiag_kernel(const T* alpha, const T* beta, int n, int mode, T* values, T* b2_ws,
                               T* vecs_ws, T* work_ws, unsigned char* piv_ws) {
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
  __syncthreads();
  if (mode == 0) return;
  const T ortol = tridiag::cluster_tolerance(bd);
  T* vecs = vecs_ws + s * (int64_t)n * n;
  T* work = work_ws + (s * blockDim.x + threadIdx.x) * (int64_t)(4 * n);
  unsigned char* piv = piv_ws + (s * blockDim.x + threadIdx.x) * (int64_t)n;
  for (int k = threadIdx.x; k < n; k += blockDim.x) {
    if (k > 0 && w[k] - w[k - 1] < ortol) continue;  // not the first member of its cluster
    const int e = tridiag::cluster_end(w, n, k, ortol);
    tridiag::inverse_iteration_cluster(a, b, n, w, bd, k, e, vecs, work, piv);
  }
}

std::tuple<at::Tensor, at::Tensor> tridiag_eigh_cuda(const at::Tensor& alpha_in,
                                                    const at::Tensor& beta_in, int64_t mode) {
  checks::tridiag_eigh(alpha_in, beta_in, mode);
  TORCH_CHECK(alpha_in.is_cuda(), "tridiag_eigh: CUDA kernel got ", alpha_in.device());
  if (alpha_in.scalar_type() == at::kFloat && mode != 0) {
    // Vectors of float32 matrices are computed in float64: Gram-Schmidt inside large clusters
    // (e.g. the many near-zero Ritz values of a curvature operator) loses ~1/gap digits.
    auto [values, vectors] = tridiag_eigh_cuda(alpha_in.to(at::kDouble), beta_in.to(at::kDouble), mode);
    return {values.to(at::kFloat), vectors.to(at::kFloat)};
  }
  const c10::cuda::CUDAGuard guard(alpha_in.device());
  const at::Tensor alpha = alpha_in.contiguous();
  const at::Tensor beta = beta_in.contiguous();
  const int64_t B = alpha.size(0);
  const int n = static_cast<int>(alpha.size(1));
  const int threads = std::min(kMaxThreads, std::max(32, ((n + 31) / 32) * 32));
  at::Tensor values = at::empty({B, n}, alpha.options());
  at::Tensor vectors = mode == 0   ? at::empty({B, 0}, alpha.options())
                       : mode == 1 ? at::empty({B, n}, alpha.options())
                                   : at::empty({B, n, n}, alpha.options());
  if (B == 0) return {values, vectors};
  // Bound the workspace (vectors + per-thread LU factors) to ~256 MiB by chunking the batch.
  const int64_t per_matrix = ((int64_t)n * n + (int64_t)threads * 4 * n + n) * alpha.element_size() +
                             (int64_t)threads * n;
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(B, (int64_t(256) << 20) / per_matrix));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(alpha.scalar_type(), "tridiag_eigh_cuda", [&] {
    at::Tensor b2 = at::empty({chunk, n}, alpha.options());
    at::Tensor vecs = mode == 0 ? at::empty({0}, alpha.options()) : at::empty({chunk, n, n}, alpha.options());
    at::Tensor work = mode == 0 ? at::empty({0}, alpha.options())
                                : at::empty({chunk, threads, 4 * n}, alpha.options());
    at::Tensor piv = mode == 0 ? at::empty({0}, alpha.options().dtype(at::kByte))
                               : at::empty({chunk, threads, n}, alpha.options().dtype(at::kByte));
    for (int64_t c0 = 0; c0 < B; c0 += chunk) {
      const int64_t cb = std::min(chunk, B - c0);
      tridiag_kernel<scalar_t><<<(unsigned)cb, threads, 0, stream>>>(
          alpha.data_ptr<scalar_t>() + c0 * n, beta.data_ptr<scalar_t>() + c0 * (n - 1), n, (int)mode,
          values.data_ptr<scalar_t>() + c0 * n, b2.data_ptr<scalar_t>(),
          mode == 0 ? nullptr : vecs.data_ptr<scalar_t>(), mode == 0 ? nullptr : work.data_ptr<scalar_t>(),
          mode == 0 ? nullptr : piv.data_ptr<unsigned char>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (mode == 1) {
        vectors.narrow(0, c0, cb).copy_(vecs.narrow(0, 0, cb).select(2, 0));
      } else if (mode == 2) {
        vectors.narrow(0, c0, cb).copy_(vecs.narrow(0, 0, cb).transpose(1, 2));
      }
    }
  });
  return {values, vectors};
}

}  // namespace

TORCH_LIBRARY_IMPL(curvext, CUDA, m) { m.impl("tridiag_eigh", &tridiag_eigh_cuda); }

}  // namespace curvext
