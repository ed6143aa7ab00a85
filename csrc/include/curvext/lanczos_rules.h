// Scalar decisions of a Lanczos step, shared by the CPU and CUDA kernels so both declare
// breakdowns and exhausted spaces identically.
#pragma once
#include "curvext/macros.h"

namespace curvext {
namespace lanczos {

enum Flag : int { kOk = 0, kBreakdown = 1, kExhausted = 2, kNonFinite = 3 };

// beta_j is numerically zero (q_j's Krylov space is invariant) when the reorthogonalised
// residual keeps at most `tol` of the norm of A q_j. An exactly zero A q_j is a breakdown too:
// q_j is then in the null space, and what rounding leaves of the residual is no direction.
template <typename T>
CURVEXT_HD bool is_breakdown(double beta, double applied_norm, T tol) {
  return !(beta > double(tol) * applied_norm) || !(beta > 0.0) || !(applied_norm > 0.0);
}

// "Twice is enough" with the Daniel-Gragg-Kaufman-Stewart test (as ARPACK): after one classical
// Gram-Schmidt pass took r from norm `before` to `after`, rounding left components along the
// basis of at most ~eps * before, i.e. ~eps * before / after relative to r. Unless the pass
// cancelled more than 1 - 1/sqrt(2) of the norm, that is already orthogonal to working accuracy;
// otherwise a second pass is needed (and always suffices).
CURVEXT_HD bool needs_second_pass(double before, double after) {
  return !(after > 0.7071067811865476 * before);
}

// A restart direction is usable when reorthogonalisation keeps more than sqrt(eps) of it;
// otherwise the basis already spans the whole space.
template <typename T>
CURVEXT_HD bool restart_usable(double kept_norm, double drawn_norm) {
  return kept_norm > sqrt(double(Limits<T>::eps())) * drawn_norm;
}

}  // namespace lanczos
}  // namespace curvext
