// Ritz-vector assembly, the same on every device: a batched GEMM (MKL/OpenBLAS on CPU,
// cuBLAS on CUDA), which is what the op is; a hand-written GEMM would only be slower.
#pragma once
#include <ATen/ATen.h>

#include "curvext/checks.h"

namespace curvext {

inline at::Tensor ritz_vectors_impl(const at::Tensor& basis, const at::Tensor& coeffs) {
  checks::ritz_vectors(basis, coeffs);
  const at::Tensor used = basis.narrow(1, 0, coeffs.size(1));  // (B, m, n)
  return at::bmm(coeffs.transpose(1, 2), used);                // (B, k, n)
}

}  // namespace curvext
