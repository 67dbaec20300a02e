// Spreading independent items of work over ATen's intra-op threads.
//
// at::parallel_for is a header template: it runs on several threads only in
// files compiled with OpenMP, which the core's files that use the precompiled
// header are not (core/CMakeLists.txt). Code there calls this instead.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "forge/export.h"

namespace forge::cpu_parallel {

// f(i) for every i in [0, sizes.size()), with the items spread over the
// intra-op threads by size: largest first, each to the least loaded thread,
// under the caller's thread-local state (grad mode, autocast, profiler).
// Each item runs on one thread; ATen ops inside it run inline there (nested
// parallel regions are serial), so an op gives the bits it gives on one
// thread. On one thread, from inside a parallel region, or in a build without
// OpenMP, the items run in index order on the caller's thread.
FORGE_API void for_each_by_size(const std::vector<int64_t>& sizes, const std::function<void(size_t)>& f);

}  // namespace forge::cpu_parallel
