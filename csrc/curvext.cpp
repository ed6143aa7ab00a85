// Schemas of every curvext op. Kernels live in cpu/<op>.cpp and cuda/<op>.cu; fake (meta)
// implementations for torch.compile live in curvext/_ops.py.
#include <torch/library.h>

TORCH_LIBRARY(curvext, m) {
  // Eigen-decomposition of B symmetric tridiagonal matrices.
  // alpha (B, m) diagonals, beta (B, m-1) off-diagonals; mode 0: eigenvalues only,
  // 1: also the first component of every unit eigenvector, 2: also all eigenvectors.
  // Returns eigenvalues (B, m) ascending and vectors (B, 0) | (B, m) | (B, m, m) (columns).
  m.def("tridiag_eigh(Tensor alpha, Tensor beta, int mode) -> (Tensor, Tensor)");

  // One Lanczos step for the samples `index` (b,) of a batch, in place.
  // basis (B, M+1, n) holds the Lanczos vectors q_0..q_j of each sample; w (b, n) = A q_j.
  // Writes alpha[s, step], beta[s, step] and basis[s, step+1] after full reorthogonalisation
  // (classical Gram-Schmidt; a second pass when the first cancelled most of r, see
  // lanczos_rules.h; the CUDA kernel always runs two). Returns a per-sample flag (b,) int32:
  // 0 ok, 1 breakdown (invariant subspace; beta = 0 and q_{step+1} is a fresh direction
  // orthogonal to the basis), 2 breakdown with the whole space exhausted (q_{step+1} = 0),
  // 3 w has a non-finite entry (nothing else written).
  // rows (b,) int64, optional: sample index[i] steps from its own row rows[i] <= step instead
  // (a restarted run's samples sit at different rows; step then bounds them all).
  m.def(
      "lanczos_step(Tensor(a!) basis, Tensor w, Tensor(b!) alpha, Tensor(c!) beta, "
      "Tensor index, int step, float breakdown_tol, int seed, Tensor? rows=None) -> Tensor");

  // Reduction of B bordered diagonal ("arrowhead") matrices to tridiagonal form by Givens
  // rotations (curvext/arrowhead.h), the projected matrix of a thick restart.
  // diag, border (B, L); sizes (B,) int64 in [0, L]. Problem s is the (p+1) x (p+1) matrix
  // [[diag(d), a], [a^T, *]] with p = sizes[s], d = diag[s, :p], a = border[s, :p].
  // Returns alpha (B, L), beta (B, L) and Z (B, L, L) orthogonal with Z^T diag(d) Z =
  // tridiag(alpha[:p], beta[:p-1]) and Z^T a = beta[p-1] e_{p-1}, every beta >= 0; past p:
  // alpha = diag, beta = 0, Z = identity. A zero prefix of a is left untouched (Z = identity).
  m.def("arrowhead_tridiag(Tensor diag, Tensor border, Tensor sizes) -> (Tensor, Tensor, Tensor)");

  // Ritz vectors: basis (B, M, n), coeffs (B, m, k) with m <= M -> (B, k, n),
  // out[s, i] = sum_j coeffs[s, j, i] * basis[s, j].
  m.def("ritz_vectors(Tensor basis, Tensor coeffs) -> Tensor");

  // One power-iteration update. v (b, n) unit vectors, w (b, n) = A v, shift (b,).
  // Returns (v_next = (w + shift v) / ||w + shift v||, theta = v.w, residual = ||w - theta v||,
  // converged = residual <= tol |theta|).
  m.def("power_step(Tensor v, Tensor w, Tensor shift, float tol) -> (Tensor, Tensor, Tensor, Tensor)");

  // Build check: how many distinct threads run the chunks of an at::parallel_for over
  // `tasks` items, as the CPU kernels use it. 1 with several torch threads means the
  // extension was compiled without the parallel backend's flags (a serial build).
  m.def("parallel_threads(int tasks) -> int");
}
