// Device code of curvext::power_step's CUDA kernel (launched by power_step.cu): one thread block
// per active sample. Plain device code, so that tests/cuda_emulation runs it on the CPU as well.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <tuple>

#include "block_reduce.cuh"

namespace curvext {
namespace kernels {

using cuda::block_dot;
using cuda::block_sum;
using cuda::kThreads;

template <typename T>
__global__ void __launch_bounds__(kThreads)
power_step_kernel(const T* V, const T* W, const T* shift, int64_t n, double tol,
                  T* out, T* theta, T* residual, bool* converged) {
  CURVEXT_SHARED_ARRAY(double, scratch, 33);
  const int64_t i = blockIdx.x;
  const T* x = V + i * n;
  const T* y = W + i * n;
  T* o = out + i * n;
  const double t = block_dot(x, y, n, scratch);
  const double s = double(shift[i]);
  double r2 = 0.0, z2 = 0.0;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    const double e = double(y[k]) - t * double(x[k]);
    const double z = double(y[k]) + s * double(x[k]);
    r2 += e * e;
    z2 += z * z;
    o[k] = T(z);
  }
  r2 = block_sum(r2, scratch);
  z2 = block_sum(z2, scratch);
  const double r = sqrt(r2), nz = sqrt(z2);
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) o[k] = nz > 0.0 ? T(double(o[k]) / nz) : x[k];
  if (threadIdx.x == 0) {
    theta[i] = T(t);
    residual[i] = T(r);
    converged[i] = r <= tol * fabs(t);
  }
}

// The host side of the op (inputs checked by the caller): one block of kThreads threads per
// sample. ``launch`` as in lanczos_step_with.
template <typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> power_step_with(const at::Tensor& v_in,
                                                                           const at::Tensor& w_in,
                                                                           const at::Tensor& shift_in, double tol,
                                                                           Launch&& launch) {
  const at::Tensor v = v_in.contiguous(), w = w_in.contiguous(), shift = shift_in.contiguous();
  const int64_t b = v.size(0), n = v.size(1);
  at::Tensor out = at::empty_like(v);
  at::Tensor theta = at::empty({b}, v.options());
  at::Tensor residual = at::empty({b}, v.options());
  at::Tensor converged = at::empty({b}, v.options().dtype(at::kBool));
  if (b == 0) return {out, theta, residual, converged};
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "power_step_kernels", [&] {
    launch(&power_step_kernel<scalar_t>, (unsigned)b, (unsigned)kThreads, size_t(0), v.data_ptr<scalar_t>(),
           w.data_ptr<scalar_t>(), shift.data_ptr<scalar_t>(), n, tol, out.data_ptr<scalar_t>(),
           theta.data_ptr<scalar_t>(), residual.data_ptr<scalar_t>(), converged.data_ptr<bool>());
  });
  return {out, theta, residual, converged};
}

}  // namespace kernels
}  // namespace curvext
