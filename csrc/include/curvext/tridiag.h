// Symmetric tridiagonal eigensolver math, shared by the CPU and CUDA kernels.
//
// Matrix: diagonal a[0..n), off-diagonal b[0..n-1) (b2 = b*b). Eigenvalues are found by
// bisection on Sturm counts (backward stable: each is exact for a matrix within
// O(n * eps * ||T||) of T); eigenvectors by inverse iteration with a partially pivoted LU of
// T - lambda I, Gram-Schmidt inside clusters of close eigenvalues (as LAPACK's stein does).
// Zero off-diagonals (splits) need no special path: Sturm counts add over the blocks, and
// equal eigenvalues of different blocks form a cluster whose vectors are orthogonalised.
//
// Every function here works on one matrix and is plain code that g++ and nvcc both compile:
// the CPU kernel calls it from a parallel loop over the batch, the CUDA kernel from one thread
// block per matrix.
#pragma once

#include "curvext/hash_random.h"
#include "curvext/macros.h"

namespace curvext {
namespace tridiag {

// Numbers that bound the spectrum and the pivots of one matrix.
template <typename T>
struct Bounds {
  T lower;   // Gershgorin lower bound, widened
  T upper;   // Gershgorin upper bound, widened
  T norm;    // max row sum of |T| (infinity norm = one norm)
  T pivmin;  // smallest allowed |pivot| in Sturm counts
};

template <typename T>
CURVEXT_HD Bounds<T> bounds(const T* a, const T* b, int n) {
  T lo = a[0], hi = a[0], norm = T(0), bmax2 = T(0);
  for (int i = 0; i < n; ++i) {
    T left = i > 0 ? abs_(b[i - 1]) : T(0);
    T right = i + 1 < n ? abs_(b[i]) : T(0);
    T radius = left + right;
    lo = min_(lo, a[i] - radius);
    hi = max_(hi, a[i] + radius);
    norm = max_(norm, abs_(a[i]) + radius);
    bmax2 = max_(bmax2, right * right);
  }
  Bounds<T> out;
  out.norm = norm;
  out.pivmin = Limits<T>::safe_min() * max_(T(1), bmax2);
  T fudge = T(2.1) * (norm * Limits<T>::eps() * T(n) + T(2) * out.pivmin);
  out.lower = lo - fudge;
  out.upper = hi + fudge;
  return out;
}

// Number of bisection halvings that take [lower, upper] down to ~2 eps ||T||.
template <typename T>
CURVEXT_HD int bisection_steps(const Bounds<T>& bd) {
  T width = bd.upper - bd.lower;
  T target = T(2) * Limits<T>::eps() * max_(bd.norm, Limits<T>::safe_min()) + bd.pivmin;
  int steps = 0;
  while (width > target && steps < 200) {
    width *= T(0.5);
    ++steps;
  }
  return steps + 1;
}

// Sturm counts for L shifts at once: cnt[l] = number of eigenvalues < x[l].
// The loop over l has no dependences, so the CPU build vectorises it; CUDA uses L = 1.
template <typename T, int L>
CURVEXT_HD void sturm_counts(const T* a, const T* b2, int n, const T* x, T pivmin, int* cnt) {
  T q[L];
  int c[L];
  for (int l = 0; l < L; ++l) {
    T v = a[0] - x[l];
    v = abs_(v) < pivmin ? -pivmin : v;
    q[l] = v;
    c[l] = v < T(0) ? 1 : 0;
  }
  for (int i = 1; i < n; ++i) {
    const T ai = a[i], bi2 = b2[i - 1];
    for (int l = 0; l < L; ++l) {
      T v = (ai - x[l]) - bi2 / q[l];
      v = abs_(v) < pivmin ? -pivmin : v;
      q[l] = v;
      c[l] += v < T(0) ? 1 : 0;
    }
  }
  for (int l = 0; l < L; ++l) cnt[l] = c[l];
}

// Eigenvalues k0 .. k0+L-1 (ascending index; indices >= n are ignored) by bisection in lockstep.
template <typename T, int L>
CURVEXT_HD void bisect(const T* a, const T* b2, int n, const Bounds<T>& bd, int steps, int k0,
                       T* out) {
  T lo[L], hi[L], mid[L];
  int cnt[L];
  for (int l = 0; l < L; ++l) {
    lo[l] = bd.lower;
    hi[l] = bd.upper;
  }
  for (int s = 0; s < steps; ++s) {
    for (int l = 0; l < L; ++l) mid[l] = T(0.5) * (lo[l] + hi[l]);
    sturm_counts<T, L>(a, b2, n, mid, bd.pivmin, cnt);
    for (int l = 0; l < L; ++l) {
      bool above = cnt[l] > k0 + l;  // eigenvalue k0+l lies below mid
      hi[l] = above ? mid[l] : hi[l];
      lo[l] = above ? lo[l] : mid[l];
    }
  }
  for (int l = 0; l < L && k0 + l < n; ++l) out[k0 + l] = T(0.5) * (lo[l] + hi[l]);
}

// LU factorisation with partial pivoting of T - lambda I (LAPACK gttrf layout):
// d = U diagonal, du = first superdiagonal, du2 = second superdiagonal, dl = multipliers,
// piv[i] = 1 where rows i and i+1 were swapped. Pivots smaller than `tiny` are replaced by
// +-tiny, the usual perturbation that keeps inverse iteration finite at an exact eigenvalue.
template <typename T>
CURVEXT_HD void shifted_lu(const T* a, const T* b, int n, T lambda, T tiny, T* d, T* du, T* du2,
                           T* dl, unsigned char* piv) {
  for (int i = 0; i < n; ++i) d[i] = a[i] - lambda;
  for (int i = 0; i + 1 < n; ++i) {
    du[i] = b[i];
    dl[i] = b[i];
    du2[i] = T(0);
  }
  for (int i = 0; i + 1 < n; ++i) {
    if (abs_(d[i]) >= abs_(dl[i])) {
      if (abs_(d[i]) < tiny) d[i] = d[i] < T(0) ? -tiny : tiny;
      T fact = dl[i] / d[i];
      dl[i] = fact;
      d[i + 1] -= fact * du[i];
      piv[i] = 0;
    } else {
      T fact = d[i] / dl[i];
      d[i] = dl[i];
      dl[i] = fact;
      T temp = du[i];
      du[i] = d[i + 1];
      d[i + 1] = temp - fact * d[i + 1];
      if (i + 2 < n) {
        du2[i] = du[i + 1];
        du[i + 1] = -fact * du2[i];
      }
      piv[i] = 1;
    }
  }
  if (abs_(d[n - 1]) < tiny) d[n - 1] = d[n - 1] < T(0) ? -tiny : tiny;
}

// Solve (T - lambda I) x = x in place with the factors of shifted_lu.
template <typename T>
CURVEXT_HD void lu_solve(int n, const T* d, const T* du, const T* du2, const T* dl,
                         const unsigned char* piv, T* x) {
  for (int i = 0; i + 1 < n; ++i) {
    if (piv[i] == 0) {
      x[i + 1] -= dl[i] * x[i];
    } else {
      T temp = x[i];
      x[i] = x[i + 1];
      x[i + 1] = temp - dl[i] * x[i];
    }
  }
  x[n - 1] /= d[n - 1];
  if (n > 1) x[n - 2] = (x[n - 2] - du[n - 2] * x[n - 1]) / d[n - 2];
  for (int i = n - 3; i >= 0; --i) x[i] = (x[i] - du[i] * x[i + 1] - du2[i] * x[i + 2]) / d[i];
}

template <typename T>
CURVEXT_HD T dot(const T* x, const T* y, int n) {
  T s = T(0);
  for (int i = 0; i < n; ++i) s += x[i] * y[i];
  return s;
}

template <typename T>
CURVEXT_HD T max_abs(const T* x, int n) {
  T m = T(0);
  for (int i = 0; i < n; ++i) m = max_(m, abs_(x[i]));
  return m;
}

template <typename T>
CURVEXT_HD void scale(T* x, int n, T s) {
  for (int i = 0; i < n; ++i) x[i] *= s;
}

// Remove from x its components along the unit vectors vecs[j*n .. j*n+n), j in [0, count).
template <typename T>
CURVEXT_HD void orthogonalize(T* x, const T* vecs, int count, int n) {
  for (int j = 0; j < count; ++j) {
    const T* v = vecs + (long long)j * n;
    T h = dot(v, x, n);
    for (int i = 0; i < n; ++i) x[i] -= h * v[i];
  }
}

// Relative gap below which neighbouring eigenvalues are treated as one cluster (LAPACK stein).
template <typename T>
CURVEXT_HD T cluster_tolerance(const Bounds<T>& bd) {
  return T(1e-3) * bd.norm;
}

// Index one past the end of the cluster that starts at eigenvalue k (w ascending).
template <typename T>
CURVEXT_HD int cluster_end(const T* w, int n, int k, T ortol) {
  int e = k + 1;
  while (e < n && w[e] - w[e - 1] < ortol) ++e;
  return e;
}

// Eigenvectors k_begin .. k_end-1 of one cluster by inverse iteration, written as unit rows
// vecs[k*n .. k*n+n). Members are orthogonalised against the earlier members of the cluster
// after every solve. Signs: the entry of largest magnitude is positive.
// work: 4n scalars; piv: n-1 bytes.
template <typename T>
CURVEXT_HD void inverse_iteration_cluster(const T* a, const T* b, int n, const T* w,
                                          const Bounds<T>& bd, int k_begin, int k_end, T* vecs,
                                          T* work, unsigned char* piv) {
  const T eps = Limits<T>::eps();
  const T norm = max_(bd.norm, Limits<T>::safe_min() / eps);
  const T tiny = eps * norm;
  const T pertol = T(10) * eps * norm;
  T* d = work;
  T* du = work + n;
  T* du2 = work + 2 * n;
  T* dl = work + 3 * n;
  T shift_prev = T(0);
  for (int k = k_begin; k < k_end; ++k) {
    T* x = vecs + (long long)k * n;
    if (n == 1) {
      x[0] = T(1);
      continue;
    }
    // Coincident eigenvalues get slightly separated shifts, so their LU factors differ.
    T shift = w[k];
    if (k > k_begin && shift - shift_prev < pertol) shift = shift_prev + pertol;
    shift_prev = shift;
    shifted_lu(a, b, n, shift, tiny, d, du, du2, dl, piv);
    for (int i = 0; i < n; ++i) x[i] = hash_uniform<T>(0x5EEDULL, (uint64_t)k, (uint64_t)i);
    const int members_before = k - k_begin;
    const T* earlier = vecs + (long long)k_begin * n;
    for (int it = 0; it < 3; ++it) {
      T m = max_abs(x, n);
      if (!(m > T(0))) {  // restart from a fresh direction if orthogonalisation wiped x out
        for (int i = 0; i < n; ++i) x[i] = hash_uniform<T>(0xBADULL + it, (uint64_t)k, (uint64_t)i);
        m = max_abs(x, n);
      }
      scale(x, n, tiny / m);
      lu_solve(n, d, du, du2, dl, piv, x);
      orthogonalize(x, earlier, members_before, n);
    }
    orthogonalize(x, earlier, members_before, n);  // twice is enough
    T m = max_abs(x, n);
    scale(x, n, T(1) / m);
    T nrm = T(0);
    int imax = 0;
    T big = T(0);
    for (int i = 0; i < n; ++i) {
      nrm += x[i] * x[i];
      if (abs_(x[i]) > big) {
        big = abs_(x[i]);
        imax = i;
      }
    }
    nrm = sqrt_(nrm);
    scale(x, n, (x[imax] < T(0) ? T(-1) : T(1)) / nrm);
  }
}

}  // namespace tridiag
}  // namespace curvext
