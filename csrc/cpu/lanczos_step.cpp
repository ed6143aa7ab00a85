// CPU kernel of curvext::lanczos_step: one task per active sample, each at its own row when
// `rows` is given.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <vector>

#include "blas1.h"
#include "curvext/checks.h"
#include "curvext/hash_random.h"
#include "curvext/lanczos_rules.h"

namespace curvext {
namespace {

// Q: the sample's (M+1, n) basis; w: A q_j; al/be: the sample's alpha/beta rows.
template <typename T>
CURVEXT_INLINE int step_one(T* Q, const T* w, T* al, T* be, int64_t j, int64_t n, T tol,
                            uint64_t seed, int64_t sample, double* h) {
  const T* q = Q + j * n;
  T* r = Q + (j + 1) * n;
  for (int64_t i = 0; i < n; ++i) r[i] = w[i];
  const double applied = cpu::norm2(r, n);
  if (!std::isfinite(applied)) return lanczos::kNonFinite;  // nothing written but the copy of w
  double alpha = cpu::dot(q, r, n);
  cpu::axpy(T(-alpha), q, r, n);
  if (j > 0) cpu::axpy(T(-be[j - 1]), Q + (j - 1) * n, r, n);
  // Full reorthogonalisation: a classical Gram-Schmidt pass, and a second one when the first
  // removed enough of r that rounding may have left it non-orthogonal (lanczos::needs_second_pass).
  const double before = cpu::norm2(r, n);
  cpu::cgs_pass(Q, j + 1, n, r, h);
  alpha += h[j];
  double beta = cpu::norm2(r, n);
  if (lanczos::needs_second_pass(before, beta)) {
    cpu::cgs_pass(Q, j + 1, n, r, h);
    alpha += h[j];
    beta = cpu::norm2(r, n);
  }
  al[j] = T(alpha);
  if (!lanczos::is_breakdown<T>(beta, applied, tol)) {
    be[j] = T(beta);
    cpu::scal(T(1.0 / beta), r, n);
    return lanczos::kOk;
  }
  be[j] = T(0);
  for (int64_t i = 0; i < n; ++i) r[i] = hash_uniform<T>(seed, (uint64_t)(sample * 1000003 + j), (uint64_t)i);
  const double drawn = cpu::norm2(r, n);
  for (int pass = 0; pass < 2; ++pass) cpu::cgs_pass(Q, j + 1, n, r, h);
  const double kept = cpu::norm2(r, n);
  if (lanczos::restart_usable<T>(kept, drawn)) {
    cpu::scal(T(1.0 / kept), r, n);
    return lanczos::kBreakdown;
  }
  for (int64_t i = 0; i < n; ++i) r[i] = T(0);
  return lanczos::kExhausted;
}

CURVEXT_SIMD_CLONES int step_float(float* Q, const float* w, float* al, float* be, int64_t j,
                                    int64_t n, float tol, uint64_t seed, int64_t sample, double* h) {
  return step_one<float>(Q, w, al, be, j, n, tol, seed, sample, h);
}

CURVEXT_SIMD_CLONES int step_double(double* Q, const double* w, double* al, double* be, int64_t j,
                                     int64_t n, double tol, uint64_t seed, int64_t sample, double* h) {
  return step_one<double>(Q, w, al, be, j, n, tol, seed, sample, h);
}

inline int step(float* Q, const float* w, float* al, float* be, int64_t j, int64_t n, float tol,
                uint64_t seed, int64_t sample, double* h) {
  return step_float(Q, w, al, be, j, n, tol, seed, sample, h);
}

inline int step(double* Q, const double* w, double* al, double* be, int64_t j, int64_t n,
                double tol, uint64_t seed, int64_t sample, double* h) {
  return step_double(Q, w, al, be, j, n, tol, seed, sample, h);
}

at::Tensor lanczos_step_cpu(at::Tensor& basis, const at::Tensor& w_in, at::Tensor& alpha,
                            at::Tensor& beta, const at::Tensor& index, int64_t step,
                            double breakdown_tol, int64_t seed, const std::optional<at::Tensor>& rows_in) {
  checks::lanczos_step(basis, w_in, alpha, beta, index, step);
  if (rows_in.has_value()) checks::lanczos_rows(*rows_in, index);
  const at::Tensor w = w_in.contiguous();
  const at::Tensor idx = index.contiguous();
  const at::Tensor rows = rows_in.has_value() ? rows_in->contiguous() : at::Tensor();
  const int64_t b = idx.size(0), B = basis.size(0), R = basis.size(1), n = basis.size(2);
  const int64_t ldab = alpha.size(1);
  at::Tensor flags = at::zeros({b}, idx.options().dtype(at::kInt));
  const int64_t* ix = idx.data_ptr<int64_t>();
  const int64_t* rw = rows.defined() ? rows.data_ptr<int64_t>() : nullptr;
  for (int64_t i = 0; i < b; ++i) {
    TORCH_CHECK(ix[i] >= 0 && ix[i] < B, "lanczos_step: index[", i, "] = ", ix[i],
                " is outside the batch [0, ", B, ")");
    if (rw != nullptr)
      TORCH_CHECK(rw[i] >= 0 && rw[i] <= step, "lanczos_step: rows[", i, "] = ", rw[i], " is outside [0, step = ",
                  step, "]");
  }
  int* fl = flags.data_ptr<int>();
  AT_DISPATCH_FLOATING_TYPES(basis.scalar_type(), "lanczos_step_cpu", [&] {
    scalar_t* Q = basis.data_ptr<scalar_t>();
    const scalar_t* W = w.data_ptr<scalar_t>();
    scalar_t* al = alpha.data_ptr<scalar_t>();
    scalar_t* be = beta.data_ptr<scalar_t>();
    at::parallel_for(0, b, 1, [&](int64_t begin, int64_t end) {
      std::vector<double> h(step + 1);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t s = ix[i];
        fl[i] = curvext::step(Q + s * R * n, W + i * n, al + s * ldab, be + s * ldab, rw ? rw[i] : step, n,
                              scalar_t(breakdown_tol), (uint64_t)seed, s, h.data());
      }
    });
  });
  return flags;
}

}  // namespace

TORCH_LIBRARY_IMPL(curvext, CPU, m) { m.impl("lanczos_step", &lanczos_step_cpu); }

}  // namespace curvext
