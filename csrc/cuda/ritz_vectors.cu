// CUDA registration of curvext::ritz_vectors: the batched GEMM runs on cuBLAS
// (see curvext/ritz_vectors_impl.h, shared with the CPU registration).
#include <torch/library.h>

#include "curvext/ritz_vectors_impl.h"

TORCH_LIBRARY_IMPL(curvext, CUDA, m) { m.impl("ritz_vectors", &curvext::ritz_vectors_impl); }
