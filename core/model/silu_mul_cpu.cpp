// silu_mul_cpu.h. Compiled with OpenMP where the compiler is GCC (core/CMakeLists.txt), so that at::parallel_for
// runs on several threads, and without contracted multiply-adds.
#include "core/model/silu_mul_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/record_function.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "core/util/cpu_vec.h"
#include "core/util/torch_symbol.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define FORGE_SILU_MUL_AVX512 1
#endif

namespace forge::fused {

namespace {

using cpu_vec::load;
using cpu_vec::store;

#ifdef FORGE_SILU_MUL_AVX512
using ExpFn = __m512 (*)(__m512);

// Sleef's 16-lane fp32 exp (1.0 ulp), which libtorch exports and ATen's AVX-512 Vectorized<float>::exp calls.
ExpFn sleef_exp() {
  static const ExpFn fn = reinterpret_cast<ExpFn>(util::torch_symbol("Sleef_expf16_u10"));
  return fn;
}

#define FORGE_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))

// GCC 12's AVX-512 intrinsics start some results from _mm512_undefined_*() and then warn, where they are inlined,
// that the value may be used uninitialised; every lane is written before it is read.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// fp32 -> bf16 bits, round to nearest even, NaN as ATen's AVX-512 conversion writes it (0xffff).
FORGE_AVX512 inline __m256i to_bf16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)), u), 16);
  r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), _mm512_set1_epi32(0xffff), r);
  return _mm512_cvtepi32_epi16(r);
}
FORGE_AVX512 inline __m512 from_bf16(__m256i b) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
}
// ATen's vector silu: x / (1 + exp(-x)).
FORGE_AVX512 inline __m512 silu16(__m512 x, ExpFn exp) {
  const __m512 e = exp(_mm512_xor_ps(x, _mm512_set1_ps(-0.0f)));
  return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

// One run of n values, the first n_vec by ATen's vector loop (a multiple of 16), the rest by its scalar loop.
FORGE_AVX512 void run_bf16(const c10::BFloat16* g, const c10::BFloat16* u, c10::BFloat16* y, int64_t n, int64_t n_vec,
                           ExpFn exp) {
  int64_t i = 0;
  for (; i < n_vec; i += 16) {
    const __m512 x = from_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + i)));
    const __m512 s = from_bf16(to_bf16(silu16(x, exp)));  // silu's bf16 output, read back by the multiply
    const __m512 b = from_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(u + i)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), to_bf16(_mm512_mul_ps(s, b)));
  }
  for (; i < n; ++i) {
    const float x = load(g[i]);
    const float s = load(store<c10::BFloat16>(x / (1.0f + std::exp(-x))));
    y[i] = store<c10::BFloat16>(s * load(u[i]));
  }
}

FORGE_AVX512 void run_f32(const float* g, const float* u, float* y, int64_t n, int64_t n_vec, ExpFn exp) {
  int64_t i = 0;
  for (; i < n_vec; i += 16)
    _mm512_storeu_ps(y + i, _mm512_mul_ps(silu16(_mm512_loadu_ps(g + i), exp), _mm512_loadu_ps(u + i)));
  for (; i < n; ++i) y[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

// Rows of h values: the row stride of t as a (rows, h) matrix with a unit inner stride, or -1 when it is not one.
int64_t row_stride(const at::Tensor& t) {
  const int64_t d = t.dim(), h = t.size(-1);
  if (t.stride(-1) != 1 && h > 1) return -1;
  int64_t rs = -1, expect = -1;
  for (int64_t k = d - 2; k >= 0; --k) {
    if (t.size(k) == 1) continue;
    if (rs < 0) {
      rs = t.stride(k);
    } else if (t.stride(k) != expect) {
      return -1;
    }
    expect = t.stride(k) * t.size(k);
  }
  if (rs < 0) return h;  // one row
  return rs >= h ? rs : -1;
}

// ATen's runs over the output's flat index: TensorIterator splits [0, numel) over its threads (at::parallel_for,
// grain 32768), and within a thread's range each run of contiguous values goes through one vectorised loop: the
// whole range when gate and output are both contiguous (the iterator flattens them), else row by row.
struct Run {
  int64_t begin, length;
};

std::vector<Run> aten_runs(int64_t numel, int64_t h, bool flat) {
  constexpr int64_t kGrain = 32768;  // at::internal::GRAIN_SIZE
  std::vector<std::pair<int64_t, int64_t>> ranges;
  const int64_t threads = at::get_num_threads();
  if (numel <= kGrain || threads == 1 || at::in_parallel_region()) {
    ranges.emplace_back(0, numel);
  } else {
    const int64_t tasks = std::min(threads, (numel + kGrain - 1) / kGrain);
    const int64_t chunk = (numel + tasks - 1) / tasks;
    for (int64_t b = 0; b < numel; b += chunk) ranges.emplace_back(b, std::min(numel, b + chunk));
  }
  std::vector<Run> runs;
  for (const auto& [b, e] : ranges) {
    if (flat) {
      runs.push_back({b, e - b});
      continue;
    }
    for (int64_t s = b; s < e;) {
      const int64_t end = std::min(e, (s / h + 1) * h);  // to the end of this row, or of the range
      runs.push_back({s, end - s});
      s = end;
    }
  }
  return runs;
}

}  // namespace

bool silu_mul_exact_available() {
#ifdef FORGE_SILU_MUL_AVX512
  static const bool ready = at::get_cpu_capability() == "AVX512" && sleef_exp() != nullptr;
  return ready;
#else
  return false;
#endif
}

at::Tensor silu_mul_exact(const at::Tensor& gate, const at::Tensor& up) {
#ifdef FORGE_SILU_MUL_AVX512
  const auto dt = gate.scalar_type();
  if (!gate.device().is_cpu() || !up.device().is_cpu() || up.scalar_type() != dt ||
      (dt != at::kFloat && dt != at::kBFloat16) || !gate.sizes().equals(up.sizes()) || gate.dim() == 0 ||
      gate.numel() == 0)
    return {};
  if (!silu_mul_exact_available()) return {};
  const int64_t h = gate.size(-1), gs = row_stride(gate), us = row_stride(up);
  if (gs < 0 || us < 0 || (gs == h) != (us == h)) return {};  // both flat, or both in rows
  RECORD_FUNCTION("forge::silu_mul", {});  // named in `forge bench --profile`
  const int64_t numel = gate.numel();
  // 2 vectors a step: 64 bf16 values (Vectorized<BFloat16> holds 32), 32 fp32 ones.
  const int64_t step = dt == at::kBFloat16 ? 64 : 32;
  const std::vector<Run> runs = aten_runs(numel, h, gs == h);
  at::Tensor y = at::empty(gate.sizes(), gate.options().memory_format(at::MemoryFormat::Contiguous));
  const ExpFn exp = sleef_exp();
  const char* gp = static_cast<const char*>(gate.const_data_ptr());
  const char* upp = static_cast<const char*>(up.const_data_ptr());
  char* yp = static_cast<char*>(y.mutable_data_ptr());
  const int64_t es = gate.element_size();
  // A run crosses rows only where both are flat, and then their rows are one line of values.
  auto piece = [&](int64_t at, int64_t n, int64_t n_vec) {
    const int64_t r = at / h, c = at % h;
    const void* g = gp + (r * gs + c) * es;
    const void* u = upp + (r * us + c) * es;
    void* o = yp + at * es;
    if (dt == at::kBFloat16)
      run_bf16(static_cast<const c10::BFloat16*>(g), static_cast<const c10::BFloat16*>(u),
               static_cast<c10::BFloat16*>(o), n, n_vec, exp);
    else
      run_f32(static_cast<const float*>(g), static_cast<const float*>(u), static_cast<float*>(o), n, n_vec, exp);
  };
  const int64_t per_run = std::max<int64_t>(1, numel / static_cast<int64_t>(runs.size()));
  at::parallel_for(0, static_cast<int64_t>(runs.size()), std::max<int64_t>(1, 32768 / per_run),
                   [&](int64_t r0, int64_t r1) {
                     for (int64_t k = r0; k < r1; ++k) piece(runs[k].begin, runs[k].length, runs[k].length / step * step);
                   });
  return y;
#else
  return {};
#endif
}

}  // namespace forge::fused
