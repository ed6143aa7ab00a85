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
// h = Q r, r -= Q^T h. Returns h[rows-1] (the coefficient on the newest row), h in `h`.
template <typename T>
CURVEXT_INLINE void cgs_pass(const T* Q, int64_t rows, int64_t n, T* r, double* h) {
  for (int64_t i = 0; i < rows; ++i) h[i] = dot(Q + i * n, r, n);
  for (int64_t i = 0; i < rows; ++i) axpy(T(-h[i]), Q + i * n, r, n);
}

}  // namespace cpu
}  // namespace curvext
