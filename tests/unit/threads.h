// ATen's intra-op thread count for the length of a scope. The suite runs on
// one OpenMP thread (tests/CMakeLists.txt); tests of how work splits over
// threads set more.
#pragma once

#include <ATen/Parallel.h>

namespace forge::test {

struct Threads {
  int before = at::get_num_threads();
  explicit Threads(int n) { at::set_num_threads(n); }
  ~Threads() { at::set_num_threads(before); }
  Threads(const Threads&) = delete;
  Threads& operator=(const Threads&) = delete;
};

}  // namespace forge::test
