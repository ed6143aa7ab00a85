// CUDA launcher of curvext::tridiag_eigh; the kernel and the host side around it are
// tridiag_eigh_kernel.cuh.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include "curvext/checks.h"
#include "tridiag_eigh_kernel.cuh"

namespace curvext {
namespace {

std::tuple<at::Tensor, at::Tensor> tridiag_eigh_cuda(const at::Tensor& alpha_in,
                                                    const at::Tensor& beta_in, int64_t mode) {
  checks::tridiag_eigh(alpha_in, beta_in, mode);
  TORCH_CHECK(alpha_in.is_cuda(), "tridiag_eigh: CUDA kernel got ", alpha_in.device());
  const c10::cuda::CUDAGuard guard(alpha_in.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  auto launch = [&](auto kernel, unsigned blocks, unsigned threads, auto... args) {
    kernel<<<blocks, threads, 0, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  return kernels::tridiag_eigh_with(alpha_in.contiguous(), beta_in.contiguous(), mode, launch);
}

}  // namespace

TORCH_LIBRARY_IMPL(curvext, CUDA, m) { m.impl("tridiag_eigh", &tridiag_eigh_cuda); }

}  // namespace curvext
