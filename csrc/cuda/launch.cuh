// The CUDA side of the launch callables that the shared host code (tridiag_eigh_with,
// lanczos_step_with, power_step_with in <op>_kernel.cuh) is written against:
// launch(kernel, blocks, threads, shared_bytes, args...). tests/cuda_emulation provides the
// CPU side with the same signature.
#pragma once
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

namespace curvext {
namespace cuda {

// <<<blocks, threads, shared_bytes, current stream>>>, opting in to more than the default 48 KB of
// dynamic shared memory when the kernel asks for it (up to the device's limit).
struct StreamLaunch {
  int device;

  template <typename... Params, typename... Args>
  void operator()(void (*kernel)(Params...), unsigned blocks, unsigned threads, size_t shared_bytes,
                  Args... args) const {
    constexpr size_t kDefaultSharedLimit = 48 * 1024;
    if (shared_bytes > kDefaultSharedLimit) {
      int optin = 0;
      C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
      TORCH_CHECK(shared_bytes <= (size_t)optin, "a curvext CUDA kernel needs ", shared_bytes,
                  " bytes of shared memory per block; this device allows ", optin,
                  " (lanczos_step: at most ", optin / 8 - 34, " steps)");
      // The device's whole opt-in, not this launch's size: the attribute is global to the kernel,
      // and a smaller setting from another host thread must not undercut a launch in flight.
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin));
    }
    kernel<<<blocks, threads, shared_bytes, at::cuda::getCurrentCUDAStream()>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace cuda
}  // namespace curvext
