// CPU launches of curvext's CUDA kernels through cuda_shim.h, as torch ops on CPU tensors with
// the same signatures and argument handling as the CUDA launchers (csrc/cuda/<op>.cu), so the
// tests can put them in place of the real ops and compare with the CPU kernels.
#include "cuda_shim.h"  // first: the kernels see the emulated CUDA names

#include <torch/extension.h>

#include <exception>
#include <mutex>
#include <thread>

#include "curvext/checks.h"
#include "lanczos_step_kernel.cuh"
#include "power_step_kernel.cuh"
#include "tridiag_eigh_kernel.cuh"

namespace {

// Runs kernel(block) for blocks 0..grid-1, one after another, each with `threads` std::threads.
template <typename Kernel>
void launch(unsigned grid, unsigned threads, size_t shared_bytes, Kernel kernel) {
  TORCH_CHECK(threads % 32 == 0, "emulated launch: whole warps only");
  curvext_emu::block_dim = dim3{threads, 1, 1};
  curvext_emu::dynamic_shared.assign(shared_bytes / sizeof(double) + 1, 0.0);
  curvext_emu::warp_slots.assign(threads, 0.0);
  for (unsigned b = 0; b < grid; ++b) {
    curvext_emu::block_idx = dim3{b, 1, 1};
    curvext_emu::block_barrier = std::make_unique<std::barrier<>>(threads);
    curvext_emu::warp_barriers.clear();
    for (unsigned w = 0; w < threads / 32; ++w)
      curvext_emu::warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
    std::exception_ptr error;
    std::mutex error_lock;
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        curvext_emu::thread_idx = dim3{t, 1, 1};
        try {
          kernel();
        } catch (...) {
          std::lock_guard<std::mutex> guard(error_lock);
          if (!error) error = std::current_exception();
        }
        curvext_emu::warp_barriers[t / 32]->arrive_and_drop();
        curvext_emu::block_barrier->arrive_and_drop();
      });
    }
    for (auto& th : pool) th.join();
    if (error) std::rethrow_exception(error);
  }
}

at::Tensor lanczos_step_emulated(at::Tensor& basis, const at::Tensor& w_in, at::Tensor& alpha, at::Tensor& beta,
                                 const at::Tensor& index, int64_t step, double breakdown_tol, int64_t seed) {
  curvext::checks::lanczos_step(basis, w_in, alpha, beta, index, step);
  const at::Tensor w = w_in.contiguous();
  const at::Tensor idx = index.contiguous();
  const int64_t b = idx.size(0);
  at::Tensor flags = at::zeros({b}, idx.options().dtype(at::kInt));
  if (b == 0) return flags;
  const size_t shared_bytes = (33 + step + 1) * sizeof(double);
  AT_DISPATCH_FLOATING_TYPES(basis.scalar_type(), "lanczos_step_emulated", [&] {
    launch((unsigned)b, curvext::kernels::kThreads, shared_bytes, [&] {
      curvext::kernels::lanczos_step_kernel<scalar_t>(
          basis.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), alpha.data_ptr<scalar_t>(),
          beta.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), flags.data_ptr<int>(), basis.size(0),
          basis.size(1), basis.size(2), alpha.size(1), (int)step, scalar_t(breakdown_tol), (uint64_t)seed);
    });
  });
  return flags;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> power_step_emulated(const at::Tensor& v_in,
                                                                               const at::Tensor& w_in,
                                                                               const at::Tensor& shift_in,
                                                                               double tol) {
  curvext::checks::power_step(v_in, w_in, shift_in);
  const at::Tensor v = v_in.contiguous(), w = w_in.contiguous(), shift = shift_in.contiguous();
  const int64_t b = v.size(0), n = v.size(1);
  at::Tensor out = at::empty_like(v);
  at::Tensor theta = at::empty({b}, v.options());
  at::Tensor residual = at::empty({b}, v.options());
  at::Tensor converged = at::empty({b}, v.options().dtype(at::kBool));
  if (b == 0) return {out, theta, residual, converged};
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "power_step_emulated", [&] {
    launch((unsigned)b, curvext::kernels::kThreads, 0, [&] {
      curvext::kernels::power_step_kernel<scalar_t>(
          v.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), shift.data_ptr<scalar_t>(), n, tol,
          out.data_ptr<scalar_t>(), theta.data_ptr<scalar_t>(), residual.data_ptr<scalar_t>(),
          converged.data_ptr<bool>());
    });
  });
  return {out, theta, residual, converged};
}

std::tuple<at::Tensor, at::Tensor> tridiag_eigh_emulated(const at::Tensor& alpha, const at::Tensor& beta,
                                                        int64_t mode) {
  curvext::checks::tridiag_eigh(alpha, beta, mode);
  auto emulated_launch = [](auto kernel, unsigned blocks, unsigned threads, auto... args) {
    launch(blocks, threads, 0, [&] { kernel(args...); });
  };
  return curvext::kernels::tridiag_eigh_with(alpha.contiguous(), beta.contiguous(), mode, emulated_launch);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lanczos_step", &lanczos_step_emulated, "curvext::lanczos_step's CUDA kernel, emulated on the CPU");
  m.def("power_step", &power_step_emulated, "curvext::power_step's CUDA kernel, emulated on the CPU");
  m.def("tridiag_eigh", &tridiag_eigh_emulated, "curvext::tridiag_eigh's CUDA kernel and launcher, emulated on the CPU");
}
