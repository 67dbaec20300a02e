// adamw_cpu.h. Compiled with OpenMP where the compiler is GCC (core/CMakeLists.txt), so that at::parallel_for
// runs on several threads, and without contracted multiply-adds: each operation rounds where ATen's does.
#include "core/training/adamw_cpu.h"

#include <ATen/Parallel.h>
#include <ATen/Version.h>

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

// Values [begin, end) of ATen's vector loop (whole vectors of 16).
template <bool kBf16>
FORGE_CLONES void update_body(float* p, const float* g, float* m, float* v, c10::BFloat16* out, int64_t n, Consts c) {
  for (int64_t i = 0; i < n; ++i) {
    update_one<true>(p[i], g[i], m[i], v[i], c);
    if constexpr (kBf16) out[i] = cpu_vec::store<c10::BFloat16>(p[i]);
  }
}

// The last n % 16 values, ATen's scalar loop. GCC vectorised that loop itself, 8 values a step, with the vector
// loop's rounding; what is left after those rounds as the scalar code does.
template <bool kBf16>
void update_tail(float* p, const float* g, float* m, float* v, c10::BFloat16* out, int64_t n, Consts c) {
  for (int64_t i = 0; i < n; ++i) {
    if (i < n / 8 * 8)
      update_one<true>(p[i], g[i], m[i], v[i], c);
    else
      update_one<false>(p[i], g[i], m[i], v[i], c);
    if constexpr (kBf16) out[i] = cpu_vec::store<c10::BFloat16>(p[i]);
  }
}

}  // namespace

bool available() {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
  // ATen's AVX-512 kernel is the one whose rounding this pass follows (ATEN_CPU_CAPABILITY may pick another).
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("fma") && at::get_cpu_capability() == "AVX512";
  return yes;
#else
  return false;
#endif
}

void update(const Buffers& b, const Hyper& h, int64_t step, float grad_scale) {
  const Consts c = consts(h, step, grad_scale);
  // ATen splits a parameter over its threads in pieces of whole cache lines (16 values) save the last, so its vector
  // loop covers every value but the last n % 16, whatever the thread count. The body goes over the threads here in
  // blocks of 16 Ki values.
  const int64_t body = b.n - b.n % 16;
  c10::BFloat16* out = b.bf16;
  at::parallel_for(0, body, 16384, [&](int64_t begin, int64_t end) {
    if (out)
      update_body<true>(b.param + begin, b.grad + begin, b.exp_avg + begin, b.exp_avg_sq + begin, out + begin,
                        end - begin, c);
    else
      update_body<false>(b.param + begin, b.grad + begin, b.exp_avg + begin, b.exp_avg_sq + begin, nullptr,
                         end - begin, c);
  });
  if (out)
    update_tail<true>(b.param + body, b.grad + body, b.exp_avg + body, b.exp_avg_sq + body, out + body, b.n - body, c);
  else
    update_tail<false>(b.param + body, b.grad + body, b.exp_avg + body, b.exp_avg_sq + body, nullptr, b.n - body, c);
}

}  // namespace forge::adamw_cpu
