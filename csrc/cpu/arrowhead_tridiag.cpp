// CPU kernel of curvext::arrowhead_tridiag: one task per problem of the batch, the math of
// curvext/arrowhead.h in float64. Z is accumulated transposed (its columns as rows), so that each
// rotation updates two contiguous rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "curvext/arrowhead.h"
#include "curvext/checks.h"

namespace curvext {
namespace {

// Problem of size p in an L-wide batch row: d, a inputs; writes alpha, beta (L) and Z (L x L).
template <typename T>
void reduce_one(const T* d_in, const T* a_in, int p, int L, T* alpha, T* beta, T* Z, std::vector<double>& work) {
  double* d = work.data();
  double* e = d + L;
  double* a = e + L;
  double* cs = a + L;        // 2L: one row's rotations
  double* flips = cs + 2 * L;
  double* zt = flips + L;    // L x L, row c = column c of Z
  for (int i = 0; i < L; ++i) {
    d[i] = double(d_in[i]);
    e[i] = 0.0;
    a[i] = i < p ? double(a_in[i]) : 0.0;
    flips[i] = 1.0;
  }
  for (int i = 0; i < L * L; ++i) zt[i] = 0.0;
  for (int i = 0; i < L; ++i) zt[i * L + i] = 1.0;
  for (int i = 0; i + 1 < p; ++i) {
    arrowhead::take_row(d, e, a, i, cs);
    // Rotation t mixes columns j = i - t and j + 1 of Z, i.e. rows j, j + 1 of zt, over Z's rows
    // 0..i+1 (the rows below are still unit vectors outside these columns).
    for (int t = 0; t <= i; ++t) {
      const double c = cs[2 * t], s = cs[2 * t + 1];
      if (s == 0.0 && c == 1.0) continue;
      double* zj = zt + (int64_t)(i - t) * L;
      double* zk = zj + L;
#pragma omp simd
      for (int r = 0; r <= i + 1; ++r) {
        const double x = zj[r], y = zk[r];
        zj[r] = c * x - s * y;
        zk[r] = s * x + c * y;
      }
    }
  }
  for (int i = 0; i < L; ++i) {
    alpha[i] = T(d[i]);
    beta[i] = T(0);
  }
  if (p > 0) arrowhead::normalize_signs(e, a, p, beta, flips);
  for (int r = 0; r < L; ++r)
    for (int c = 0; c < L; ++c) Z[(int64_t)r * L + c] = T(flips[c] * zt[(int64_t)c * L + r]);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> arrowhead_tridiag_cpu(const at::Tensor& diag_in,
                                                                     const at::Tensor& border_in,
                                                                     const at::Tensor& sizes_in) {
  checks::arrowhead_tridiag(diag_in, border_in, sizes_in);
  TORCH_CHECK(diag_in.device().is_cpu(), "arrowhead_tridiag: CPU kernel got ", diag_in.device());
  const at::Tensor diag = diag_in.contiguous(), border = border_in.contiguous(), sizes = sizes_in.contiguous();
  const int64_t B = diag.size(0);
  const int L = static_cast<int>(diag.size(1));
  const int64_t* sz = sizes.data_ptr<int64_t>();
  for (int64_t s = 0; s < B; ++s)
    TORCH_CHECK(sz[s] >= 0 && sz[s] <= L, "arrowhead_tridiag: sizes[", s, "] = ", sz[s], " is outside [0, ", L, "]");
  at::Tensor alpha = at::empty({B, L}, diag.options());
  at::Tensor beta = at::empty({B, L}, diag.options());
  at::Tensor Z = at::empty({B, L, L}, diag.options());
  AT_DISPATCH_FLOATING_TYPES(diag.scalar_type(), "arrowhead_tridiag_cpu", [&] {
    const scalar_t* d = diag.data_ptr<scalar_t>();
    const scalar_t* a = border.data_ptr<scalar_t>();
    scalar_t* al = alpha.data_ptr<scalar_t>();
    scalar_t* be = beta.data_ptr<scalar_t>();
    scalar_t* z = Z.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 4096 / ((int64_t)L * L * L + 1));
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      std::vector<double> work(6 * (size_t)L + (size_t)L * L);
      for (int64_t s = begin; s < end; ++s) {
        reduce_one<scalar_t>(d + s * L, a + s * L, (int)sz[s], L, al + s * L, be + s * L,
                             z + s * (int64_t)L * L, work);
      }
    });
  });
  return {alpha, beta, Z};
}

}  // namespace

TORCH_LIBRARY_IMPL(curvext, CPU, m) { m.impl("arrowhead_tridiag", &arrowhead_tridiag_cpu); }

}  // namespace curvext
