// Building blocks for forge's hand-written CPU loops (core/model/fused_cpu.cpp,
// core/model/attention_cpu.cpp, the loss's softmax gradient): loads and stores
// that convert bf16 as c10::BFloat16 does, an exp the auto-vectoriser takes,
// and the checks and task sizes the loops' autograd functions share. A file
// whose loops use the helpers below builds with -fno-trapping-math
// (core/CMakeLists.txt): without it GCC keeps their selects as branches and
// vectorises nothing.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <bit>
#include <cstdint>

namespace forge::cpu_vec {

// A loop function marked FORGE_CLONES is written for the auto-vectoriser (no
// calls, no branches in its inner loops). GCC builds it for x86-64-v4, AVX2
// and the baseline and picks one at load time; other compilers (the sanitizer
// build's clang) build the baseline only. x86-64-v4 (AVX-512 F, BW, DQ, VL,
// CD: every AVX-512 server CPU since Skylake) rather than plain "avx512f":
// without BW there are no 512-bit 16-bit-integer operations, so a bf16 loop
// falls back to 256-bit vectors.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FORGE_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define FORGE_CLONES
#endif

// Rows of `row_len` values per parallel task: enough that a thread's share is worth starting.
inline int64_t grain_rows(int64_t row_len) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(row_len, 1)); }

// Whether autograd will ask for a backward through an op over `inputs`.
inline bool autograd_wanted(at::ArrayRef<at::Tensor> inputs) {
  if (!at::GradMode::is_enabled()) return false;
  for (const auto& t : inputs)
    if (t.requires_grad()) return true;
  return false;
}

// bf16 <-> fp32 as c10::BFloat16 converts (round to nearest even, NaN kept).
inline float load(float v) { return v; }
inline float load(c10::BFloat16 v) { return std::bit_cast<float>(static_cast<uint32_t>(v.x) << 16); }
template <typename T>
inline T store(float f);
template <>
inline float store<float>(float f) {
  return f;
}
template <>
inline c10::BFloat16 store<c10::BFloat16>(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint16_t rounded = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  return c10::BFloat16(f != f ? uint16_t{0x7FC0} : rounded, c10::BFloat16::from_bits());
}

// e^x to about 1 ulp (Cephes' expf polynomial), branch-free so that it
// vectorises. Inputs are clamped to [-87, 88] (e^-87 = 1.6e-38 stands for 0,
// e^88 = 1.7e38 for inf); NaN stays NaN, and is kept away from the
// float-to-int conversion, where it would be undefined behaviour.
inline float exp_approx(float x) {
  const bool nan = x != x;
  float c = x < -87.0f ? -87.0f : x;  // ternaries, not std::min/max: those select a reference, a branch
  c = c > 88.0f ? 88.0f : c;
  c = nan ? 0.0f : c;
  // n = round(c / ln 2) by the 1.5 * 2^23 trick (no call to a rounding function, which stops the vectoriser).
  const float n = (c * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  c = c - n * 0.693359375f + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * c + 1.3981999507e-3f;
  y = y * c + 8.3334519073e-3f;
  y = y * c + 4.1665795894e-2f;
  y = y * c + 1.6666665459e-1f;
  y = y * c + 5.0000001201e-1f;
  y = y * c * c + c + 1.0f;
  y = y * std::bit_cast<float>(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
  return nan ? x : y;
}

}  // namespace forge::cpu_vec
