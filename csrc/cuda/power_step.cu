// CUDA launcher of curvext::power_step; the kernel's device code is power_step_kernel.cuh.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include "curvext/checks.h"
#include "power_step_kernel.cuh"

namespace curvext {
namespace {

using kernels::kThreads;
using kernels::power_step_kernel;

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
