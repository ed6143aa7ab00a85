// Argument checks shared by the CPU and CUDA kernels of every op (host code).
// Finiteness is checked by the Python wrappers, which may synchronise; kernels never do.
#pragma once
#include <ATen/ATen.h>

namespace curvext {
namespace checks {

inline void floating(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64, got ", t.scalar_type());
}

inline void same_dtype_device(const at::Tensor& ref, const at::Tensor& t, const char* op,
                              const char* ref_name, const char* name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the dtype of ",
              ref_name, " (", ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on the device of ", ref_name,
              " (", ref.device(), "), got ", t.device());
}

inline void tridiag_eigh(const at::Tensor& alpha, const at::Tensor& beta, int64_t mode) {
  const char* op = "tridiag_eigh";
  floating(alpha, op, "alpha");
  same_dtype_device(alpha, beta, op, "alpha", "beta");
  TORCH_CHECK(alpha.dim() == 2 && alpha.size(1) >= 1, op, ": alpha must be (B, m) with m >= 1, got ",
              alpha.sizes());
  TORCH_CHECK(beta.dim() == 2 && beta.size(0) == alpha.size(0) && beta.size(1) == alpha.size(1) - 1,
              op, ": beta must be (B, m-1) = (", alpha.size(0), ", ", alpha.size(1) - 1,
              ") for alpha of shape ", alpha.sizes(), ", got ", beta.sizes());
  TORCH_CHECK(mode >= 0 && mode <= 2, op, ": mode must be 0 (values), 1 (first components) or 2 ",
              "(vectors), got ", mode);
}

inline void lanczos_step(const at::Tensor& basis, const at::Tensor& w, const at::Tensor& alpha,
                         const at::Tensor& beta, const at::Tensor& index, int64_t step) {
  const char* op = "lanczos_step";
  floating(basis, op, "basis");
  same_dtype_device(basis, w, op, "basis", "w");
  same_dtype_device(basis, alpha, op, "basis", "alpha");
  same_dtype_device(basis, beta, op, "basis", "beta");
  TORCH_CHECK(basis.dim() == 3 && basis.is_contiguous(), op,
              ": basis must be a contiguous (B, M+1, n) tensor, got ", basis.sizes());
  const int64_t B = basis.size(0), M = basis.size(1) - 1, n = basis.size(2);
  TORCH_CHECK(index.scalar_type() == at::kLong && index.dim() == 1, op,
              ": index must be a 1-D int64 tensor, got ", index.scalar_type(), " ", index.sizes());
  TORCH_CHECK(index.device() == basis.device(), op, ": index must be on ", basis.device(), ", got ",
              index.device());
  TORCH_CHECK(w.dim() == 2 && w.size(0) == index.size(0) && w.size(1) == n, op,
              ": w must be (b, n) = (", index.size(0), ", ", n, "), got ", w.sizes());
  TORCH_CHECK(alpha.dim() == 2 && alpha.size(0) == B && alpha.size(1) >= M && alpha.is_contiguous(),
              op, ": alpha must be a contiguous (B, M) = (", B, ", ", M, ") tensor, got ", alpha.sizes());
  TORCH_CHECK(beta.dim() == 2 && beta.size(0) == B && beta.size(1) >= M && beta.is_contiguous(), op,
              ": beta must be a contiguous (B, M) = (", B, ", ", M, ") tensor, got ", beta.sizes());
  // The kernels address a sample's alpha and beta rows with one leading dimension.
  TORCH_CHECK(beta.size(1) == alpha.size(1), op, ": alpha and beta must have the same width, got ",
              alpha.sizes(), " and ", beta.sizes());
  TORCH_CHECK(step >= 0 && step < M, op, ": step must be in [0, ", M, ") for a basis with M+1 = ",
              M + 1, " rows, got ", step);
}

// rows: the per-sample rows of lanczos_step (b,) int64, each in [0, step] (the values are checked
// by the CPU kernel and asserted on the device).
inline void lanczos_rows(const at::Tensor& rows, const at::Tensor& index) {
  const char* op = "lanczos_step";
  TORCH_CHECK(rows.scalar_type() == at::kLong && rows.dim() == 1 && rows.size(0) == index.size(0), op,
              ": rows must be a 1-D int64 tensor of index's length ", index.size(0), ", got ",
              rows.scalar_type(), " ", rows.sizes());
  TORCH_CHECK(rows.device() == index.device(), op, ": rows must be on ", index.device(), ", got ",
              rows.device());
}

inline void arrowhead_tridiag(const at::Tensor& diag, const at::Tensor& border, const at::Tensor& sizes) {
  const char* op = "arrowhead_tridiag";
  floating(diag, op, "diag");
  same_dtype_device(diag, border, op, "diag", "border");
  TORCH_CHECK(diag.dim() == 2, op, ": diag must be (B, L), got ", diag.sizes());
  TORCH_CHECK(border.sizes() == diag.sizes(), op, ": border must have the shape of diag ", diag.sizes(),
              ", got ", border.sizes());
  TORCH_CHECK(sizes.scalar_type() == at::kLong && sizes.dim() == 1 && sizes.size(0) == diag.size(0), op,
              ": sizes must be a 1-D int64 tensor of length B = ", diag.size(0), ", got ", sizes.scalar_type(),
              " ", sizes.sizes());
  TORCH_CHECK(sizes.device() == diag.device(), op, ": sizes must be on ", diag.device(), ", got ",
              sizes.device());
}

inline void power_step(const at::Tensor& v, const at::Tensor& w, const at::Tensor& shift) {
  const char* op = "power_step";
  floating(v, op, "v");
  same_dtype_device(v, w, op, "v", "w");
  same_dtype_device(v, shift, op, "v", "shift");
  TORCH_CHECK(v.dim() == 2, op, ": v must be (b, n), got ", v.sizes());
  TORCH_CHECK(w.sizes() == v.sizes(), op, ": w must have the shape of v ", v.sizes(), ", got ",
              w.sizes());
  TORCH_CHECK(shift.dim() == 1 && shift.size(0) == v.size(0), op, ": shift must be (b,) = (",
              v.size(0), ",), got ", shift.sizes());
}

inline void ritz_vectors(const at::Tensor& basis, const at::Tensor& coeffs) {
  const char* op = "ritz_vectors";
  floating(basis, op, "basis");
  same_dtype_device(basis, coeffs, op, "basis", "coeffs");
  TORCH_CHECK(basis.dim() == 3, op, ": basis must be (B, M, n), got ", basis.sizes());
  TORCH_CHECK(coeffs.dim() == 3 && coeffs.size(0) == basis.size(0) && coeffs.size(1) <= basis.size(1),
              op, ": coeffs must be (B, m, k) with B = ", basis.size(0), " and m <= ", basis.size(1),
              ", got ", coeffs.sizes());
}

}  // namespace checks
}  // namespace curvext
