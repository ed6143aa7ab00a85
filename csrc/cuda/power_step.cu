// CUDA kernel of curvext::power_step: one thread block per active sample.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include "block_reduce.cuh"
#include "curvext/checks.h"

namespace curvext {
namespace {

using cuda::block_dot;
using cuda::block_sum;
using cuda::kThreads;

template <typename T>
__global__ void __launch_bounds__(kThreads)
power_step_kernel(const T* V, const T* W, const T* shift, int64_t n, double tol,
                  T* out, T* theta, T* residual, bool* converged) {
  __shared__ double scratch[33];
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

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> power_step_cuda(const at::Tensor& v_in,
                                                                           const at::Tensor& w_in,
                                                                           const at::Tensor& shift_in,
                                                                           double tol) {
  checks::power_step(v_in, w_in, shift_in);
  TORCH_CHECK(v_in.is_cuda(), "power_step: CUDA kernel got ", v_in.device());
  const c10::cuda::CUDAGuard guard(v_in.device());
  const at::Tensor v = v_in.contiguous(), w = w_in.contiguous(), shift = shift_in.contiguous();
  const int64_t b = v.size(0), n = v.size(1);
  at::Tensor out = at::empty_like(v);
  at::Tensor theta = at::empty({b}, v.options());
  at::Tensor residual = at::empty({b}, v.options());
  at::Tensor converged = at::empty({b}, v.options().dtype(at::kBool));
  if (b == 0) return {out, theta, residual, converged};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "power_step_cuda", [&] {
    power_step_kernel<scalar_t><<<(unsigned)b, kThreads, 0, stream>>>(
        v.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), shift.data_ptr<scalar_t>(), n, tol,
        out.data_ptr<scalar_t>(), theta.data_ptr<scalar_t>(), residual.data_ptr<scalar_t>(),
        converged.data_ptr<bool>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, theta, residual, converged};
}

}  // namespace

TORCH_LIBRARY_IMPL(curvext, CUDA, m) { m.impl("power_step", &power_step_cuda); }

}  // namespace curvext
