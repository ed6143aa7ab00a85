// CUDA launcher of curvext::lanczos_step; the kernel's device code is lanczos_step_kernel.cuh.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include "curvext/checks.h"
#include "lanczos_step_kernel.cuh"

namespace curvext {
namespace {

using kernels::kThreads;
using kernels::lanczos_step_kernel;

at::Tensor lanczos_step_cuda(at::Tensor& basis, const at::Tensor& w_in, at::Tensor& alpha,
                             at::Tensor& beta, const at::Tensor& index, int64_t step,
                             double breakdown_tol, int64_t seed) {
  checks::lanczos_step(basis, w_in, alpha, beta, index, step);
  TORCH_CHECK(basis.is_cuda(), "lanczos_step: CUDA kernel got ", basis.device());
  const c10::cuda::CUDAGuard guard(basis.device());
  const at::Tensor w = w_in.contiguous();
  const at::Tensor idx = index.contiguous();
  const int64_t b = idx.size(0);
  at::Tensor flags = at::zeros({b}, idx.options().dtype(at::kInt));
  if (b == 0) return flags;
  // Block-sum scratch and the step + 1 Gram-Schmidt coefficients live in shared memory. Past the
  // default 48 KB per block (about 6100 steps) the kernel opts in to the device's maximum
  // (227 KB on an H100: about 29000 steps).
  const size_t shared_bytes = (33 + step + 1) * sizeof(double);
  const size_t default_limit = 48 * 1024;
  int optin_limit = 0;
  if (shared_bytes > default_limit) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                          basis.get_device()));
    TORCH_CHECK(shared_bytes <= (size_t)optin_limit, "lanczos_step: step ", step,
                " exceeds the CUDA kernel's limit of ", optin_limit / 8 - 34,
                " steps on this device (shared memory per block)");
  }
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(basis.scalar_type(), "lanczos_step_cuda", [&] {
    if (shared_bytes > default_limit)
      C10_CUDA_CHECK(cudaFuncSetAttribute(lanczos_step_kernel<scalar_t>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          (int)shared_bytes));
    lanczos_step_kernel<scalar_t><<<(unsigned)b, kThreads, shared_bytes, stream>>>(
        basis.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), alpha.data_ptr<scalar_t>(),
        beta.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), flags.data_ptr<int>(), basis.size(0),
        basis.size(1), basis.size(2), alpha.size(1), (int)step, scalar_t(breakdown_tol),
        (uint64_t)seed);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return flags;
}

}  // namespace

TORCH_LIBRARY_IMPL(curvext, CUDA, m) { m.impl("lanczos_step", &lanczos_step_cuda); }

}  // namespace curvext
