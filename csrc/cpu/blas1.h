// Vector primitives for the CPU kernels. Reductions accumulate in double, split over
// `#pragma omp simd` lanes so they vectorise without -ffast-math.
#pragma once
#include <cmath>
#include <cstdint>

// Per-sample kernels are compiled for AVX-512, AVX2 and baseline x86-64 and picked at run time;
// the primitives below are force-inlined so each clone gets its own vector width.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CURVEXT_SIMD_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define CURVEXT_INLINE inline __attribute__((always_inline))
#else
#define CURVEXT_SIMD_CLONES
#define CURVEXT_INLINE inline
#endif

namespace curvext {
namespace cpu {

template <typename T>
CURVEXT_INLINE double dot(const T* x, const T* y, int64_t n) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += double(x[i]) * double(y[i]);
  return s;
}

template <typename T>
CURVEXT_INLINE double norm2(const T* x, int64_t n) {
  return std::sqrt(dot(x, x, n));
}

// y += a * x
template <typename T>
CURVEXT_INLINE void axpy(T a, const T* x, T* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

template <typename T>
CURVEXT_INLINE void scal(T a, T* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] *= a;
}

// One classical Gram-Schmidt pass of r against rows Q[0..rows) (row length n):
// h = Q r, r -= Q^T h. Rows go in blocks of four, so each sweep over r feeds four independent
// accumulator chains (a dot product is otherwise latency bound) and r is read and written once
// per block instead of once per row.
template <typename T>
CURVEXT_INLINE void cgs_pass(const T* Q, int64_t rows, int64_t n, T* r, double* h) {
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4) {
    const T *q0 = Q + i * n, *q1 = q0 + n, *q2 = q1 + n, *q3 = q2 + n;
    // Accumulated in T, split over SIMD lanes (as BLAS gemv does): the coefficients only steer
    // the projection, and the second pass removes what rounding leaves.
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t t = 0; t < n; ++t) {
      const T rt = r[t];
      s0 += q0[t] * rt;
      s1 += q1[t] * rt;
      s2 += q2[t] * rt;
      s3 += q3[t] * rt;
    }
    h[i] = s0;
    h[i + 1] = s1;
    h[i + 2] = s2;
    h[i + 3] = s3;
  }
  for (; i < rows; ++i) h[i] = dot(Q + i * n, r, n);
  i = 0;
  for (; i + 4 <= rows; i += 4) {
    const T *q0 = Q + i * n, *q1 = q0 + n, *q2 = q1 + n, *q3 = q2 + n;
    const T h0 = T(h[i]), h1 = T(h[i + 1]), h2 = T(h[i + 2]), h3 = T(h[i + 3]);
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) r[t] -= (h0 * q0[t] + h1 * q1[t]) + (h2 * q2[t] + h3 * q3[t]);
  }
  for (; i < rows; ++i) axpy(T(-h[i]), Q + i * n, r, n);
}

}  // namespace cpu
}  // namespace curvext
