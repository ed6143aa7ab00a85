// Eigenvalues of many small tridiagonal matrices by bisection with SIMD lanes packed across
// matrices (CPU kernel of curvext::tridiag_eigh, for n below the lane count).
//
// The one-matrix path bisects the n eigenvalues of one matrix in L lanes, so a matrix with
// n < L leaves L - n lanes idle (a Lanczos convergence test solves m = 10..40). Here a lane
// holds any (matrix, eigenvalue) pair of a task's matrices, and the matrices' entries are laid
// out lane-major (entry i of every lane's matrix contiguous) so the Sturm recurrence still
// vectorises. Brackets, step counts and arithmetic are those of tridiag::bisect_bracketed, with
// lanes frozen after their own matrix's step count: the eigenvalues are the same numbers the
// one-matrix path computes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "curvext/tridiag.h"

namespace curvext {
namespace cpu {

// Per-task scratch; vectors grow to the largest call and are reused.
template <typename T>
struct PackedBisectionScratch {
  std::vector<T> b2;         // squared off-diagonals, matrix after matrix
  std::vector<T> lo;         // bracket start of every eigenvalue, matrix after matrix
  std::vector<T> width;      // bracket width per matrix
  std::vector<T> pivmin;     // smallest allowed |pivot| per matrix
  std::vector<int> steps;    // bisection steps per matrix
  std::vector<int> counts;   // grid scratch
  std::vector<T> lane_a;     // (n, L): diagonal entry i of each lane's matrix
  std::vector<T> lane_b2;    // (n - 1, L)
};

// Sturm counts with per-lane matrices: cnt[l] = eigenvalues below x[l] of lane l's matrix
// (tridiag::sturm_pivot per element, in lane-major layout).
template <typename T, int L>
CURVEXT_HD_HOT void sturm_counts_lane_major(const T* A, const T* B2, int n, const T* x, const T* pivmin,
                                            int* cnt) {
  T q[L];
  int c[L];
  CURVEXT_SIMD
  for (int l = 0; l < L; ++l) {
    q[l] = tridiag::sturm_pivot(A[l], x[l], T(0), pivmin[l]);
    c[l] = q[l] < T(0) ? 1 : 0;
  }
  for (int i = 1; i < n; ++i) {
    const T* ai = A + (int64_t)i * L;
    const T* bi2 = B2 + (int64_t)(i - 1) * L;
    CURVEXT_SIMD
    for (int l = 0; l < L; ++l) {
      q[l] = tridiag::sturm_pivot(ai[l], x[l], bi2[l] / q[l], pivmin[l]);
      c[l] += q[l] < T(0) ? 1 : 0;
    }
  }
  for (int l = 0; l < L; ++l) cnt[l] = c[l];
}

// Ascending eigenvalues w (count, n) of `count` matrices a (count, n), b (count, n - 1).
template <typename T, int L>
CURVEXT_HD_HOT void packed_eigenvalues(const T* a, const T* b, int n, int64_t count, T* w,
                                       PackedBisectionScratch<T>& s) {
  const int nb = std::max(n - 1, 1);
  s.b2.resize((size_t)count * nb);
  s.lo.resize((size_t)count * n);
  s.width.resize(count);
  s.pivmin.resize(count);
  s.steps.resize(count);
  s.counts.resize(257);
  s.lane_a.resize((size_t)n * L);
  s.lane_b2.resize((size_t)nb * L);
  int grid = 1;
  while (grid < n && grid < 256) grid *= 2;
  for (int64_t m = 0; m < count; ++m) {
    const T* am = a + m * n;
    const T* bm = b + m * (n - 1);
    T* b2m = s.b2.data() + m * nb;
    for (int i = 0; i + 1 < n; ++i) b2m[i] = bm[i] * bm[i];
    const tridiag::Bounds<T> bd = tridiag::bounds(am, bm, n);
    s.width[m] = tridiag::grid_brackets<T, L>(am, b2m, n, bd, grid, s.lo.data() + m * n, s.counts.data());
    s.steps[m] = tridiag::bisection_steps(bd, s.width[m]);
    s.pivmin[m] = bd.pivmin;
  }
  const int64_t pairs = count * n;
  T lo[L], hi[L], mid[L], piv[L];
  int cnt[L], k_of[L], steps_of[L];
  int64_t m_of[L];
  for (int64_t p0 = 0; p0 < pairs; p0 += L) {
    int most = 0;
    for (int l = 0; l < L; ++l) {
      const int64_t p = std::min<int64_t>(p0 + l, pairs - 1);  // tail lanes repeat the last pair
      const int64_t m = p / n;
      m_of[l] = m;
      k_of[l] = (int)(p % n);
      lo[l] = s.lo[p];
      hi[l] = lo[l] + s.width[m];
      piv[l] = s.pivmin[m];
      steps_of[l] = s.steps[m];
      most = std::max(most, steps_of[l]);
      for (int i = 0; i < n; ++i) s.lane_a[(size_t)i * L + l] = a[m * n + i];
      for (int i = 0; i + 1 < n; ++i) s.lane_b2[(size_t)i * L + l] = s.b2[m * nb + i];
    }
    for (int step = 0; step < most; ++step) {
      CURVEXT_SIMD
      for (int l = 0; l < L; ++l) mid[l] = T(0.5) * (lo[l] + hi[l]);
      sturm_counts_lane_major<T, L>(s.lane_a.data(), s.lane_b2.data(), n, mid, piv, cnt);
      CURVEXT_SIMD
      for (int l = 0; l < L; ++l) {
        const bool live = step < steps_of[l];
        const bool above = cnt[l] > k_of[l];  // eigenvalue k lies below mid
        hi[l] = live && above ? mid[l] : hi[l];
        lo[l] = live && !above ? mid[l] : lo[l];
      }
    }
    for (int l = 0; l < L && p0 + l < pairs; ++l) w[m_of[l] * n + k_of[l]] = T(0.5) * (lo[l] + hi[l]);
  }
}

}  // namespace cpu
}  // namespace curvext
