// CPU kernel of curvext::parallel_threads: a build check that at::parallel_for, as compiled
// into this extension, really runs on several threads (see setup.py's -fopenmp).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cstdint>

namespace curvext {
namespace {

int64_t parallel_threads(int64_t tasks) {
  TORCH_CHECK(tasks >= 1, "parallel_threads: tasks must be >= 1, got ", tasks);
  std::atomic<uint64_t> seen{0};  // bit t set when thread t ran a chunk (first 64 threads)
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
    const int t = at::get_thread_num();
    if (t < 64) seen.fetch_or(uint64_t(1) << t);
  });
  return __builtin_popcountll(seen.load());
}

}  // namespace

TORCH_LIBRARY_IMPL(curvext, CompositeExplicitAutograd, m) { m.impl("parallel_threads", &parallel_threads); }

}  // namespace curvext
