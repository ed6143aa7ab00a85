// CPU kernel of curvext::tridiag_eigh: one task per matrix (at::parallel_for over the batch).
// Bisection runs kLanes eigenvalues of a matrix in lockstep so the Sturm recurrence vectorises
// (compiled for AVX-512, AVX2 and baseline x86-64, picked at run time); the math itself is
// curvext/tridiag.h, shared with the CUDA kernel. Vectors are computed in float64 for every
// input dtype (Gram-Schmidt inside large clusters of close eigenvalues loses ~1/gap digits).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "blas1.h"
#include "curvext/checks.h"
#include "curvext/tridiag.h"


namespace curvext {
namespace {

// Lanes: eigenvalues bisected in lockstep. 64 gives several independent division chains per
// Sturm step (the recurrence is latency bound otherwise); small matrices use 16.
template <typename T, int L>
CURVEXT_HD_HOT void eigenvalues_lanes(const T* a, const T* b2, int n, const tridiag::Bounds<T>& bd,
                                      T* w, T* lo, int* counts) {
  int grid = 1;
  while (grid < n && grid < 256) grid *= 2;
  const T width = tridiag::grid_brackets<T, L>(a, b2, n, bd, grid, lo, counts);
  const int steps = tridiag::bisection_steps(bd, width);
  for (int k0 = 0; k0 < n; k0 += L) tridiag::bisect_bracketed<T, L>(a, b2, n, bd.pivmin, lo, width, steps, k0, w);
}

template <typename T>
CURVEXT_HD_HOT void eigenvalues_impl(const T* a, const T* b, int n, T* w, T* b2, T* lo, int* counts) {
  for (int i = 0; i + 1 < n; ++i) b2[i] = b[i] * b[i];
  const tridiag::Bounds<T> bd = tridiag::bounds(a, b, n);
  if (n >= 48) {
    eigenvalues_lanes<T, 64>(a, b2, n, bd, w, lo, counts);
  } else {
    eigenvalues_lanes<T, 16>(a, b2, n, bd, w, lo, counts);
  }
}

CURVEXT_SIMD_CLONES void eigenvalues(const float* a, const float* b, int n, float* w, float* b2,
                                     float* lo, int* counts) {
  eigenvalues_impl(a, b, n, w, b2, lo, counts);
}

CURVEXT_SIMD_CLONES void eigenvalues(const double* a, const double* b, int n, double* w, double* b2,
                                     double* lo, int* counts) {
  eigenvalues_impl(a, b, n, w, b2, lo, counts);
}

constexpr int kVectorLanes = 8;

CURVEXT_SIMD_CLONES void isolated_vectors(const double* a, const double* b, int n, const double* w,
                                          const tridiag::Bounds<double>& bd, const int* ks, int count,
                                          const double* start, double* vecs, double* work) {
  tridiag::inverse_iteration_isolated<double, kVectorLanes>(a, b, n, w, bd, ks, count, start, vecs, work);
}

// Per-thread scratch, sized once per task.
struct Scratch {
  explicit Scratch(int n, bool with_vectors)
      : counts(257), a64(with_vectors ? n : 0), b64(with_vectors ? n : 0),
        w64(with_vectors ? n : 0), vecs(with_vectors ? (size_t)n * n : 0),
        work(with_vectors ? 6 * (size_t)n * kVectorLanes : 0), piv(with_vectors ? n : 0), isolated(with_vectors ? n : 0),
        start(with_vectors ? n : 0) {
    if (with_vectors) tridiag::start_vector(n, start.data());
  }
  std::vector<int> counts;
  std::vector<double> a64, b64, w64, vecs, work;
  std::vector<unsigned char> piv;
  std::vector<int> isolated;
  std::vector<double> start;
};

template <typename T>
void solve_one(const T* a, const T* b, int n, int mode, T* w, T* vec_out, std::vector<T>& b2,
               std::vector<T>& lo, Scratch& s) {
  eigenvalues(a, b, n, w, b2.data(), lo.data(), s.counts.data());
  if (mode == 0) return;
  for (int i = 0; i < n; ++i) {
    s.a64[i] = double(a[i]);
    s.w64[i] = double(w[i]);
    if (i + 1 < n) s.b64[i] = double(b[i]);
  }
  const tridiag::Bounds<double> bd = tridiag::bounds(s.a64.data(), s.b64.data(), n);
  const double ortol = tridiag::cluster_tolerance(bd);
  int isolated = 0;
  for (int k = 0; k < n;) {
    const int e = tridiag::cluster_end(s.w64.data(), n, k, ortol);
    if (e == k + 1) {
      s.isolated[isolated++] = k;
    } else {
      tridiag::inverse_iteration_cluster(s.a64.data(), s.b64.data(), n, s.w64.data(), bd, k, e,
                                         s.start.data(), s.vecs.data(), s.work.data(), s.piv.data());
    }
    k = e;
  }
  for (int i0 = 0; i0 < isolated; i0 += kVectorLanes) {
    isolated_vectors(s.a64.data(), s.b64.data(), n, s.w64.data(), bd, s.isolated.data() + i0,
                     std::min(kVectorLanes, isolated - i0), s.start.data(), s.vecs.data(),
                     s.work.data());
  }
  const double* vecs = s.vecs.data();
  if (mode == 1) {
    for (int k = 0; k < n; ++k) vec_out[k] = T(vecs[(size_t)k * n]);
  } else {  // columns: vec_out[i * n + k] = component i of eigenvector k
    for (int k = 0; k < n; ++k)
      for (int i = 0; i < n; ++i) vec_out[(size_t)i * n + k] = T(vecs[(size_t)k * n + i]);
  }
}

std::tuple<at::Tensor, at::Tensor> tridiag_eigh_cpu(const at::Tensor& alpha_in,
                                                   const at::Tensor& beta_in, int64_t mode) {
  checks::tridiag_eigh(alpha_in, beta_in, mode);
  TORCH_CHECK(alpha_in.device().is_cpu(), "tridiag_eigh: CPU kernel got ", alpha_in.device());
  const at::Tensor alpha = alpha_in.contiguous();
  const at::Tensor beta = beta_in.contiguous();
  const int64_t B = alpha.size(0);
  const int n = static_cast<int>(alpha.size(1));
  at::Tensor values = at::empty({B, n}, alpha.options());
  at::Tensor vectors = mode == 0   ? at::empty({B, 0}, alpha.options())
                       : mode == 1 ? at::empty({B, n}, alpha.options())
                                   : at::empty({B, n, n}, alpha.options());
  const int64_t vec_stride = mode == 0 ? 0 : mode == 1 ? n : (int64_t)n * n;
  AT_DISPATCH_FLOATING_TYPES(alpha.scalar_type(), "tridiag_eigh_cpu", [&] {
    const scalar_t* a = alpha.data_ptr<scalar_t>();
    const scalar_t* b = beta.data_ptr<scalar_t>();
    scalar_t* w = values.data_ptr<scalar_t>();
    scalar_t* z = mode == 0 ? nullptr : vectors.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 2048 / ((int64_t)n * n + 1));
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      Scratch scratch(n, mode != 0);
      std::vector<scalar_t> b2(std::max(n, 1)), lo(std::max(n, 1));
      for (int64_t s = begin; s < end; ++s) {
        solve_one<scalar_t>(a + s * n, b + s * (n - 1), n, (int)mode, w + s * n,
                            z == nullptr ? nullptr : z + s * vec_stride, b2, lo, scratch);
      }
    });
  });
  return {values, vectors};
}

}  // namespace

TORCH_LIBRARY_IMPL(curvext, CPU, m) { m.impl("tridiag_eigh", &tridiag_eigh_cpu); }

}  // namespace curvext
