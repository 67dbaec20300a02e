// parallel.h. Compiled with OpenMP where the compiler is GCC (core/CMakeLists.txt), so that at::parallel_for
// runs on several threads.
#include "core/util/parallel.h"

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <numeric>

namespace forge::cpu_parallel {

void for_each_by_size(const std::vector<int64_t>& sizes, const std::function<void(size_t)>& f) {
#ifdef _OPENMP
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), static_cast<int64_t>(sizes.size()));
#else
  const int64_t threads = 1;  // at::parallel_for would run every bin in turn on this thread
#endif
  if (threads < 2 || at::in_parallel_region()) {
    for (size_t i = 0; i < sizes.size(); ++i) f(i);
    return;
  }
  std::vector<size_t> order(sizes.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return sizes[a] > sizes[b]; });
  std::vector<std::vector<size_t>> bins(static_cast<size_t>(threads));
  std::vector<int64_t> load(static_cast<size_t>(threads), 0);
  for (size_t i : order) {
    const auto least = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    bins[least].push_back(i);
    load[least] += sizes[i];
  }
  // OpenMP's threads start with their own thread-local state (grad mode on, no autocast, no profiler): each
  // bin runs under the caller's, as at::launch does for its tasks.
  const at::ThreadLocalState caller;
  at::parallel_for(0, threads, 1, [&](int64_t b0, int64_t b1) {
    at::ThreadLocalStateGuard guard(caller);
    for (int64_t b = b0; b < b1; ++b)
      for (size_t i : bins[static_cast<size_t>(b)]) f(i);
  });
}

}  // namespace forge::cpu_parallel
