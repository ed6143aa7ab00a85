// Reduction of a bordered diagonal ("arrowhead") matrix to tridiagonal form by Givens rotations,
// shared by the CPU and CUDA kernels of curvext::arrowhead_tridiag.
//
// One problem: p diagonal entries d[0..p) and a border a[0..p), the leading block of
//   H = [[diag(d), a], [a^T, tip]]
// (the tip's own entry and whatever follows it are not touched). The reduction finds an
// orthogonal Z (p x p) with
//   Z^T diag(d) Z = tridiag(alpha, beta[0..p-1)),   Z^T a = beta[p-1] e_{p-1},   beta >= 0,
// so that blockdiag(Z, 1)^T H blockdiag(Z, 1) is tridiagonal. This is the projected matrix of a
// thick-restarted Lanczos run (d: the kept Ritz values, a: their residual couplings).
//
// Rows are taken in one at a time (Rutishauser's reconstruction of a Jacobi matrix from spectral
// data; Gragg & Harrod 1984 show it is backward stable): row i+1 joins the tridiagonal of rows
// 0..i by one rotation in the plane (i, i+1) that moves the border weight of row i onto row i+1,
// and leaves a bulge at (i+1, i-1) that rotations in the planes (i-1, i), ..., (0, 1) chase off the
// top. (p - 1) p / 2 rotations in all, each O(1) on the matrix and O(p) on Z. The work is in
// float64 whatever the input precision.
//
// A zero border entry needs no rotation: a zero prefix a[0..q) leaves rows 0..q-1 untouched
// (Z = identity there, their beta = 0), which is how a restart keeps locked Ritz pairs exactly.
#pragma once

#include "curvext/macros.h"

namespace curvext {
namespace arrowhead {

// Rotation in the plane (j, j+1): row_j' = c row_j - s row_{j+1}, row_{j+1}' = s row_j + c row_{j+1}
// (and the same on the columns) applied to the 2x2 diagonal block d[j], d[j+1], e[j].
CURVEXT_HD void rotate_block(double* d, double* e, int j, double c, double s) {
  const double dj = d[j], dk = d[j + 1], ej = e[j];
  d[j] = c * c * dj - 2.0 * c * s * ej + s * s * dk;
  d[j + 1] = s * s * dj + 2.0 * c * s * ej + c * c * dk;
  e[j] = c * s * (dj - dk) + (c * c - s * s) * ej;
}

// The rotation (c, s), in rotate_block's convention, that takes the entries y (row j) and x
// (row j+1) of one column to 0 and r = hypot(x, y); returns r. The identity when y = 0.
CURVEXT_HD double givens(double x, double y, double* c, double* s) {
  if (y == 0.0) {
    *c = 1.0;
    *s = 0.0;
    return x;
  }
  const double r = hypot(x, y);
  *c = x / r;
  *s = y / r;
  return r;
}

// Takes row i+1 (0 <= i < p - 1) into the tridiagonal of rows 0..i. d, e (e[j] couples rows j and
// j+1; e[i] must still be 0) and a (the border) are updated in place. Writes the i + 1 rotations
// it applied to `cs` as (c, s) pairs, rotation t in the plane (i - t, i - t + 1), in the order they
// must be applied to Z's columns (see apply_to_row); the ones the chase did not need are identities.
CURVEXT_HD void take_row(double* d, double* e, double* a, int i, double* cs) {
  double c, s;
  a[i + 1] = givens(a[i + 1], a[i], &c, &s);
  a[i] = 0.0;
  rotate_block(d, e, i, c, s);
  cs[0] = c;
  cs[1] = s;
  double bulge = 0.0;  // entry (j, j + 2) for the next j
  if (i > 0) {
    bulge = s * e[i - 1];
    e[i - 1] = c * e[i - 1];
  }
  for (int t = 1; t <= i; ++t) {
    const int j = i - t;
    if (bulge == 0.0) {
      cs[2 * t] = 1.0;
      cs[2 * t + 1] = 0.0;
      continue;
    }
    e[j + 1] = givens(e[j + 1], bulge, &c, &s);
    rotate_block(d, e, j, c, s);
    cs[2 * t] = c;
    cs[2 * t + 1] = s;
    if (j > 0) {
      bulge = s * e[j - 1];
      e[j - 1] = c * e[j - 1];
    } else {
      bulge = 0.0;
    }
  }
}

// Applies take_row(i)'s rotations to one row z of Z (z_j' = c z_j - s z_{j+1},
// z_{j+1}' = s z_j + c z_{j+1}): Z = R_1^T R_2^T ..., row by row independently.
template <typename Z>
CURVEXT_HD void apply_to_row(Z* z, int i, const double* cs) {
  for (int t = 0; t <= i; ++t) {
    const double c = cs[2 * t], s = cs[2 * t + 1];
    if (s == 0.0 && c == 1.0) continue;
    const int j = i - t;
    const double zj = z[j], zk = z[j + 1];
    z[j] = c * zj - s * zk;
    z[j + 1] = s * zj + c * zk;
  }
}

// After rows 0..p-1 are in: makes every off-diagonal and the coupling to the tip non-negative by
// flipping the signs of Z's columns. Writes beta[0..p) (beta[p-1] = the tip coupling) and the
// column signs flips[0..p) (+1 or -1).
template <typename T>
CURVEXT_HD void normalize_signs(const double* e, const double* a, int p, T* beta, double* flips) {
  double next = 1.0;  // the sign of row i + 1 (the tip keeps its sign)
  for (int i = p - 1; i >= 0; --i) {
    const double coupling = (i == p - 1 ? a[i] : e[i]) * next;
    const double sign = coupling < 0.0 ? -1.0 : 1.0;
    beta[i] = T(abs_(coupling));
    flips[i] = sign;
    next = sign;
  }
}

}  // namespace arrowhead
}  // namespace curvext
