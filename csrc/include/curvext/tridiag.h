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
CURVEXT_HD_HOT Bounds<T> bounds(const T* a, const T* b, int n) {
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

// Number of bisection halvings that take an interval of `width` down to ~2 eps ||T||.
template <typename T>
CURVEXT_HD_HOT int bisection_steps(const Bounds<T>& bd, T width) {
  T target = T(2) * Limits<T>::eps() * max_(bd.norm, Limits<T>::safe_min()) + bd.pivmin;
  int steps = 0;
  while (width > target && steps < 200) {
    width *= T(0.5);
    ++steps;
  }
  return steps + 1;
}

template <typename T>
CURVEXT_HD int bisection_steps(const Bounds<T>& bd) {
  return bisection_steps(bd, bd.upper - bd.lower);
}

// One step of the Sturm recurrence: the pivot q_i = (a_i - x) - b_{i-1}^2 / q_{i-1} of the LDL^T
// factorisation of T - x I (pass b2_over_q = 0 for i = 0), a pivot smaller than pivmin in magnitude
// replaced by -pivmin (LAPACK's dstebz rule). The count of negative pivots is the number of
// eigenvalues below x. Every Sturm count of the CPU and CUDA kernels goes through this function.
template <typename T>
CURVEXT_HD_HOT T sturm_pivot(T ai, T x, T b2_over_q, T pivmin) {
  T v = (ai - x) - b2_over_q;
  return abs_(v) < pivmin ? -pivmin : v;
}

// Sturm counts for L shifts at once: cnt[l] = number of eigenvalues < x[l].
// The loop over l has no dependences, so the CPU build vectorises it; CUDA uses L = 1.
template <typename T, int L>
CURVEXT_HD_HOT void sturm_counts(const T* a, const T* b2, int n, const T* x, T pivmin, int* cnt) {
  T q[L];
  int c[L];
  for (int l = 0; l < L; ++l) {
    q[l] = sturm_pivot(a[0], x[l], T(0), pivmin);
    c[l] = q[l] < T(0) ? 1 : 0;
  }
  for (int i = 1; i < n; ++i) {
    const T ai = a[i], bi2 = b2[i - 1];
    for (int l = 0; l < L; ++l) {
      q[l] = sturm_pivot(ai, x[l], bi2 / q[l], pivmin);
      c[l] += q[l] < T(0) ? 1 : 0;
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

// Brackets of width (upper - lower) / G for every eigenvalue from Sturm counts on a uniform grid
// of G = grid_points intervals: lo[k] <= eigenvalue k < lo[k] + width. Spends G/L Sturm sweeps
// to save log2(G) bisection steps for each eigenvalue. counts: G+1 ints of scratch.
template <typename T, int L>
CURVEXT_HD_HOT T grid_brackets(const T* a, const T* b2, int n, const Bounds<T>& bd, int grid_points,
                           T* lo, int* counts) {
  const T width = (bd.upper - bd.lower) / T(grid_points);
  counts[0] = 0;
  counts[grid_points] = n;
  T x[L];
  int c[L];
  for (int g0 = 1; g0 < grid_points; g0 += L) {
    for (int l = 0; l < L; ++l) x[l] = bd.lower + T(min_(g0 + l, grid_points - 1)) * width;
    sturm_counts<T, L>(a, b2, n, x, bd.pivmin, c);
    for (int l = 0; l < L && g0 + l < grid_points; ++l) counts[g0 + l] = c[l];
  }
  int g = 0;
  for (int k = 0; k < n; ++k) {
    while (counts[g + 1] <= k) ++g;  // counts[g] <= k < counts[g + 1]
    lo[k] = bd.lower + T(g) * width;
  }
  return width;
}

// Bisection from per-eigenvalue brackets [lo[k], lo[k] + width) of equal width.
template <typename T, int L>
CURVEXT_HD_HOT void bisect_bracketed(const T* a, const T* b2, int n, T pivmin, const T* lo_in, T width,
                                 int steps, int k0, T* out) {
  T lo[L], hi[L], mid[L];
  int cnt[L];
  for (int l = 0; l < L; ++l) {
    lo[l] = lo_in[min_(k0 + l, n - 1)];
    hi[l] = lo[l] + width;
  }
  for (int s = 0; s < steps; ++s) {
    for (int l = 0; l < L; ++l) mid[l] = T(0.5) * (lo[l] + hi[l]);
    sturm_counts<T, L>(a, b2, n, mid, pivmin, cnt);
    for (int l = 0; l < L; ++l) {
      bool above = cnt[l] > k0 + l;
      hi[l] = above ? mid[l] : hi[l];
      lo[l] = above ? lo[l] : mid[l];
    }
  }
  for (int l = 0; l < L && k0 + l < n; ++l) out[k0 + l] = T(0.5) * (lo[l] + hi[l]);
}

// LU factorisation with partial pivoting of T - lambda I (LAPACK gttrf layout):
// d = reciprocals of the U diagonal, du = first superdiagonal, du2 = second superdiagonal, dl = multipliers,
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
  for (int i = 0; i < n; ++i) d[i] = T(1) / d[i];  // solves multiply: no division chain
}

// Solve (T - lambda I) x = x in place with the factors of shifted_lu (d holds 1 / pivots).
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
  x[n - 1] *= d[n - 1];
  if (n > 1) x[n - 2] = (x[n - 2] - du[n - 2] * x[n - 1]) * d[n - 2];
  for (int i = n - 3; i >= 0; --i) x[i] = (x[i] - du[i] * x[i + 1] - du2[i] * x[i + 2]) * d[i];
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

// Scales x to unit length with its entry of largest magnitude positive.
template <typename T>
CURVEXT_HD void normalize_signed(T* x, int n) {
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

// The pseudo-random start vector of inverse iteration (n scalars).
template <typename T>
CURVEXT_HD void start_vector(int n, T* out) {
  for (int i = 0; i < n; ++i) out[i] = hash_uniform<T>(0x5EEDULL, 0, (uint64_t)i);
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
// start: n scalars (start_vector); work: 4n scalars; piv: n-1 bytes.
template <typename T>
CURVEXT_HD void inverse_iteration_cluster(const T* a, const T* b, int n, const T* w,
                                          const Bounds<T>& bd, int k_begin, int k_end,
                                          const T* start, T* vecs, T* work, unsigned char* piv) {
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
    // Start: the shared pseudo-random vector, rotated differently for every member.
    const int rot = (7 * (k - k_begin)) % n;
    for (int i = 0; i < n; ++i) x[i] = start[(i + rot) % n];
    const int members_before = k - k_begin;
    const T* earlier = vecs + (long long)k_begin * n;
    // Isolated eigenvalues: two solves shrink other components by (error / gap)^2 <= 1e-8
    // even for float32-accurate shifts; cluster members get a third, orthogonalised one.
    const int iterations = k_end - k_begin > 1 ? 3 : 2;
    for (int it = 0; it < iterations; ++it) {
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
    normalize_signed(x, n);
  }
}

// Gap below which close eigenvalues need stein's Gram-Schmidt between inverse-iteration solves
// (inverse_iteration_cluster). Above it, and below cluster_tolerance, every member converges to
// its own vector by itself: two solves from shifts accurate to `accuracy` (the bisection's
// absolute error bound) shrink the other members' components by (accuracy / gap)^2 <= 1e-4, and
// what remains lies inside the cluster, where it moves the residual only by ~1e-4 * gap. One
// Gram-Schmidt pass afterwards (orthogonalize_members) restores orthogonality.
template <typename T>
CURVEXT_HD T tight_cluster_tolerance(const Bounds<T>& bd, T accuracy) {
  return min_(T(100) * accuracy, cluster_tolerance(bd));
}

// True when every gap inside the cluster [k_begin, k_end) is at least `tight`.
template <typename T>
CURVEXT_HD bool gaps_at_least(const T* w, int k_begin, int k_end, T tight) {
  for (int k = k_begin + 1; k < k_end; ++k)
    if (w[k] - w[k - 1] < tight) return false;
  return true;
}

// Gram-Schmidt clean-up of the converged unit vectors k_begin .. k_end-1 (rows of vecs):
// each is orthogonalised (twice) against the earlier ones and normalised again.
template <typename T>
CURVEXT_HD void orthogonalize_members(T* vecs, int n, int k_begin, int k_end) {
  const T* first = vecs + (long long)k_begin * n;
  for (int k = k_begin + 1; k < k_end; ++k) {
    T* x = vecs + (long long)k * n;
    orthogonalize(x, first, k - k_begin, n);
    orthogonalize(x, first, k - k_begin, n);
    normalize_signed(x, n);
  }
}

// Eigenvectors of L isolated eigenvalues w[ks[0..count)] at once (count <= L), the lanes of
// every loop running in lockstep so the CPU build vectorises them; same algorithm as
// inverse_iteration_cluster without Gram-Schmidt (two solves), all lanes starting from the
// same pseudo-random vector `start` (n scalars in (-1, 1), see start_vector). Arithmetic in T;
// component i of unit vector k is written (as O) to vecs[k * k_stride + i * i_stride]: rows
// with (n, 1), columns with (1, n). work: 6 n L scalars (layout [i][lane]).
// Scaling is fused into the solves: the start is scaled to ~tiny, the first solve's backward
// sweep records each lane's largest entry, and the second solve rescales to ~tiny as it goes,
// so neither overflow nor underflow can occur whatever ||T||.
template <typename T, int L, typename O>
CURVEXT_HD_HOT void inverse_iteration_isolated(const T* a, const T* b, int n, const T* w,
                                               const Bounds<T>& bd, const int* ks, int count,
                                               const T* start, O* vecs, long long k_stride,
                                               long long i_stride, T* work) {
  const T eps = Limits<T>::eps();
  const T norm = max_(bd.norm, Limits<T>::safe_min() / eps);
  const T tiny = eps * norm;
  T* d = work;
  T* du = work + n * L;
  T* du2 = work + 2 * n * L;
  T* dl = work + 3 * n * L;
  T* x = work + 4 * n * L;
  T* swapped = work + 5 * n * L;  // 1 where rows i, i+1 were exchanged, else 0
  T shift[L];
  for (int l = 0; l < L; ++l) shift[l] = w[ks[min_(l, count - 1)]];
  if (n == 1) {
    for (int l = 0; l < count; ++l) vecs[(long long)ks[l] * k_stride] = O(1);
    return;
  }
  // Factorisation, gttrf with per-lane pivoting expressed as selects; d keeps 1 / pivot.
  CURVEXT_SIMD for (int l = 0; l < L; ++l) {
    d[l] = a[0] - shift[l];
    du[l] = b[0];
  }
  for (int i = 0; i + 1 < n; ++i) {
    const T bi = b[i], bn = i + 2 < n ? b[i + 1] : T(0), an = a[i + 1];
    T* d0 = d + i * L;
    T* d1 = d0 + L;
    T* du0 = du + i * L;
    T* du1 = du0 + L;
    T* du20 = du2 + i * L;
    T* dl0 = dl + i * L;
    T* sw0 = swapped + i * L;
    CURVEXT_SIMD for (int l = 0; l < L; ++l) {
      const T di = d0[l], dui = du0[l];
      const T dnext = an - shift[l];
      const bool swap = abs_(di) < abs_(bi);
      const T piv_no = abs_(di) < tiny ? (di < T(0) ? -tiny : tiny) : di;
      const T pivot = swap ? bi : piv_no;
      const T rpivot = T(1) / pivot;  // the only division of the row: U's reciprocal pivot
      const T fact = (swap ? di : bi) * rpivot;
      d0[l] = rpivot;
      dl0[l] = fact;
      du0[l] = swap ? dnext : dui;
      d1[l] = swap ? dui - fact * dnext : dnext - fact * dui;
      du20[l] = swap ? bn : T(0);
      du1[l] = swap ? -fact * bn : bn;  // row n-1's du is never read
      sw0[l] = swap ? T(1) : T(0);
    }
  }
  {
    T* dn = d + (n - 1) * L;
    CURVEXT_SIMD for (int l = 0; l < L; ++l) {
      const T last = abs_(dn[l]) < tiny ? (dn[l] < T(0) ? -tiny : tiny) : dn[l];
      dn[l] = T(1) / last;
    }
  }
  for (int i = 0; i < n; ++i) {
    const T r = start[i] * tiny;
    T* xi = x + i * L;  // row pointers: `x[i * L + l]` compiles to scatters/gathers
    CURVEXT_SIMD for (int l = 0; l < L; ++l) xi[l] = r;
  }
  T rescale[L], big[L], sgn[L];
  CURVEXT_SIMD for (int l = 0; l < L; ++l) rescale[l] = T(1);
  for (int it = 0; it < 2; ++it) {
    // Forward elimination (row swaps as selects), rescaling x by `rescale` on first touch.
    CURVEXT_SIMD for (int l = 0; l < L; ++l) x[l] *= rescale[l];
    for (int i = 0; i + 1 < n; ++i) {
      T* x0 = x + i * L;
      T* x1 = x0 + L;
      const T* f = dl + i * L;
      const T* sw = swapped + i * L;
      CURVEXT_SIMD for (int l = 0; l < L; ++l) {
        const T xi = x0[l], xn = x1[l] * rescale[l];
        const bool swap = sw[l] != T(0);
        x0[l] = swap ? xn : xi;
        x1[l] = swap ? xi - f[l] * xn : xn - f[l] * xi;
      }
    }
    // Back substitution.
    {
      T* xl = x + (n - 1) * L;
      T* xp = x + (n - 2) * L;
      const T* dlast = d + (n - 1) * L;
      const T* dprev = d + (n - 2) * L;
      const T* duprev = du + (n - 2) * L;
      CURVEXT_SIMD for (int l = 0; l < L; ++l) {
        const T vl = xl[l] * dlast[l];
        xl[l] = vl;
        xp[l] = (xp[l] - duprev[l] * vl) * dprev[l];
      }
    }
    for (int i = n - 3; i >= 0; --i) {
      T* x0 = x + i * L;
      const T* x1 = x0 + L;
      const T* x2 = x1 + L;
      const T* u1 = du + i * L;
      const T* u2 = du2 + i * L;
      const T* di = d + i * L;
      CURVEXT_SIMD for (int l = 0; l < L; ++l) x0[l] = (x0[l] - u1[l] * x1[l] - u2[l] * x2[l]) * di[l];
    }
    // Each lane's largest magnitude (a separate pass: unconditional max, no data-dependent
    // stores in the solve).
    CURVEXT_SIMD for (int l = 0; l < L; ++l) big[l] = T(0);
    for (int i = 0; i < n; ++i) {
      const T* xi = x + i * L;
      CURVEXT_SIMD for (int l = 0; l < L; ++l) big[l] = max_(big[l], abs_(xi[l]));
    }
    CURVEXT_SIMD for (int l = 0; l < L; ++l) rescale[l] = tiny / big[l];
  }
  // Sign: that of the entries of largest magnitude (summed, so the pass has no conditional
  // stores; ties of opposite sign are the only ambiguous case, as in any convention).
  CURVEXT_SIMD for (int l = 0; l < L; ++l) sgn[l] = T(0);
  for (int i = 0; i < n; ++i) {
    const T* xi = x + i * L;
    CURVEXT_SIMD for (int l = 0; l < L; ++l) {
      const T v = xi[l];
      sgn[l] += abs_(v) == big[l] ? v : T(0);
    }
  }
  CURVEXT_SIMD for (int l = 0; l < L; ++l) sgn[l] = sgn[l] < T(0) ? T(-1) : T(1);
  // Normalise (x / big has entries <= 1, so the sum of squares cannot overflow); the
  // largest-magnitude entry positive.
  T sq[L];
  CURVEXT_SIMD for (int l = 0; l < L; ++l) {
    rescale[l] = T(1) / big[l];
    sq[l] = T(0);
  }
  for (int i = 0; i < n; ++i) {
    const T* xi = x + i * L;
    CURVEXT_SIMD for (int l = 0; l < L; ++l) {
      const T v = xi[l] * rescale[l];
      sq[l] += v * v;
    }
  }
  CURVEXT_SIMD for (int l = 0; l < L; ++l) rescale[l] *= sgn[l] / sqrt_(sq[l]);
  if (k_stride == 1 && ks[count - 1] - ks[0] == count - 1) {  // consecutive k: contiguous stores
    O* out = vecs + ks[0];
    for (int i = 0; i < n; ++i) {
      const T* xi = x + i * L;
      O* oi = out + (long long)i * i_stride;
      CURVEXT_SIMD for (int l = 0; l < count; ++l) oi[l] = O(xi[l] * rescale[l]);
    }
  } else {
    for (int l = 0; l < count; ++l) {
      const T scale_l = rescale[l];
      O* out = vecs + (long long)ks[l] * k_stride;
      for (int i = 0; i < n; ++i) out[(long long)i * i_stride] = O(x[i * L + l] * scale_l);
    }
  }
}

}  // namespace tridiag
}  // namespace curvext
