// CUDA launcher of curvext::arrowhead_tridiag; the kernel and the host side around it are
// arrowhead_tridiag_kernel.cuh.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "arrowhead_tridiag_kernel.cuh"
#include "curvext/checks.h"
#include "launch.cuh"

namespace curvext {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> arrowhead_tridiag_cuda(const at::Tensor& diag,
                                                                      const at::Tensor& border,
                                                                      const at::Tensor& sizes) {
  checks::arrowhead_tridiag(diag, border, sizes);
  TORCH_CHECK(diag.is_cuda(), "arrowhead_tridiag: CUDA kernel got ", diag.device());
  const c10::cuda::CUDAGuard guard(diag.device());
  return kernels::arrowhead_tridiag_with(diag, border, sizes, cuda::StreamLaunch{diag.get_device()});
}

}  // namespace

TORCH_LIBRARY_IMPL(curvext, CUDA, m) { m.impl("arrowhead_tridiag", &arrowhead_tridiag_cuda); }

}  // namespace curvext
