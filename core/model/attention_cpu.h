// Causal self-attention's backward on CPUs in bf16, by batched GEMMs.
//
// ATen's CPU flash-attention backward walks small blocks with a generic GEMM
// and, at the decoder's usual lengths (a few hundred positions), costs about
// four times its forward. At those lengths the whole score matrix of a few
// heads fits in a few MB, so the backward here recomputes it with one batched
// bf16 GEMM (AMX where the CPU has it), rebuilds the probabilities from the
// forward's saved log-sum-exps and forms dS in one pass per row in fp32, then
// takes dQ, dK and dV as three more batched GEMMs. The forward is ATen's own
// flash kernel, so outputs are bit-identical to at::scaled_dot_product_attention.
#pragma once

#include <ATen/core/Tensor.h>

#include "forge/export.h"

namespace forge::fused {

// Whether causal_attention below takes the batched-GEMM backward: a CPU, q, k
// and v in bf16 or cast to it by CPU autocast, with autograd wanted, q (B, H, S, hd) and k, v (B, Hkv, S, hd)
// with H a multiple of Hkv, and 2 <= S <= 1024 (beyond, the flash kernel's
// memory and its skipped masked blocks win).
FORGE_API bool causal_attention_fusable(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// softmax(q k^T / sqrt(hd) + causal mask) v with GQA (query head h reads KV
// head h / (H / Hkv)): (B, H, S, hd) in bf16, q, k and v cast to it first as
// autocast would. Only for inputs causal_attention_fusable accepts;
// nn::causal_attention calls it for the plain causal case.
FORGE_API at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

}  // namespace forge::fused
