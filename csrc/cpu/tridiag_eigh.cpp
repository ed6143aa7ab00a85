// CPU kernel of curvext::tridiag_eigh: one task per matrix (at::parallel_for over the batch).
// Bisection runs kLanes eigenvalues of a matrix in lockstep so the Sturm recurrence vectorises;
// the math itself is curvext/tridiag.h, shared with the CUDA kernel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "curvext/checks.h"
#include "curvext/tridiag.h"

namespace curvext {
namespace {

constexpr int kLanes = 16;

template <typename T>
void solve_one(const T* a, const T* b, int n, int mode, T* w, T* vec_out, std::vector<T>& b2,
               std::vector<T>& vecs, std::vector<T>& work, std::vector<unsigned char>& piv) {
  for (int i = 0; i + 1 < n; ++i) b2[i] = b[i] * b[i];
  const tridiag::Bounds<T> bd = tridiag::bounds(a, b, n);
  const int steps = tridiag::bisection_steps(bd);
  for (int k0 = 0; k0 < n; k0 += kLanes) tridiag::bisect<T, kLanes>(a, b2.data(), n, bd, steps, k0, w);
  if (mode == 0) return;
  const T ortol = tridiag::cluster_tolerance(bd);
  for (int k = 0; k < n;) {
    const int e = tridiag::cluster_end(w, n, k, ortol);
    tridiag::inverse_iteration_cluster(a, b, n, w, bd, k, e, vecs.data(), work.data(), piv.data());
    k = e;
  }
  if (mode == 1) {
    for (int k = 0; k < n; ++k) vec_out[k] = vecs[(size_t)k * n];
  } else {  // columns: vec_out[i * n + k] = component i of eigenvector k
    for (int k = 0; k < n; ++k)
      for (int i = 0; i < n; ++i) vec_out[(size_t)i * n + k] = vecs[(size_t)k * n + i];
  }
}

std::tuple<at::Tensor, at::Tensor> tridiag_eigh_cpu(const at::Tensor& alpha_in,
                                                   const at::Tensor& beta_in, int64_t mode) {
  checks::tridiag_eigh(alpha_in, beta_in, mode);
  TORCH_CHECK(alpha_in.device().is_cpu(), "tridiag_eigh: CPU kernel got ", alpha_in.device());
  if (alpha_in.scalar_type() == at::kFloat && mode != 0) {
    // Vectors of float32 matrices are computed in float64: Gram-Schmidt inside large clusters
    // (e.g. the many near-zero Ritz values of a curvature operator) loses ~1/gap digits.
    auto [values, vectors] = tridiag_eigh_cpu(alpha_in.to(at::kDouble), beta_in.to(at::kDouble), mode);
    return {values.to(at::kFloat), vectors.to(at::kFloat)};
  }
  const at::Tensor alpha = alpha_in.contiguous();
  const at::Tensor beta = beta_in.contiguous();
  const int64_t B = alpha.size(0);
  const int n = static_cast<int>(alpha.size(1));
  at::Tensor values = at::empty({B, n}, alpha.options());
  at::Tensor vectors = mode == 0   ? at::empty({B, 0}, alpha.options())
                       : mode == 1 ? at::empty({B, n}, alpha.options())
                                   : at::empty({B, n, n}, alpha.options());
  const int64_t vec_stride = mode == 0 ? 0 : mode == 1 ? n : (int64_t)n * n;
  AT_DISPATCH_FLOATING_TYPES(alpha.scalar_type(), "tridiag_eigh_cpu", [&] {
    const scalar_t* a = alpha.data_ptr<scalar_t>();
    const scalar_t* b = beta.data_ptr<scalar_t>();
    scalar_t* w = values.data_ptr<scalar_t>();
    scalar_t* z = mode == 0 ? nullptr : vectors.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 4096 / ((int64_t)n * n + 1));
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> b2(std::max(n - 1, 1));
      std::vector<scalar_t> vecs(mode == 0 ? 0 : (size_t)n * n);
      std::vector<scalar_t> work(mode == 0 ? 0 : 4 * (size_t)n);
      std::vector<unsigned char> piv(mode == 0 ? 0 : (size_t)n);
      for (int64_t s = begin; s < end; ++s) {
        solve_one<scalar_t>(a + s * n, b + s * (n - 1), n, (int)mode, w + s * n,
                            z == nullptr ? nullptr : z + s * vec_stride, b2, vecs, work, piv);
      }
    });
  });
  return {values, vectors};
}

}  // namespace

TORCH_LIBRARY_IMPL(curvext, CPU, m) { m.impl("tridiag_eigh", &tridiag_eigh_cpu); }

}  // namespace curvext
