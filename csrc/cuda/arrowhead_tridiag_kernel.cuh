// Device code of curvext::arrowhead_tridiag's CUDA kernel and the host side around it, shared by
// the CUDA launcher (arrowhead_tridiag.cu) and its CPU emulation (tests/cuda_emulation): one
// thread block per problem. Thread 0 takes the rows in (the rotations of curvext/arrowhead.h, a
// sequential chain), then every thread applies them to its own rows of Z; the math is the one the
// CPU kernel runs, in float64.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "curvext/arrowhead.h"
#include "device_compat.cuh"

namespace curvext {
namespace kernels {

constexpr int kArrowheadMaxThreads = 128;

// work: (chunk, 6L) float64 (d, e, a, the current row's rotations, column signs);
// z: (chunk, L, L) float64, Z row-major.
template <typename T>
__global__ void __launch_bounds__(kArrowheadMaxThreads)
arrowhead_kernel(const T* diag, const T* border, const int64_t* sizes, int L, T* alpha, T* beta,
                 double* work, double* zs) {
  const int64_t s = blockIdx.x;
  const int p = (int)sizes[s];
  CUDA_KERNEL_ASSERT(p >= 0 && p <= L);
  double* d = work + s * 6 * (int64_t)L;
  double* e = d + L;
  double* a = e + L;
  double* cs = a + L;
  double* flips = cs + 2 * L;
  double* z = zs + s * (int64_t)L * L;
  for (int i = threadIdx.x; i < L; i += blockDim.x) {
    d[i] = double(diag[s * L + i]);
    e[i] = 0.0;
    a[i] = i < p ? double(border[s * L + i]) : 0.0;
    flips[i] = 1.0;
    for (int c = 0; c < L; ++c) z[(int64_t)i * L + c] = c == i ? 1.0 : 0.0;
  }
  __syncthreads();
  for (int i = 0; i + 1 < p; ++i) {
    if (threadIdx.x == 0) arrowhead::take_row(d, e, a, i, cs);
    __syncthreads();
    for (int r = threadIdx.x; r <= i + 1; r += blockDim.x) arrowhead::apply_to_row(z + (int64_t)r * L, i, cs);
    __syncthreads();  // cs is rewritten by the next row
  }
  if (threadIdx.x == 0) {
    for (int i = 0; i < L; ++i) beta[s * L + i] = T(0);
    if (p > 0) arrowhead::normalize_signs(e, a, p, beta + s * L, flips);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < L; i += blockDim.x) {
    alpha[s * L + i] = T(d[i]);
    for (int c = 0; c < L; ++c) z[(int64_t)i * L + c] *= flips[c];
  }
}

// The reduction of the (B, L) diag, border and (B,) sizes on their own device (checked by the
// caller). ``launch(kernel, blocks, threads, shared_bytes, args...)``: cuda::StreamLaunch, or the
// CPU emulation in tests/cuda_emulation. The float64 workspace is bounded to ~256 MiB by chunking
// the batch; Z is converted to the input dtype chunk by chunk.
template <typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> arrowhead_tridiag_with(const at::Tensor& diag_in,
                                                                     const at::Tensor& border_in,
                                                                     const at::Tensor& sizes_in, Launch&& launch) {
  const at::Tensor diag = diag_in.contiguous(), border = border_in.contiguous(), sizes = sizes_in.contiguous();
  const int64_t B = diag.size(0);
  const int L = static_cast<int>(diag.size(1));
  at::Tensor alpha = at::empty({B, L}, diag.options());
  at::Tensor beta = at::empty({B, L}, diag.options());
  at::Tensor Z = at::empty({B, L, L}, diag.options());
  if (B == 0 || L == 0) return {alpha, beta, Z};
  const int threads = std::min(kArrowheadMaxThreads, std::max(32, ((L + 31) / 32) * 32));
  const int64_t per_problem = ((int64_t)L * L + 6 * (int64_t)L) * 8;
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(B, (int64_t(256) << 20) / per_problem));
  const auto f64 = diag.options().dtype(at::kDouble);
  at::Tensor work = at::empty({chunk, 6 * (int64_t)L}, f64);
  const bool direct = diag.scalar_type() == at::kDouble;  // Z is the float64 workspace itself
  at::Tensor zs = direct ? at::Tensor() : at::empty({chunk, L, L}, f64);
  AT_DISPATCH_FLOATING_TYPES(diag.scalar_type(), "arrowhead_tridiag_kernels", [&] {
    for (int64_t c0 = 0; c0 < B; c0 += chunk) {
      const int64_t cb = std::min(chunk, B - c0);
      double* z = direct ? Z.data_ptr<double>() + c0 * (int64_t)L * L : zs.data_ptr<double>();
      launch(&arrowhead_kernel<scalar_t>, (unsigned)cb, (unsigned)threads, size_t(0),
             diag.data_ptr<scalar_t>() + c0 * L, border.data_ptr<scalar_t>() + c0 * L,
             sizes.data_ptr<int64_t>() + c0, L, alpha.data_ptr<scalar_t>() + c0 * L,
             beta.data_ptr<scalar_t>() + c0 * L, work.data_ptr<double>(), z);
      if (!direct) Z.narrow(0, c0, cb).copy_(zs.narrow(0, 0, cb));
    }
  });
  return {alpha, beta, Z};
}

}  // namespace kernels
}  // namespace curvext
