// What the kernels take from CUDA beyond plain C++, in one place: the CUDA runtime header and the
// shared-memory declarations. tests/cuda_emulation/cuda_shim.h defines CURVEXT_EMULATE_CUDA and
// provides the same names on the CPU, so the tests run these kernels' own code without a GPU.
#pragma once

#ifndef CURVEXT_EMULATE_CUDA
#include <cuda_runtime.h>
// A block-wide array in shared memory, and the block's dynamic shared memory (size given at launch).
#define CURVEXT_SHARED_ARRAY(T, name, n) __shared__ T name[n]
#define CURVEXT_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif
