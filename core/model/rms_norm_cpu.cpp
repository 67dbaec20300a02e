// rms_norm_cpu.h. Compiled with OpenMP where the compiler is GCC (core/CMakeLists.txt), so that at::parallel_for
// runs on several threads, and without contracted multiply-adds.
#include "core/model/rms_norm_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/util/cpu_vec.h"

namespace forge::fused {

namespace {

using cpu_vec::load;
using cpu_vec::store;

// The lanes of the Vectorized<float> in ATen's sum kernel: its AVX2 one, which ATen also runs where its other
// kernels are AVX-512 ones (SumKernel.cpp registers no AVX-512 version: ATen's dispatch then takes the AVX2).
constexpr int kLanes = 8;

// ATen's utils::CeilLog2.
int64_t ceil_log2(int64_t x) {
  if (x <= 2) return 1;
  return 64 - __builtin_clzll(static_cast<uint64_t>(x - 1));
}

// Σ x[j]² over one row of n >= kLanes values, as ATen's cascade_sum adds up a contiguous row of squares
// (aten/src/ATen/native/cpu/SumKernel.cpp: vectorized_inner_sum, row_sum, multi_row_sum): the row as vectors of
// kLanes lanes, read four at a time (ILP) into a cascade of four levels of partial sums, each level taking the one
// below every 2^level_power steps; the vectors past the last group of four into the first partial sum; the four
// partial sums added in order; then a scalar sum that starts from the values past the last whole vector and adds
// the lanes in order.
template <typename T>
inline __attribute__((always_inline)) float row_squares(const T* x, int64_t n) {
  constexpr int L = kLanes, ILP = 4, LEVELS = 4;
  const int64_t nvec = n / L, groups = nvec / ILP;
  const int64_t level_power = std::max<int64_t>(4, ceil_log2(groups) / LEVELS);
  const int64_t level_step = int64_t{1} << level_power, level_mask = level_step - 1;
  float acc[LEVELS][ILP][L] = {};
  auto add = [&](float* a, int64_t v) {
    for (int l = 0; l < L; ++l) {
      const float e = load(x[v * L + l]);
      a[l] += e * e;
    }
  };
  int64_t i = 0;
  while (i + level_step <= groups) {
    for (int64_t j = 0; j < level_step; ++j, ++i)
      for (int k = 0; k < ILP; ++k) add(acc[0][k], i * ILP + k);
    for (int j = 1; j < LEVELS; ++j) {
      for (int k = 0; k < ILP; ++k)
        for (int l = 0; l < L; ++l) {
          acc[j][k][l] += acc[j - 1][k][l];
          acc[j - 1][k][l] = 0.0f;
        }
      if ((i & (level_mask << (j * level_power))) != 0) break;
    }
  }
  for (; i < groups; ++i)
    for (int k = 0; k < ILP; ++k) add(acc[0][k], i * ILP + k);
  for (int j = 1; j < LEVELS; ++j)
    for (int k = 0; k < ILP; ++k)
      for (int l = 0; l < L; ++l) acc[0][k][l] += acc[j][k][l];
  for (int64_t v = groups * ILP; v < nvec; ++v) add(acc[0][0], v);
  for (int k = 1; k < ILP; ++k)
    for (int l = 0; l < L; ++l) acc[0][0][l] += acc[0][k][l];
  float sum = 0.0f;
  for (int64_t j = nvec * L; j < n; ++j) {
    const float e = load(x[j]);
    sum += e * e;
  }
  for (int l = 0; l < L; ++l) sum += acc[0][0][l];
  return sum;
}

// Rows [r0, r1) of width n: rstd = 1 / sqrt(sum / n + eps) (ATen's div_, add and vector rsqrt, each rounded
// to fp32), then y = (x * rstd) * w.
template <typename T>
inline __attribute__((always_inline)) void rows(const T* x, const float* w, T* y, float* rstd, int64_t r0, int64_t r1,
                                                int64_t n, float eps) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * n;
    T* yr = y + r * n;
    const float mean = row_squares(xr, n) / static_cast<float>(n);
    const float s = 1.0f / std::sqrt(mean + eps);
    rstd[r] = s;
    for (int64_t j = 0; j < n; ++j) yr[j] = store<T>((load(xr[j]) * s) * w[j]);
  }
}

FORGE_CLONES void rows_f32(const float* x, const float* w, float* y, float* rstd, int64_t r0, int64_t r1, int64_t n,
                           float eps) {
  rows(x, w, y, rstd, r0, r1, n, eps);
}
FORGE_CLONES void rows_bf16(const c10::BFloat16* x, const float* w, c10::BFloat16* y, float* rstd, int64_t r0,
                            int64_t r1, int64_t n, float eps) {
  rows(x, w, y, rstd, r0, r1, n, eps);
}

// Whether ATen's sum runs the kernel row_squares follows (kLanes).
bool follows_aten() {
  static const bool yes = [] {
    const std::string cap = at::get_cpu_capability();
    return cap == "AVX512" || cap == "AVX2";
  }();
  return yes;
}

}  // namespace

at::Tensor rms_norm_exact(const at::Tensor& x, const at::Tensor& weight, double eps, at::Tensor* rstd_out) {
  if (!follows_aten() || !x.device().is_cpu() || !x.is_contiguous() || x.dim() == 0 ||
      (x.scalar_type() != at::kFloat && x.scalar_type() != at::kBFloat16))
    return {};
  const int64_t n = x.size(-1), rows_n = n ? x.numel() / n : 0;
  if (n < kLanes || weight.dim() != 1 || weight.size(0) != n || !weight.device().is_cpu() ||
      (weight.scalar_type() != at::kFloat && weight.scalar_type() != at::kBFloat16))
    return {};
  // ATen sums a lone row over several threads (a two-pass reduction) once it reaches its grain.
  if (rows_n == 1 && n >= at::internal::GRAIN_SIZE && at::get_num_threads() > 1) return {};
  RECORD_FUNCTION("forge::rms_norm", {});  // named in `forge bench --profile`
  const at::Tensor w = weight.to(at::kFloat).contiguous();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  std::vector<int64_t> rsizes = x.sizes().vec();
  rsizes.back() = 1;
  at::Tensor rstd = at::empty(rsizes, x.options().dtype(at::kFloat));
  const float e = static_cast<float>(eps);
  const float* wp = w.const_data_ptr<float>();
  float* sp = rstd.mutable_data_ptr<float>();
  at::parallel_for(0, rows_n, cpu_vec::grain_rows(n), [&](int64_t r0, int64_t r1) {
    if (x.scalar_type() == at::kFloat) {
      const float* xp = x.const_data_ptr<float>();
      float* yp = y.mutable_data_ptr<float>();
      rows_f32(xp, wp, yp, sp, r0, r1, n, e);
    } else {
      const auto* xp = x.const_data_ptr<c10::BFloat16>();
      auto* yp = y.mutable_data_ptr<c10::BFloat16>();
      rows_bf16(xp, wp, yp, sp, r0, r1, n, e);
    }
  });
  if (rstd_out) *rstd_out = rstd;
  return y;
}

}  // namespace forge::fused
