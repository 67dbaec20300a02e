// RMSNorm's forward on a CPU in one pass, with the bits of ATen's ops
//   xf = x.float(); rstd = rsqrt(xf.pow(2).mean(-1, keepdim) + eps);
//   y = (xf * rstd * weight.float()).to(x.dtype)
// which forge's RMSNorm runs (for the fp32 residual stream, HF transformers'
// LlamaRMSNorm, so forge's logits equal HF's).
//
// Those ops make four passes over fp32 activations (square, sum, two
// products; a bf16 input adds a widening and a cast); at the small recipe's
// (8, 256, 512) they take about 1 ms a norm. This pass reads each row once,
// sums its squares as ATen's vectorised inner sum does (its AVX2 kernel's 8
// lanes, which ATen runs on AVX-512 CPUs too, in ATen's cascade of partial
// sums), divides by the width, and writes the row's products rounded as
// ATen's two multiplies round them.
#pragma once

#include <ATen/core/Tensor.h>

#include "forge/export.h"

namespace forge::fused {

// y as above, and the fp32 rstd (x's sizes, last one 1) in *rstd_out where
// given, with no autograd graph (forge's RMSNorm gives them one); or an
// undefined y where the pass does not apply and the caller runs ATen's ops:
// ATen running neither AVX2 nor AVX-512 kernels, x not a contiguous fp32 or
// bf16 CPU tensor, rows narrower than one vector, a weight that is not
// (width) fp32 or bf16, or one row so long that ATen would split it over
// threads.
FORGE_API at::Tensor rms_norm_exact(const at::Tensor& x, const at::Tensor& weight, double eps, at::Tensor* rstd_out);

}  // namespace forge::fused
