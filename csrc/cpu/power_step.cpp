// CPU kernel of curvext::power_step: one task per active sample.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "blas1.h"
#include "curvext/checks.h"

namespace curvext {
namespace {

// One sample: o = (y + s x) / ||y + s x||; returns theta = x.y and the residual ||y - theta x||.
template <typename T>
CURVEXT_INLINE void power_one(const T* x, const T* y, T s, int64_t n, T* o, double* theta, double* residual) {
  const double t = cpu::dot(x, y, n);
  double r2 = 0.0, z2 = 0.0;
#pragma omp simd reduction(+ : r2, z2)
  for (int64_t k = 0; k < n; ++k) {
    const double e = double(y[k]) - t * double(x[k]);
    const double z = double(y[k]) + double(s) * double(x[k]);
    r2 += e * e;
    z2 += z * z;
    o[k] = T(z);
  }
  const double nz = std::sqrt(z2);
  if (nz > 0.0) {
    cpu::scal(T(1.0 / nz), o, n);
  } else {
    for (int64_t k = 0; k < n; ++k) o[k] = x[k];
  }
  *theta = t;
  *residual = std::sqrt(r2);
}

CURVEXT_SIMD_CLONES void power_one_f(const float* x, const float* y, float s, int64_t n, float* o,
                                     double* theta, double* residual) {
  power_one(x, y, s, n, o, theta, residual);
}

CURVEXT_SIMD_CLONES void power_one_d(const double* x, const double* y, double s, int64_t n, double* o,
                                     double* theta, double* residual) {
  power_one(x, y, s, n, o, theta, residual);
}

inline void power_one_any(const float* x, const float* y, float s, int64_t n, float* o, double* t, double* r) {
  power_one_f(x, y, s, n, o, t, r);
}

inline void power_one_any(const double* x, const double* y, double s, int64_t n, double* o, double* t, double* r) {
  power_one_d(x, y, s, n, o, t, r);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> power_step_cpu(const at::Tensor& v_in,
                                                                          const at::Tensor& w_in,
                                                                          const at::Tensor& shift_in,
                                                                          double tol) {
  checks::power_step(v_in, w_in, shift_in);
  TORCH_CHECK(v_in.device().is_cpu(), "power_step: CPU kernel got ", v_in.device());
  const at::Tensor v = v_in.contiguous(), w = w_in.contiguous(), shift = shift_in.contiguous();
  const int64_t b = v.size(0), n = v.size(1);
  at::Tensor v_next = at::empty_like(v);
  at::Tensor theta = at::empty({b}, v.options());
  at::Tensor residual = at::empty({b}, v.options());
  at::Tensor converged = at::empty({b}, v.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "power_step_cpu", [&] {
    const scalar_t* V = v.data_ptr<scalar_t>();
    const scalar_t* W = w.data_ptr<scalar_t>();
    const scalar_t* S = shift.data_ptr<scalar_t>();
    scalar_t* out = v_next.data_ptr<scalar_t>();
    scalar_t* th = theta.data_ptr<scalar_t>();
    scalar_t* res = residual.data_ptr<scalar_t>();
    bool* conv = converged.data_ptr<bool>();
    at::parallel_for(0, b, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        double t = 0.0, r = 0.0;
        power_one_any(V + i * n, W + i * n, S[i], n, out + i * n, &t, &r);
        th[i] = scalar_t(t);
        res[i] = scalar_t(r);
        conv[i] = r <= tol * std::abs(t);
      }
    });
  });
  return {v_next, theta, residual, converged};
}

}  // namespace

TORCH_LIBRARY_IMPL(curvext, CPU, m) { m.impl("power_step", &power_step_cpu); }

}  // namespace curvext
