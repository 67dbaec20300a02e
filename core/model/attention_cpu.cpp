// attention_cpu.h: the forward by ATen's flash kernel; the backward by (batch, KV head) pairs on BLAS products with
// fp32 outputs (MKL's bf16 product, sgemm), or in bf16 by ATen's batched products where MKL's is off; each with one
// pass per row.
#include "core/model/attention_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/record_function.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <tuple>

#include <fmt/format.h>

#include "core/util/cpu_gemm.h"
#include "core/util/cpu_vec.h"
#include "forge/error.h"

namespace forge::fused {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using namespace forge::cpu_vec;

// Score and dP buffers of a chunk of (batch, KV head) pairs: two bf16 (G S, S) matrices per pair.
constexpr int64_t kChunkBytes = int64_t{4} << 20;

// One query row. On entry p holds its scores q.k (bf16) and ds its dP = dO.v; on exit p holds the
// probabilities exp(score * scale - lse) over the n_keys keys it may see and ds holds dS * scale =
// p * (dP - D) * scale, with D = dO.O; keys past n_keys get zeros in both.
template <typename T>
FORGE_CLONES void attention_row(T* p, T* ds, int64_t n_keys, int64_t S, float lse, float D, float scale) {
  for (int64_t j = 0; j < n_keys; ++j) {
    const float pv = exp_approx(load(p[j]) * scale - lse);
    p[j] = store<T>(pv);
    ds[j] = store<T>(pv * (load(ds[j]) - D) * scale);
  }
  for (int64_t j = n_keys; j < S; ++j) {
    p[j] = store<T>(0.0f);
    ds[j] = store<T>(0.0f);
  }
}

// The rows of a chunk of pairs: P and dS (c, G S, S) in place; o and dout (c, G S, hd); lse (c, G S).
void attention_rows(at::Tensor& P, at::Tensor& dS, const at::Tensor& o, const at::Tensor& dout, const at::Tensor& lse,
                    int64_t S, float scale) {
  using T = c10::BFloat16;
  const int64_t rows = P.size(0) * P.size(1), hd = o.size(-1);
  T *pp = P.mutable_data_ptr<T>(), *dp = dS.mutable_data_ptr<T>();
  const T *op = o.const_data_ptr<T>(), *gp = dout.const_data_ptr<T>();
  const float* lp = lse.const_data_ptr<float>();
  RECORD_FUNCTION("forge::attention_rows", {});  // named in `forge bench --profile`
  at::parallel_for(0, rows, grain_rows(S), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float D = 0.0f;  // dO . O over the head dim, the flash backward's "delta"
      for (int64_t d = 0; d < hd; ++d) D += load(op[r * hd + d]) * load(gp[r * hd + d]);
      attention_row<T>(pp + r * S, dp + r * S, r % S + 1, S, lp[r], D, scale);  // query position r % S
    }
  });
}

// The backward by ATen's batched products where MKL's is not available: each KV head with its G query heads as
// one batch entry, query rows g * S + i, a few pairs at a time.
variable_list backward_by_chunks(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& o,
                                 const at::Tensor& dout, const at::Tensor& lse_in) {
  const int64_t B = q.size(0), H = q.size(1), S = q.size(2), hd = q.size(3), Hkv = k.size(1), G = H / Hkv;
  const int64_t BK = B * Hkv;
  const at::Tensor qg = q.reshape({BK, G * S, hd}), kk = k.reshape({BK, S, hd}), vv = v.reshape({BK, S, hd});
  const at::Tensor og = o.reshape({BK, G * S, hd}).contiguous();
  const at::Tensor dog = dout.reshape({BK, G * S, hd}).contiguous();
  const at::Tensor lse = lse_in.reshape({BK, G * S}).contiguous();
  at::Tensor dq = at::empty({BK, G * S, hd}, q.options()), dk = at::empty({BK, S, hd}, k.options()),
             dv = at::empty({BK, S, hd}, v.options());
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  // A few pairs at a time: their score and dP matrices (1 MB a pair at 256 positions and 4 query heads per KV
  // head) stay in cache from the GEMMs that write them through the three that read them.
  const int64_t chunk = std::max<int64_t>(1, kChunkBytes / (2 * G * S * S * q.element_size()));
  for (int64_t c0 = 0; c0 < BK; c0 += chunk) {
    const int64_t c = std::min(chunk, BK - c0);
    auto part = [&](const at::Tensor& t) { return t.narrow(0, c0, c); };
    at::Tensor P = at::bmm(part(qg), part(kk).transpose(1, 2));    // scores, then probabilities
    at::Tensor dS = at::bmm(part(dog), part(vv).transpose(1, 2));  // dP, then dS * scale
    attention_rows(P, dS, part(og), part(dog), part(lse), S, scale);
    at::Tensor dq_c = part(dq), dk_c = part(dk), dv_c = part(dv);
    at::bmm_out(dq_c, dS, part(kk));
    at::bmm_out(dk_c, dS.transpose(1, 2), part(qg));
    at::bmm_out(dv_c, P.transpose(1, 2), part(dog));
  }
  return {dq.view({B, H, S, hd}), dk.view({B, Hkv, S, hd}), dv.view({B, Hkv, S, hd})};
}

// ---- The backward by (batch, KV head) pairs, on BLAS products with fp32 outputs (core/util/cpu_gemm.h) ----
//
// bf16 by MKL's bf16 -> fp32 product, fp32 by sgemm. Each task takes one pair on one thread (MKL runs
// single-threaded inside ATen's OpenMP parallel_for). Its G query heads are interleaved, row i * G + g for position i of
// head g, so that the rows a causal block of positions needs are contiguous across the group: the products skip
// the blocks the mask zeroes with one call per block for all G heads. Scores and dP come out in fp32 a block of
// rows at a time, the row pass turns them into P and dS in the compute dtype for the whole pair, and three more
// products give dQ, dK and dV. k, v and the output are read where they lie; q and dO are gathered per pair into
// the thread's buffers; the gradients are written in the (B, S, H, hd) layout of the projections they flow back
// to. A thread's work space is P and dS, 2 G S^2 values of the compute dtype (16 MB in bf16, 32 MB in fp32 at 1024
// positions and 4 query heads per KV head), plus two fp32 blocks of 64 G S.

using bf16 = c10::BFloat16;

// Positions per causal block: the products cover the blocks on and below the diagonal only.
constexpr int64_t kCausalBlock = 64;

// One query row from its fp32 scores s and dP dp: P = exp(score * scale - lse) and dS * scale = P (dP - D) scale,
// in T over the n_keys keys it sees, zeros after them up to n_out (the end of its causal block, as far as the
// products read, where the scores are computed too). The first loop runs to a whole number of vectors, past
// n_keys where n_out allows, and the zeros overwrite what it wrote there: the rows are short (a few hundred keys),
// and a vector loop's scalar remainder would cost about as much as its body.
template <typename T>
FORGE_CLONES void attention_row_f32(const float* s, const float* dp, T* P, T* dS, int64_t n_keys, int64_t n_out,
                                    float lse, float D, float scale) {
  const int64_t n_vec = std::min(n_out, (n_keys + 15) / 16 * 16);
  for (int64_t j = 0; j < n_vec; ++j) {
    const float pv = exp_approx(s[j] * scale - lse);
    P[j] = store<T>(pv);
    dS[j] = store<T>(pv * (dp[j] - D) * scale);
  }
  for (int64_t j = n_keys; j < n_out; ++j) {
    P[j] = store<T>(0.0f);
    dS[j] = store<T>(0.0f);
  }
}

// The dot product of two rows in fp32, over 16 running sums the vectoriser keeps in registers.
template <typename T>
FORGE_CLONES float dot(const T* a, const T* b, int64_t n) {
  constexpr int W = 16;
  float acc[W] = {};
  int64_t j = 0;
  for (; j + W <= n; j += W)
    for (int k = 0; k < W; ++k) acc[k] += load(a[j + k]) * load(b[j + k]);
  float sum = 0.0f;
  for (; j < n; ++j) sum += load(a[j]) * load(b[j]);
  for (float x : acc) sum += x;
  return sum;
}

// A (B, H, S, hd) tensor of T with unit stride in hd: head h of batch b, position i at at(b, h) + i * ld.
template <typename T>
struct Heads {
  T* p;
  int64_t sb, sh, ld;
  explicit Heads(const at::Tensor& t)
      : p(static_cast<T*>(t.data_ptr())), sb(t.stride(0)), sh(t.stride(1)), ld(t.stride(2)) {}
  T* at(int64_t b, int64_t h) const { return p + b * sb + h * sh; }
};

// Heads h0 .. h0 + G - 1 of batch b as (S G, hd) rows, row i * G + g for position i of head h0 + g.
template <typename T>
void gather_rows(const Heads<T>& x, int64_t b, int64_t h0, int64_t G, int64_t S, int64_t hd, T* out) {
  for (int64_t i = 0; i < S; ++i)
    for (int64_t g = 0; g < G; ++g) std::memcpy(out + (i * G + g) * hd, x.at(b, h0 + g) + i * x.ld, hd * sizeof(T));
}

// The reverse, from fp32 rows [i0 G, i1 G) into T.
template <typename T>
FORGE_CLONES void scatter_rows(const float* in, int64_t i0, int64_t i1, int64_t G, int64_t hd, T* first_head,
                               int64_t sh, int64_t ld) {
  for (int64_t i = i0; i < i1; ++i)
    for (int64_t g = 0; g < G; ++g)
      for (int64_t d = 0; d < hd; ++d) first_head[i * ld + g * sh + d] = store<T>(in[((i - i0) * G + g) * hd + d]);
}

// A (B, H, S, hd) tensor like `like` in the (B, S, H, hd) layout of the projections it flows back to.
at::Tensor empty_heads(const at::Tensor& like) {
  return at::empty({like.size(0), like.size(2), like.size(1), like.size(3)}, like.options()).transpose(1, 2);
}

// The products, fp32 out: row-major, a (m, k) or its transpose stored (k, m), b likewise.
void product(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const bf16* a, int64_t lda, const bf16* b,
             int64_t ldb, float* c, int64_t ldc) {
  cpu_gemm::gemm_bf16_f32(ta, tb, m, n, k, a, lda, b, ldb, c, ldc, false);
}
void product(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
             int64_t ldb, float* c, int64_t ldc) {
  cpu_gemm::gemm_f32(ta, tb, m, n, k, a, lda, b, ldb, c, ldc, false);
}

// n values left uninitialised: every one the products and the row pass read, they wrote first.
template <typename T>
struct Buffer {
  std::unique_ptr<T[]> p;
  explicit Buffer(int64_t n) : p(new T[static_cast<size_t>(n)]) {}
  T& operator[](int64_t i) { return p[i]; }
  T* data() { return p.get(); }
};

// A thread's work space for one pair at S positions, G heads, head dim hd.
template <typename T>
struct PairScratch {
  Buffer<T> q, dout;      // (S G, hd) interleaved
  Buffer<T> P, dS;        // (S G, S)
  Buffer<float> s, dp;    // (kCausalBlock G, S): one block of rows
  Buffer<float> out;      // (max(kCausalBlock G, S), hd): a block's dQ, a pair's dK or dV
  PairScratch(int64_t S, int64_t G, int64_t hd)
      : q(S * G * hd), dout(S * G * hd), P(S * G * S), dS(S * G * S), s(kCausalBlock * G * S),
        dp(kCausalBlock * G * S), out(std::max(kCausalBlock * G, S) * hd) {}
};

template <typename T>
void backward_by_pairs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& o,
                       const at::Tensor& dout, const at::Tensor& lse, const at::Tensor& dq, const at::Tensor& dk,
                       const at::Tensor& dv) {
  const int64_t B = q.size(0), H = q.size(1), S = q.size(2), hd = q.size(3), Hkv = k.size(1), G = H / Hkv;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  const Heads<T> Q(q), K(k), V(v), O(o), dO(dout), dQ(dq), dK(dk), dV(dv);
  const float* L = lse.const_data_ptr<float>();  // (B, H, S) contiguous
  at::parallel_for(0, B * Hkv, 1, [&](int64_t p0, int64_t p1) {
    PairScratch<T> w(S, G, hd);
    const int64_t SG = S * G;
    for (int64_t pair = p0; pair < p1; ++pair) {
      const int64_t b = pair / Hkv, kv = pair % Hkv, h0 = kv * G;
      const T *kp = K.at(b, kv), *vp = V.at(b, kv);
      gather_rows(Q, b, h0, G, S, hd, w.q.data());
      gather_rows(dO, b, h0, G, S, hd, w.dout.data());
      for (int64_t i0 = 0; i0 < S; i0 += kCausalBlock) {
        // Positions [i0, i1): their scores and dP over keys [0, i1), then P, dS and dQ.
        const int64_t i1 = std::min(i0 + kCausalBlock, S), rows = (i1 - i0) * G, r0 = i0 * G;
        product(false, true, rows, i1, hd, &w.q[r0 * hd], hd, kp, K.ld, w.s.data(), S);
        product(false, true, rows, i1, hd, &w.dout[r0 * hd], hd, vp, V.ld, w.dp.data(), S);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t i = i0 + r / G, h = h0 + r % G;
          const float D = dot(O.at(b, h) + i * O.ld, &w.dout[(r0 + r) * hd], hd);  // the flash backward's "delta"
          attention_row_f32(&w.s[r * S], &w.dp[r * S], &w.P[(r0 + r) * S], &w.dS[(r0 + r) * S], i + 1, i1,
                            L[(b * H + h) * S + i], D, scale);
        }
        product(false, false, rows, hd, i1, &w.dS[r0 * S], S, kp, K.ld, w.out.data(), hd);
        scatter_rows(w.out.data(), i0, i1, G, hd, dQ.at(b, h0), dQ.sh, dQ.ld);
      }
      // dK and dV of each block of keys [c0, c1), from the rows at or after it: dS^T Q and P^T dO.
      for (auto [Pm, X, grad] : {std::tuple{&w.dS, &w.q, &dK}, std::tuple{&w.P, &w.dout, &dV}}) {
        for (int64_t c0 = 0; c0 < S; c0 += kCausalBlock) {
          const int64_t c1 = std::min(c0 + kCausalBlock, S);
          product(true, false, c1 - c0, hd, SG - c0 * G, &(*Pm)[c0 * G * S + c0], S, &(*X)[c0 * G * hd], hd,
                  &w.out[c0 * hd], hd);
        }
        scatter_rows(w.out.data(), 0, S, 1, hd, grad->at(b, kv), grad->sh, grad->ld);
      }
    }
  });
}

struct CausalAttention : torch::autograd::Function<CausalAttention> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);  // q, k, v are in the compute dtype
    auto [out, lse] = at::_scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, /*is_causal=*/true);
    ctx->save_for_backward({q, k, v, out, lse});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2];
    const at::Tensor dout = grad_out[0].to(q.scalar_type());
    RECORD_FUNCTION("forge::attention_backward", {});  // named in `forge bench --profile`
    const bool f32 = q.scalar_type() == at::kFloat;
    if (!f32 && !cpu_gemm::available()) return backward_by_chunks(q, k, v, saved[3], dout, saved[4]);
    // BLAS wants unit strides along hd and rows that do not overlap.
    auto unit_rows = [](const at::Tensor& t) {
      return t.stride(3) == 1 && t.stride(2) >= t.size(3) ? t : t.contiguous();
    };
    at::Tensor dq = empty_heads(q), dk = empty_heads(k), dv = empty_heads(v);
    (f32 ? backward_by_pairs<float> : backward_by_pairs<bf16>)(unit_rows(q), unit_rows(k), unit_rows(v),
                                                               unit_rows(saved[3]), unit_rows(dout),
                                                               saved[4].contiguous(), dq, dk, dv);
    return {dq, dk, dv};
  }
};

// The dtype attention computes in: autocast's where it is on (at::scaled_dot_product_attention is on its list
// of lower-precision ops, and RoPE's fp32 tables make q and k fp32), else the inputs' own.
at::ScalarType compute_dtype(const at::Tensor& t) {
  const auto dev = t.device().type();
  return at::autocast::is_autocast_enabled(dev) && at::isFloatingType(t.scalar_type())
             ? at::autocast::get_autocast_dtype(dev)
             : t.scalar_type();
}

}  // namespace

bool causal_attention_fusable(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  // bf16 (ATen's batched products where MKL's bf16 product is off), or fp32 where BLAS's sgemm is found.
  const at::ScalarType dtype = compute_dtype(q);
  if (dtype != at::kBFloat16 && !(dtype == at::kFloat && cpu_gemm::f32_available())) return false;
  for (const at::Tensor* t : {&q, &k, &v})
    if (!t->device().is_cpu() || compute_dtype(*t) != dtype || t->dim() != 4) return false;
  if (!autograd_wanted({q, k, v})) return false;
  const int64_t S = q.size(2);
  // The lengths where it was measured faster than the flash backward (the small shape's heads, 2 threads): bf16
  // 56 against 82 ms at 1024 positions; fp32 30 against 38 at 512, 64 against 66 at 768, 125 against 112 at 1024.
  const int64_t max_len = dtype == at::kFloat ? 512 : 1024;
  return S >= 2 && S <= max_len && k.sizes().equals(v.sizes()) && k.size(0) == q.size(0) && k.size(2) == S &&
         k.size(3) == q.size(3) && q.size(3) > 0 && q.size(1) > 0 && k.size(1) > 0 && q.size(1) % k.size(1) == 0;
}

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const at::ScalarType dtype = compute_dtype(q), k_dtype = compute_dtype(k), v_dtype = compute_dtype(v);
  if ((dtype != at::kBFloat16 && dtype != at::kFloat) || k_dtype != dtype || v_dtype != dtype)
    throw InvalidArgument(fmt::format("fused::causal_attention: computes in bf16 or fp32, all three alike; got q {}, "
                                      "k {}, v {} (check causal_attention_fusable first)",
                                      c10::toString(dtype), c10::toString(k_dtype), c10::toString(v_dtype)));
  return CausalAttention::apply(q.to(dtype), k.to(dtype), v.to(dtype));
}

}  // namespace forge::fused
