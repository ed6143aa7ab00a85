// CUDA launcher of curvext::tridiag_eigh; the kernel and the host side around it are
// tridiag_eigh_kernel.cuh.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "curvext/checks.h"
#include "launch.cuh"
#include "tridiag_eigh_kernel.cuh"

namespace curvext {
namespace {

std::tuple<at::Tensor, at::Tensor> tridiag_eigh_cuda(const at::Tensor& alpha_in,
                                                    const at::Tensor& beta_in, int64_t mode) {
  checks::tridiag_eigh(alpha_in, beta_in, mode);
  TORCH_CHECK(alpha_in.is_cuda(), "tridiag_eigh: CUDA kernel got ", alpha_in.device());
  const c10::cuda::CUDAGuard guard(alpha_in.device());
  return kernels::tridiag_eigh_with(alpha_in.contiguous(), beta_in.contiguous(), mode,
                                    cuda::StreamLaunch{alpha_in.get_device()});
}

}  // namespace

TORCH_LIBRARY_IMPL(curvext, CUDA, m) { m.impl("tridiag_eigh", &tridiag_eigh_cuda); }

}  // namespace curvext
