// attention_cpu.h: the forward by ATen's flash kernel, the backward by batched GEMMs and one pass per row.
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

#include "core/util/cpu_vec.h"

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

struct CausalAttention : torch::autograd::Function<CausalAttention> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);  // q, k, v are bf16 already
    auto [out, lse] = at::_scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, /*is_causal=*/true);
    ctx->save_for_backward({q, k, v, out, lse});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2];
    const int64_t B = q.size(0), H = q.size(1), S = q.size(2), hd = q.size(3), Hkv = k.size(1), G = H / Hkv;
    const int64_t BK = B * Hkv;
    // Each KV head with its G query heads as one batch entry, query rows g * S + i.
    const at::Tensor qg = q.reshape({BK, G * S, hd}), kk = k.reshape({BK, S, hd}), vv = v.reshape({BK, S, hd});
    const at::Tensor og = saved[3].reshape({BK, G * S, hd}).contiguous();
    const at::Tensor dog = grad_out[0].to(q.scalar_type()).reshape({BK, G * S, hd}).contiguous();
    const at::Tensor lse = saved[4].reshape({BK, G * S}).contiguous();
    at::Tensor dq = at::empty({BK, G * S, hd}, q.options()), dk = at::empty({BK, S, hd}, k.options()),
               dv = at::empty({BK, S, hd}, v.options());
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
    // A few pairs at a time: their score and dP matrices (1 MB a pair at 256 positions and 4 query heads per KV
    // head) stay in cache from the GEMMs that write them through the three that read them.
    const int64_t chunk = std::max<int64_t>(1, kChunkBytes / (2 * G * S * S * q.element_size()));
    RECORD_FUNCTION("forge::attention_backward", {});  // named in `forge bench --profile`
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
  for (const at::Tensor* t : {&q, &k, &v})
    if (!t->device().is_cpu() || compute_dtype(*t) != at::kBFloat16 || t->dim() != 4) return false;
  if (!autograd_wanted({q, k, v})) return false;
  const int64_t S = q.size(2);
  return S >= 2 && S <= 1024 && k.sizes().equals(v.sizes()) && k.size(0) == q.size(0) && k.size(2) == S &&
         k.size(3) == q.size(3) && k.size(1) > 0 && q.size(1) % k.size(1) == 0;
}

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  return CausalAttention::apply(q.to(compute_dtype(q)), k.to(compute_dtype(k)), v.to(compute_dtype(v)));
}

}  // namespace forge::fused
