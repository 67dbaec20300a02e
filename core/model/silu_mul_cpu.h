// SwiGLU's silu(gate) * up on a CPU in one pass, with the bits of ATen's
// at::silu(gate) * up.
//
// ATen's pair of kernels reads gate, writes silu(gate), reads it back with up
// and writes the product: two passes and a full-size temporary. This pass
// reads gate and up once and writes the product. To keep the bits (forge's
// logits equal HF transformers'), it computes each value as ATen's silu
// kernel does: Sleef's exp, the one ATen's AVX-512 vector loop calls, for the
// values that loop covers, and the C library's exp for those its scalar tail
// finishes. Which is which follows from how ATen walks the tensor (runs of
// contiguous values split over its threads, 64 bf16 or 32 fp32 values a
// vector step), and the pass walks it alike. The product then rounds once, as
// ATen's multiply does. NaN payloads may differ; every other value is equal.
#pragma once

#include <ATen/core/Tensor.h>

#include "forge/export.h"

namespace forge::fused {

// silu(gate) * up, contiguous, of gate's sizes; or an undefined tensor where
// the pass does not apply and the caller runs ATen's ops: a CPU without
// ATen's AVX-512 kernels or without Sleef's exp in libtorch, dtypes other
// than fp32 and bf16 (one for both), different sizes, or a tensor that is not
// rows of unit stride (as a view of a wider packed gate|up tensor is).
FORGE_API at::Tensor silu_mul_exact(const at::Tensor& gate, const at::Tensor& up);

// Whether this machine runs the pass at all (ATen's AVX-512 kernels, and
// Sleef's exp found in libtorch).
FORGE_API bool silu_mul_exact_available();

}  // namespace forge::fused
