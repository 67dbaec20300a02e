// row_max.h. Compiled with OpenMP where the compiler is GCC (core/CMakeLists.txt), so that at::parallel_for
// runs on several threads.
#include "core/util/row_max.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <fmt/format.h>

#include "core/util/cpu_vec.h"
#include "core/util/tensor.h"
#include "forge/error.h"

#include <cstdint>
#include <limits>

namespace forge::cpu_rows {

namespace {

// A bf16 value's bits as a key whose unsigned order is the order of the values: negative values (sign bit set)
// have all bits flipped, so that the larger magnitude sorts lower; non-negative ones get the sign bit set, above
// every negative. -0 sorts just below +0. NaN is found apart, by the largest magnitude's bits.
inline uint16_t order_key(uint16_t u) { return (u & 0x8000u) ? static_cast<uint16_t>(~u) : static_cast<uint16_t>(u | 0x8000u); }
inline uint16_t from_key(uint16_t k) { return (k & 0x8000u) ? static_cast<uint16_t>(k & 0x7FFFu) : static_cast<uint16_t>(~k); }

// Two running integer maxima per lane, in 32 lanes (one 512-bit vector of 16-bit values): of the keys, and of
// the magnitudes' bits (above 0x7F80, inf's, only a NaN's).
FORGE_CLONES float max_bf16(const c10::BFloat16* x, int64_t n) {
  constexpr int W = 32;
  uint16_t key[W] = {}, mag[W] = {};
  int64_t j = 0;
  for (; j + W <= n; j += W)
    for (int k = 0; k < W; ++k) {
      const uint16_t u = x[j + k].x, o = order_key(u), a = u & 0x7FFFu;
      key[k] = o > key[k] ? o : key[k];
      mag[k] = a > mag[k] ? a : mag[k];
    }
  uint16_t K = 0, A = 0;
  for (; j < n; ++j) {
    const uint16_t u = x[j].x, o = order_key(u), a = u & 0x7FFFu;
    K = o > K ? o : K;
    A = a > A ? a : A;
  }
  for (int k = 0; k < W; ++k) {
    K = key[k] > K ? key[k] : K;
    A = mag[k] > A ? mag[k] : A;
  }
  if (A > 0x7F80u) return std::numeric_limits<float>::quiet_NaN();
  if (n == 0) return -std::numeric_limits<float>::infinity();
  return cpu_vec::load(c10::BFloat16(from_key(K), c10::BFloat16::from_bits()));
}

}  // namespace

at::Tensor row_max(const at::Tensor& x) {
  if (x.dim() != 2 || !x.device().is_cpu() || !x.is_contiguous())
    throw InvalidArgument(fmt::format("row_max: wants a contiguous 2-d CPU tensor, got {} on {}", util::shape(x),
                                      x.device().str()));
  if (x.scalar_type() != at::kBFloat16)
    return x.size(1) ? x.amax(1).to(at::kFloat)
                     : at::full({x.size(0)}, -std::numeric_limits<float>::infinity(), x.options().dtype(at::kFloat));
  const int64_t R = x.size(0), n = x.size(1);
  at::Tensor out = at::empty({R}, x.options().dtype(at::kFloat));
  const c10::BFloat16* p = x.const_data_ptr<c10::BFloat16>();
  float* m = out.mutable_data_ptr<float>();
  at::parallel_for(0, R, cpu_vec::grain_rows(n), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) m[r] = max_bf16(p + r * n, n);
  });
  return out;
}

}  // namespace forge::cpu_rows
