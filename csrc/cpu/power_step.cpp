// CPU kernel of curvext::power_step: one task per active sample.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "blas1.h"
#include "curvext/checks.h"

namespace curvext {
namespace {

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
        const scalar_t* x = V + i * n;
        const scalar_t* y = W + i * n;
        scalar_t* o = out + i * n;
        const double t = cpu::dot(x, y, n);
        double r2 = 0.0, y2 = 0.0;
        const double s = double(S[i]);
        for (int64_t k = 0; k < n; ++k) {
          const double e = double(y[k]) - t * double(x[k]);
          const double z = double(y[k]) + s * double(x[k]);
          r2 += e * e;
          y2 += z * z;
          o[k] = scalar_t(z);
        }
        const double r = std::sqrt(r2), ny = std::sqrt(y2);
        if (ny > 0.0) {
          cpu::scal(scalar_t(1.0 / ny), o, n);
        } else {
          for (int64_t k = 0; k < n; ++k) o[k] = x[k];
        }
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
