// Vector primitives for the CPU kernels. Reductions accumulate in double, split over
// `#pragma omp simd` lanes so they vectorise without -ffast-math.
#pragma once
#include <cmath>
#include <cstdint>

namespace curvext {
namespace cpu {

template <typename T>
inline double dot(const T* x, const T* y, int64_t n) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += double(x[i]) * double(y[i]);
  return s;
}

template <typename T>
inline double norm2(const T* x, int64_t n) {
  return std::sqrt(dot(x, x, n));
}

// y += a * x
template <typename T>
inline void axpy(T a, const T* x, T* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

template <typename T>
inline void scal(T a, T* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] *= a;
}

// One classical Gram-Schmidt pass of r against rows Q[0..rows) (row length n):
// h = Q r, r -= Q^T h. Returns h[rows-1] (the coefficient on the newest row), h in `h`.
template <typename T>
inline void cgs_pass(const T* Q, int64_t rows, int64_t n, T* r, double* h) {
  for (int64_t i = 0; i < rows; ++i) h[i] = dot(Q + i * n, r, n);
  for (int64_t i = 0; i < rows; ++i) axpy(T(-h[i]), Q + i * n, r, n);
}

}  // namespace cpu
}  // namespace curvext
