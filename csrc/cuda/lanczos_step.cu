// CUDA launcher of curvext::lanczos_step; the kernel and the host side around it are
// lanczos_step_kernel.cuh.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>

#include "curvext/checks.h"
#include "lanczos_step_kernel.cuh"
#include "launch.cuh"

namespace curvext {
namespace {

at::Tensor lanczos_step_cuda(at::Tensor& basis, const at::Tensor& w_in, at::Tensor& alpha,
                             at::Tensor& beta, const at::Tensor& index, int64_t step,
                             double breakdown_tol, int64_t seed, const std::optional<at::Tensor>& rows) {
  checks::lanczos_step(basis, w_in, alpha, beta, index, step);
  if (rows.has_value()) checks::lanczos_rows(*rows, index);
  TORCH_CHECK(basis.is_cuda(), "lanczos_step: CUDA kernel got ", basis.device());
  const c10::cuda::CUDAGuard guard(basis.device());
  return kernels::lanczos_step_with(basis, w_in, alpha, beta, index, step, breakdown_tol, seed, rows,
                                    cuda::StreamLaunch{basis.get_device()});
}

}  // namespace

TORCH_LIBRARY_IMPL(curvext, CUDA, m) { m.impl("lanczos_step", &lanczos_step_cuda); }

}  // namespace curvext
