// CPU registration of curvext::ritz_vectors (see curvext/ritz_vectors_impl.h).
#include <torch/library.h>

#include "curvext/ritz_vectors_impl.h"

TORCH_LIBRARY_IMPL(curvext, CPU, m) { m.impl("ritz_vectors", &curvext::ritz_vectors_impl); }
