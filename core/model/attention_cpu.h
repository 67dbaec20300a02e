// Causal self-attention's backward on CPUs in bf16 and fp32.
//
// ATen's CPU flash-attention backward walks small blocks with a generic GEMM
// and, at the decoder's usual lengths (a few hundred positions), costs about
// four times its forward. At those lengths the score matrix of a few heads
// fits in a few MB, so the backward here recomputes it from q and k, rebuilds
// the probabilities from the forward's saved log-sum-exps, forms dS in one
// pass per row in fp32, and takes dQ, dK and dV as three more products.
//
// Where MKL's bf16 -> fp32 product is available (core/util/cpu_gemm.h: CPUs
// with AMX), each thread takes whole (batch, KV head) pairs, with the pair's
// query heads interleaved so that one product per causal block covers the
// group, skips the blocks above the diagonal, keeps the scores in fp32, reads
// k, v and the output where they lie and writes the gradients in the
// projections' layout. fp32 takes the same path on BLAS's sgemm. Where MKL's bf16
// product is off, bf16 takes ATen's batched products over a few pairs at a
// time. The forward is ATen's own flash kernel, so outputs are bit-identical
// to at::scaled_dot_product_attention.
#pragma once

#include <ATen/core/Tensor.h>

#include "forge/export.h"

namespace forge::fused {

// Whether causal_attention below takes forge's backward: a CPU, q, k and v
// all in bf16 (or cast to it by CPU autocast), or all in fp32 where BLAS's
// sgemm is found (cpu_gemm::f32_available), with autograd wanted, q (B, H, S,
// hd) and k, v (B, Hkv, S, hd) with H a multiple of Hkv and hd > 0, and
// 2 <= S <= 1024 in bf16, 512 in fp32 (beyond, the flash kernel's memory
// and its skipped masked blocks win).
FORGE_API bool causal_attention_fusable(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// softmax(q k^T / sqrt(hd) + causal mask) v with GQA (query head h reads KV
// head h / (H / Hkv)): (B, H, S, hd) in the compute dtype, q, k and v cast
// to it first as autocast would. Only for inputs causal_attention_fusable accepts;
// nn::causal_attention calls it for the plain causal case.
FORGE_API at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

}  // namespace forge::fused
