// Portability macros for math shared by the C++ (g++) and CUDA (nvcc) builds.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define CURVEXT_HD __host__ __device__ inline
#define CURVEXT_HD_HOT __host__ __device__ inline
#elif defined(__GNUC__)
#define CURVEXT_HD inline
// Inner loops: always inlined, so that the CPU kernel's per-ISA clones (target_clones) compile
// them with that ISA's vector width.
#define CURVEXT_HD_HOT inline __attribute__((always_inline))
#else
#define CURVEXT_HD inline
#define CURVEXT_HD_HOT inline
#endif

// Marks a loop over lanes as free of dependences (vectorised by the CPU build).
#if defined(__GNUC__) && !defined(__CUDA_ARCH__)
#define CURVEXT_SIMD _Pragma("omp simd")
#else
#define CURVEXT_SIMD
#endif

namespace curvext {

template <typename T>
struct Limits;

template <>
struct Limits<float> {
  CURVEXT_HD static float eps() { return 5.9604645e-08f; }        // unit roundoff 2^-24
  CURVEXT_HD static float safe_min() { return 1.17549435e-38f; }  // smallest normal
};

template <>
struct Limits<double> {
  CURVEXT_HD static double eps() { return 1.1102230246251565e-16; }  // 2^-53
  CURVEXT_HD static double safe_min() { return 2.2250738585072014e-308; }
};

template <typename T>
CURVEXT_HD T abs_(T x) { return x < T(0) ? -x : x; }

template <typename T>
CURVEXT_HD T max_(T a, T b) { return a > b ? a : b; }

template <typename T>
CURVEXT_HD T min_(T a, T b) { return a < b ? a : b; }

CURVEXT_HD float sqrt_(float x) { return sqrtf(x); }
CURVEXT_HD double sqrt_(double x) { return sqrt(x); }

}  // namespace curvext
