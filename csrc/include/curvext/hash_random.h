// Counter-based pseudo-random numbers (splitmix64), identical on CPU and GPU.
//
// Used where a kernel needs a deterministic "random" vector without a generator object:
// Lanczos restart directions after a breakdown and inverse-iteration start vectors.
#pragma once
#include <cstdint>

#include "curvext/macros.h"

namespace curvext {

CURVEXT_HD uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// Uniform in [-1, 1) from three integer keys.
template <typename T>
CURVEXT_HD T hash_uniform(uint64_t seed, uint64_t a, uint64_t b) {
  uint64_t h = splitmix64(seed ^ splitmix64(a ^ splitmix64(b)));
  return T(double(h >> 11) * (1.0 / 4503599627370496.0) - 1.0);  // 53-bit mantissa -> [-1, 1)
}

}  // namespace curvext
