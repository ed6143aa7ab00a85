// Device code of curvext::power_step's CUDA kernel (launched by power_step.cu): one thread block
// per active sample. Plain device code, so that tests/cuda_emulation runs it on the CPU as well.
#pragma once
#include <cmath>
#include <cstdint>

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

}  // namespace kernels
}  // namespace curvext
