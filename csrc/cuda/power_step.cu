// CUDA launcher of curvext::power_step; the kernel and the host side around it are
// power_step_kernel.cuh.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "curvext/checks.h"
#include "launch.cuh"
#include "power_step_kernel.cuh"

namespace curvext {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> power_step_cuda(const at::Tensor& v_in,
                                                                           const at::Tensor& w_in,
                                                                           const at::Tensor& shift_in,
                                                                           double tol) {
  checks::power_step(v_in, w_in, shift_in);
  TORCH_CHECK(v_in.is_cuda(), "power_step: CUDA kernel got ", v_in.device());
  const c10::cuda::CUDAGuard guard(v_in.device());
  return kernels::power_step_with(v_in, w_in, shift_in, tol, cuda::StreamLaunch{v_in.get_device()});
}

}  // namespace

TORCH_LIBRARY_IMPL(curvext, CUDA, m) { m.impl("power_step", &power_step_cuda); }

}  // namespace curvext
