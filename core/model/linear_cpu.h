// Linear layers under CPU bf16 autocast with fp32 weight gradients.
//
// Under autocast, at::linear casts the weight to bf16, multiplies in bf16 and
// hands autograd a bf16 weight gradient, which its cast's backward turns into
// fp32 for the master weight: one more rounding, one more pass, and oneDNN's
// transposed product dY^T X, its slowest layout. Here the forward is the same
// bf16 product, and the backward takes the weight gradient from MKL's
// bf16 -> fp32 GEMM (core/util/cpu_gemm.h), accumulated in fp32 and written
// straight into the fp32 gradient that autograd hands to the optimizer. Several
// linears reading one input (q/k/v, gate/up) run as one product over their
// concatenated weights.
#pragma once

#include <ATen/core/Tensor.h>

#include <initializer_list>

#include "forge/export.h"

namespace torch::nn {
class LinearImpl;
}

namespace forge::fused {

// Whether linear_bf16 takes these linears for x: a CPU under bf16 autocast,
// autograd wanted (x or a weight requires grad, grad mode on), fp32 weights
// (and biases), x fp32 or bf16, MKL's product available.
FORGE_API bool linear_bf16_applies(const at::Tensor& x, std::initializer_list<const torch::nn::LinearImpl*> linears);

// x (..., in) through each linear, outputs concatenated on the last dim in
// their order: (..., sum of out_features) in bf16, equal to at::linear under
// autocast over the concatenated weights. Gradients: x's in x's dtype, each
// weight's and bias's in fp32.
FORGE_API at::Tensor linear_bf16(const at::Tensor& x, std::initializer_list<const torch::nn::LinearImpl*> linears);

}  // namespace forge::fused
