// curvext's CUDA kernels and the host side around them (csrc/cuda/<op>_kernel.cuh: the same code
// the CUDA launchers csrc/cuda/<op>.cu call) on CPU tensors, with a CPU launch in place of
// cuda::StreamLaunch, so the tests can put them in place of the real ops and compare with the
// CPU kernels.
#include <torch/extension.h>

#include "cuda_shim.h"  // after torch (its CUDA_KERNEL_ASSERT), before the kernels

#include <cstring>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>

#include "arrowhead_tridiag_kernel.cuh"
#include "curvext/checks.h"
#include "lanczos_step_kernel.cuh"
#include "power_step_kernel.cuh"
#include "tridiag_eigh_kernel.cuh"

namespace {

// launch(kernel, blocks, threads, shared_bytes, args...) as cuda::StreamLaunch has it: blocks run
// one after another, each with `threads` std::threads sharing `shared_bytes` of dynamic shared memory.
struct EmulatedLaunch {
  template <typename... Params, typename... Args>
  void operator()(void (*kernel)(Params...), unsigned blocks, unsigned threads, size_t shared_bytes,
                  Args... args) const {
    TORCH_CHECK(threads % 32 == 0 && threads >= 32 && threads <= 1024,
                "emulated launch: CUDA blocks hold whole warps, at most 1024 threads; got ", threads);
    TORCH_CHECK(shared_bytes % sizeof(double) == 0, "emulated launch: shared_bytes ", shared_bytes,
                " is not a whole number of doubles");
    TORCH_CHECK(shared_bytes <= 227 * 1024, "emulated launch: ", shared_bytes,
                " bytes of shared memory exceed the largest opt-in of current GPUs (227 KB)");
    constexpr size_t kGuard = 64;  // doubles after the launch's shared memory that must stay untouched
    const size_t words = shared_bytes / sizeof(double);
    const double nan = std::numeric_limits<double>::quiet_NaN();
    curvext_emu::block_dim = dim3{threads, 1, 1};
    curvext_emu::warp_slots.assign(threads, 0.0);
    for (unsigned b = 0; b < blocks; ++b) {
      curvext_emu::block_idx = dim3{b, 1, 1};
      curvext_emu::dynamic_shared.assign(words + kGuard, nan);  // fresh, poisoned shared memory per block
      curvext_emu::static_shared.clear();
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
            kernel(args...);
          } catch (...) {
            std::lock_guard<std::mutex> guard(error_lock);
            if (!error) error = std::current_exception();
          }
          curvext_emu::warp_barriers[t / 32]->arrive_and_drop();  // exited threads leave the barriers
          curvext_emu::block_barrier->arrive_and_drop();
        });
      }
      for (auto& th : pool) th.join();
      if (error) std::rethrow_exception(error);
      const double* guard = curvext_emu::dynamic_shared.data() + words;
      for (size_t i = 0; i < kGuard; ++i) {
        TORCH_CHECK(std::isnan(guard[i]), "emulated launch: block ", b, " wrote past its ", shared_bytes,
                    " bytes of dynamic shared memory");
      }
    }
  }
};

at::Tensor lanczos_step_emulated(at::Tensor& basis, const at::Tensor& w, at::Tensor& alpha, at::Tensor& beta,
                                 const at::Tensor& index, int64_t step, double breakdown_tol, int64_t seed,
                                 const std::optional<at::Tensor>& rows) {
  curvext::checks::lanczos_step(basis, w, alpha, beta, index, step);
  if (rows.has_value()) curvext::checks::lanczos_rows(*rows, index);
  return curvext::kernels::lanczos_step_with(basis, w, alpha, beta, index, step, breakdown_tol, seed, rows,
                                             EmulatedLaunch{});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> arrowhead_tridiag_emulated(const at::Tensor& diag,
                                                                         const at::Tensor& border,
                                                                         const at::Tensor& sizes) {
  curvext::checks::arrowhead_tridiag(diag, border, sizes);
  return curvext::kernels::arrowhead_tridiag_with(diag, border, sizes, EmulatedLaunch{});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> power_step_emulated(const at::Tensor& v,
                                                                               const at::Tensor& w,
                                                                               const at::Tensor& shift, double tol) {
  curvext::checks::power_step(v, w, shift);
  return curvext::kernels::power_step_with(v, w, shift, tol, EmulatedLaunch{});
}

std::tuple<at::Tensor, at::Tensor> tridiag_eigh_emulated(const at::Tensor& alpha, const at::Tensor& beta,
                                                        int64_t mode) {
  curvext::checks::tridiag_eigh(alpha, beta, mode);
  return curvext::kernels::tridiag_eigh_with(alpha.contiguous(), beta.contiguous(), mode, EmulatedLaunch{});
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lanczos_step", &lanczos_step_emulated, "curvext::lanczos_step's CUDA kernel, emulated on the CPU",
        py::arg("basis"), py::arg("w"), py::arg("alpha"), py::arg("beta"), py::arg("index"), py::arg("step"),
        py::arg("breakdown_tol"), py::arg("seed"), py::arg("rows") = py::none());
  m.def("arrowhead_tridiag", &arrowhead_tridiag_emulated,
        "curvext::arrowhead_tridiag's CUDA kernel and launcher, emulated on the CPU");
  m.def("power_step", &power_step_emulated, "curvext::power_step's CUDA kernel, emulated on the CPU");
  m.def("tridiag_eigh", &tridiag_eigh_emulated,
        "curvext::tridiag_eigh's CUDA kernel and launcher, emulated on the CPU");
}
