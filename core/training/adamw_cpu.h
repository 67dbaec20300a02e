// AdamW's update of fp32 parameters on a CPU in one pass, as
// at::_fused_adamw_ computes it, that can also scale the gradient first (the
// clip's factor, which then costs no pass of its own) and write the new
// weights rounded to bf16 as well (the copy that bf16 compute reads).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>

#include "forge/export.h"

namespace forge::adamw_cpu {

struct Hyper {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, weight_decay = 0.0, eps = 1e-8;
};

// One parameter's contiguous fp32 buffers, n values each; bf16, when given,
// receives the updated parameter rounded to bf16 (round to nearest even, as a
// cast gives it).
struct Buffers {
  float* param = nullptr;
  const float* grad = nullptr;
  float* exp_avg = nullptr;
  float* exp_avg_sq = nullptr;
  c10::BFloat16* bf16 = nullptr;
  int64_t n = 0;
};

// Whether this CPU runs the pass vectorised (AVX-512 with its fused
// multiply-add) and ATen runs its AVX-512 kernels, the ones whose rounding the
// pass follows. Elsewhere callers keep ATen's kernel.
FORGE_API bool available();

// Updates `b` for optimizer step `step` (1 for the first update), with every
// gradient value multiplied by `grad_scale` first (exactly as an fp32
// gradient.mul_(grad_scale) would round it; 1 changes nothing). The gradient
// itself is left as it was. The math, constant by constant, is ATen's fp32
// AdamW kernel, so a scale of 1 gives its bits; runs on ATen's intra-op
// threads.
FORGE_API void update(const Buffers& b, const Hyper& h, int64_t step, float grad_scale);

}  // namespace forge::adamw_cpu
