// CPU kernel of curvext::tridiag_eigh: tasks of consecutive matrices (at::parallel_for over the
// batch). Bisection runs 64 eigenvalues in lockstep so the Sturm recurrence vectorises
// (compiled for AVX-512, AVX2 and baseline x86-64, picked at run time): those of one matrix
// from n = 64 on, (matrix, eigenvalue) pairs of several matrices below (packed_bisection.h);
// the math itself is curvext/tridiag.h, shared with the CUDA kernel. Eigenvectors: inverse
// iteration in SIMD lanes in the input's precision for every eigenvalue whose gaps exceed ~100x
// its error (a Gram-Schmidt clean-up inside groups closer than 1e-3 ||T||), stein's scalar
// float64 path for the rest (gaps near the eigenvalues' own error; ~0.1% of a random
// tridiagonal's).
// float32 on random tridiagonals: residuals ~1 eps ||T||, orthogonality ~10 eps (median),
// the same order as torch.linalg.eigh in float32.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "blas1.h"
#include "curvext/checks.h"
#include "curvext/tridiag.h"
#include "packed_bisection.h"


namespace curvext {
namespace {

// Lanes: eigenvalues bisected in lockstep. 64 gives several independent division chains per
// Sturm step (the recurrence is latency bound otherwise: 64 idle-padded lanes beat three
// groups of 16 from n = 17 on); matrices up to 16 use 16.
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
  if (n >= 17) {
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

// Matrices smaller than this many lanes are bisected with lanes packed across matrices: one
// matrix per pass would leave 64 - n lanes idle (3x the time at n = 20).
constexpr int kPackedLanes = 64;

CURVEXT_SIMD_CLONES void packed_eigenvalues(const float* a, const float* b, int n, int64_t count,
                                            float* w, cpu::PackedBisectionScratch<float>& s) {
  cpu::packed_eigenvalues<float, kPackedLanes>(a, b, n, count, w, s);
}

CURVEXT_SIMD_CLONES void packed_eigenvalues(const double* a, const double* b, int n, int64_t count,
                                            double* w, cpu::PackedBisectionScratch<double>& s) {
  cpu::packed_eigenvalues<double, kPackedLanes>(a, b, n, count, w, s);
}

// Eigenvectors in SIMD lanes (tridiag::inverse_iteration_isolated), in the input's precision:
// the lanes only take eigenvalues whose gaps keep inverse iteration accurate by itself (see
// tridiag::tight_cluster_tolerance). Enough lanes for several independent division chains.
template <typename T>
constexpr int kVectorLanes = 64 / (sizeof(T) / sizeof(float));  // 64 floats, 32 doubles

// Vectors are written as columns of `cols` (component i of vector k at cols[i * n + k]).
CURVEXT_SIMD_CLONES void lane_vectors(const float* a, const float* b, int n, const float* w,
                                      const tridiag::Bounds<float>& bd, const int* ks, int count,
                                      const float* start, double* cols, float* work) {
  tridiag::inverse_iteration_isolated<float, kVectorLanes<float>>(a, b, n, w, bd, ks, count, start, cols, 1, n, work);
}

CURVEXT_SIMD_CLONES void lane_vectors(const double* a, const double* b, int n, const double* w,
                                      const tridiag::Bounds<double>& bd, const int* ks, int count,
                                      const double* start, double* cols, double* work) {
  tridiag::inverse_iteration_isolated<double, kVectorLanes<double>>(a, b, n, w, bd, ks, count, start, cols, 1, n, work);
}

// Per-thread scratch, sized once per task. Vectors are assembled in float64 in `cols`; the
// scalar cluster path (inverse_iteration_cluster) works in float64 rows throughout, because
// Gram-Schmidt between solves loses ~log10(1 / gap) digits.
template <typename T>
struct Scratch {
  explicit Scratch(int n, bool with_vectors) : counts(257), b2(std::max(n, 1)), lo(std::max(n, 1)) {
    if (!with_vectors) return;
    a64.resize(n);
    b64.resize(n);
    w64.resize(n);
    cols.resize((size_t)n * n);
    rows.resize((size_t)n * n);
    work64.resize(4 * (size_t)n);
    piv.resize(n);
    start64.resize(n);
    tridiag::start_vector(n, start64.data());
    lane_work.resize(6 * (size_t)n * kVectorLanes<T>);
    lane_start.resize(n);
    tridiag::start_vector(n, lane_start.data());
    lane_ks.resize(n);
    groups.resize(n + 1);
  }
  std::vector<int> counts;
  std::vector<T> b2, lo;                             // bisection
  std::vector<double> cols;                          // the vectors, column k = vector k
  std::vector<double> a64, b64, w64, rows, work64, start64;
  std::vector<unsigned char> piv;                    // cluster path (rows: vector k = row k)
  std::vector<T> lane_work, lane_start;              // SIMD-lane path
  std::vector<int> lane_ks;  // eigenvalues whose vectors are computed in SIMD lanes
  std::vector<int> groups;   // [begin, end) pairs of close eigenvalues among them
};

// Copies vectors k_begin..k_end-1 between the column layout and rows of `rows`.
void columns_to_rows(const double* cols, double* rows, int n, int k_begin, int k_end) {
  for (int k = k_begin; k < k_end; ++k)
    for (int i = 0; i < n; ++i) rows[(size_t)k * n + i] = cols[(size_t)i * n + k];
}

void rows_to_columns(const double* rows, double* cols, int n, int k_begin, int k_end) {
  for (int k = k_begin; k < k_end; ++k)
    for (int i = 0; i < n; ++i) cols[(size_t)i * n + k] = rows[(size_t)k * n + i];
}

template <typename T>
void stein_cluster(const T* a, const T* b, int n, const T* w, int k_begin, int k_end, Scratch<T>& s,
                   bool& converted) {
  if (!converted) {
    for (int i = 0; i < n; ++i) {
      s.a64[i] = double(a[i]);
      s.w64[i] = double(w[i]);
      if (i + 1 < n) s.b64[i] = double(b[i]);
    }
    converted = true;
  }
  const tridiag::Bounds<double> bd = tridiag::bounds(s.a64.data(), s.b64.data(), n);
  tridiag::inverse_iteration_cluster(s.a64.data(), s.b64.data(), n, s.w64.data(), bd, k_begin, k_end,
                                     s.start64.data(), s.rows.data(), s.work64.data(), s.piv.data());
  rows_to_columns(s.rows.data(), s.cols.data(), n, k_begin, k_end);
}

// One matrix: eigenvalues w (unless `have_values`: computed for the whole task already), then
// the vectors or their first components as `mode` asks.
template <typename T>
void solve_one(const T* a, const T* b, int n, int mode, T* w, T* vec_out, Scratch<T>& s, bool have_values) {
  if (!have_values) eigenvalues(a, b, n, w, s.b2.data(), s.lo.data(), s.counts.data());
  if (mode == 0) return;
  const tridiag::Bounds<T> bd = tridiag::bounds(a, b, n);
  const T ortol = tridiag::cluster_tolerance(bd);
  // w's absolute error: bisection to 2 eps ||T|| in T's precision, a backward error of a few
  // eps ||T||, and the rounding of w to T.
  const T accuracy = T(4) * Limits<T>::eps() * bd.norm + Limits<T>::safe_min();
  const T tight = tridiag::tight_cluster_tolerance(bd, accuracy);
  bool converted = false;
  int lanes = 0, groups = 0;
  for (int k = 0; k < n;) {
    const int e = tridiag::cluster_end(w, n, k, ortol);
    if (e == k + 1 || tridiag::gaps_at_least(w, k, e, tight)) {
      for (int j = k; j < e; ++j) s.lane_ks[lanes++] = j;
      if (e > k + 1) {
        s.groups[groups++] = k;  // Gram-Schmidt clean-up afterwards
        s.groups[groups++] = e;
      }
    } else {  // gaps near the eigenvalues' own error: stein's scalar path
      stein_cluster(a, b, n, w, k, e, s, converted);
    }
    k = e;
  }
  double* cols = s.cols.data();
  for (int i0 = 0; i0 < lanes; i0 += kVectorLanes<T>) {
    lane_vectors(a, b, n, w, bd, s.lane_ks.data() + i0, std::min(kVectorLanes<T>, lanes - i0),
                 s.lane_start.data(), cols, s.lane_work.data());
  }
  for (int g = 0; g < groups; g += 2) {
    const int k_begin = s.groups[g], k_end = s.groups[g + 1];
    columns_to_rows(cols, s.rows.data(), n, k_begin, k_end);
    tridiag::orthogonalize_members(s.rows.data(), n, k_begin, k_end);
    rows_to_columns(s.rows.data(), cols, n, k_begin, k_end);
  }
  const size_t count = mode == 1 ? (size_t)n : (size_t)n * n;  // mode 1: row 0 of the columns
  for (size_t j = 0; j < count; ++j) vec_out[j] = T(cols[j]);
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
    const bool packed = n < kPackedLanes;
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      Scratch<scalar_t> scratch(n, mode != 0);
      if (packed) {
        cpu::PackedBisectionScratch<scalar_t> lanes;
        packed_eigenvalues(a + begin * n, b + begin * (n - 1), n, end - begin, w + begin * n, lanes);
      }
      for (int64_t s = begin; s < end; ++s) {
        solve_one<scalar_t>(a + s * n, b + s * (n - 1), n, (int)mode, w + s * n,
                            z == nullptr ? nullptr : z + s * vec_stride, scratch, packed);
      }
    });
  });
  return {values, vectors};
}

}  // namespace

TORCH_LIBRARY_IMPL(curvext, CPU, m) { m.impl("tridiag_eigh", &tridiag_eigh_cpu); }

}  // namespace curvext
