// Elementwise chains of the decoder with a one-pass backward on CPUs.
//
// Each function computes its forward with the very ATen ops the plain version
// uses, so outputs are bit-identical (forge's logits still equal HF's), and
// replaces autograd's chain of small backward kernels, with a full-size
// temporary at each link, by one pass over the saved inputs in fp32. Off a
// CPU, without autograd, or for dtypes other than fp32 and bf16 they are the
// plain ATen expressions.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "forge/export.h"

namespace forge::fused {

// RMSNorm as forge::nn::Norm defines it: (x * rsqrt(mean(x^2) + eps) * w),
// computed in fp32 and cast back to x's dtype. x (..., D), weight (D).
FORGE_API at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// SwiGLU's product silu(gate) * up, gate and up of one shape and dtype.
FORGE_API at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up);

// The same over one packed tensor (..., 2H), gate in the first half of the
// last dim and up in the second, as one GEMM over the concatenated gate and up
// weights gives it; its gradient comes back packed alike, with no copy to
// split or join the halves.
FORGE_API at::Tensor silu_mul_packed(const at::Tensor& gate_up);

// Rotary embedding, rotate-half form: cat(x1 cos - x2 sin, x2 cos + x1 sin)
// with x = cat(x1, x2) over the last dim. x (B, H, S, D) of any strides with
// a unit last one; cos and sin (.., D/2) fp32 and broadcast to x's rows.
// The result is computed in fp32 and rounded once to `out_dtype`: the plain
// expression's own dtype, result_type(x, cos), when not given (attention
// under bf16 autocast asks for bf16, the dtype it computes in, rather than
// an fp32 result that it would cast). The loops write it in x's layout.
FORGE_API at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                          std::optional<at::ScalarType> out_dtype = std::nullopt);

// h + branch, the residual stream's add. For an fp32 h and a bf16 branch of
// its sizes on a CPU (a block's output under bf16 autocast), one pass that
// widens branch's values as it reads them, where ATen first writes an fp32
// copy of branch: the same values, and the same gradients (the output's for
// h, cast to bf16 for branch).
FORGE_API at::Tensor residual_add(const at::Tensor& h, const at::Tensor& branch);

}  // namespace forge::fused
