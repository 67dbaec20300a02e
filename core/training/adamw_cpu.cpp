// adamw_cpu.h. Compiled with OpenMP where the compiler is GCC (core/CMakeLists.txt), so that at::parallel_for
// runs on several threads, and without contracted multiply-adds: each operation rounds where ATen's does.
#include "core/training/adamw_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "core/util/cpu_vec.h"

namespace forge::adamw_cpu {

namespace {

// The kernel's constants, each rounded to fp32 where ATen's vector loop rounds it.
struct Consts {
  float scale, decay, coeff, beta2, c2, bc2_sqrt, eps, neg_step;
  bool lerp_small;  // |1 - beta1| < 0.5: exp_avg + w (g - exp_avg); else g - (1 - w)(g - exp_avg), as lerp does
};

Consts consts(const Hyper& h, int64_t step, float grad_scale) {
  const double s = static_cast<double>(static_cast<float>(step));  // ATen reads the count as a float tensor
  const double bc1 = 1 - std::pow(h.beta1, s), bc2 = 1 - std::pow(h.beta2, s);
  Consts c{};
  c.scale = grad_scale;
  c.decay = h.weight_decay != 0 ? static_cast<float>(1 - h.lr * h.weight_decay) : 1.0f;  // p * 1 == p, bit for bit
  const float w = static_cast<float>(1 - h.beta1);
  c.lerp_small = std::abs(w) < 0.5f;
  c.coeff = c.lerp_small ? w : w - 1.0f;
  c.beta2 = static_cast<float>(h.beta2);
  c.c2 = static_cast<float>(1 - h.beta2);
  c.bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  c.eps = static_cast<float>(h.eps);
  c.neg_step = static_cast<float>(-(h.lr / bc1));
  return c;
}

// ATen's two loops, value by value. Its vector loop (16 values at a time) rounds once in each multiply-add that
// its build contracted: the first moment's lerp (an explicit fmadd) and the second moment's sum; its scalar loop,
// which finishes a piece that is not whole vectors, contracts the lerp but rounds the second moment's product and
// sum apart. The selects and the multiplies by 1 stand for the kernel's branches on its options.
template <bool kVector>
inline void update_one(float& p, float g, float& m, float& v, Consts c) {
  g = g * c.scale;
  float pi = p * c.decay;
  const float mn = std::fma(c.coeff, g - m, c.lerp_small ? m : g);
  float vn;
  if constexpr (kVector) {
    vn = std::fma(c.c2 * g, g, v * c.beta2);
  } else {
    vn = std::fma(v, c.beta2, c.c2 * g * g);
  }
  const float denom = std::sqrt(vn) / c.bc2_sqrt + c.eps;
  pi = pi + c.neg_step * mn / denom;
  m = mn;
  v = vn;
  p = pi;
}

// One of ATen's pieces [begin, end): whole vectors, then the scalar tail.
template <bool kBf16>
FORGE_CLONES void update_piece(float* p, const float* g, float* m, float* v, c10::BFloat16* out, int64_t n,
                               Consts c) {
  const int64_t body = n - n % 16;
  for (int64_t i = 0; i < body; ++i) {
    update_one<true>(p[i], g[i], m[i], v[i], c);
    if constexpr (kBf16) out[i] = cpu_vec::store<c10::BFloat16>(p[i]);
  }
  const int64_t eights = body + (n - body) / 8 * 8;
  for (int64_t i = body; i < eights; ++i) {
    update_one<true>(p[i], g[i], m[i], v[i], c);
    if constexpr (kBf16) out[i] = cpu_vec::store<c10::BFloat16>(p[i]);
  }
  for (int64_t i = eights; i < n; ++i) {
    update_one<false>(p[i], g[i], m[i], v[i], c);
    if constexpr (kBf16) out[i] = cpu_vec::store<c10::BFloat16>(p[i]);
  }
}

}  // namespace

bool available() {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("fma");
  return yes;
#else
  return false;
#endif
}

void update(const Buffers& b, const Hyper& h, int64_t step, float grad_scale) {
  const Consts c = consts(h, step, grad_scale);
  auto piece = [&](int64_t begin, int64_t end) {
    if (b.bf16)
      update_piece<true>(b.param + begin, b.grad + begin, b.exp_avg + begin, b.exp_avg_sq + begin, b.bf16 + begin,
                         end - begin, c);
    else
      update_piece<false>(b.param + begin, b.grad + begin, b.exp_avg + begin, b.exp_avg_sq + begin, nullptr,
                          end - begin, c);
  };
  // ATen's pieces (FusedAdamKernel.cpp): one per thread of L values, L = ceil(n / threads) rounded down to whole
  // cache lines (16 values), then what is left as one piece. Where a piece ends decides which values take the
  // scalar tail; which thread runs a piece decides nothing.
  const int64_t threads = at::get_num_threads();
  const int64_t L = (b.n + threads - 1) / threads / 16 * 16;
  const int64_t whole = std::min(b.n, L * threads);
  const int64_t pieces = (L > 0 ? (whole + L - 1) / L : 0) + (whole < b.n ? 1 : 0);
  at::parallel_for(0, pieces, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t begin = L > 0 ? std::min(whole, i * L) : 0;
      piece(begin, L > 0 && begin < whole ? std::min(whole, begin + L) : b.n);
    }
  });
}

}  // namespace forge::adamw_cpu
