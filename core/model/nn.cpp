// Decoder building blocks (forge/nn.h). Semantics follow spec section 2.
#include "forge/nn.h"

#include <ATen/autocast_mode.h>
#include <torch/nn/init.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_set>

#include <fmt/format.h>

#include "core/model/attention_cpu.h"
#include "core/model/fused_cpu.h"
#include "core/model/linear_cpu.h"
#include "forge/config.h"
#include "forge/error.h"

namespace forge::nn {

namespace F = torch::nn::functional;

// ------------------------------------------------------------ Norm

NormImpl::NormImpl(int64_t dim, std::string type_, double eps_) : type(std::move(type_)), eps(eps_) {
  if (type != "rmsnorm" && type != "layernorm")
    throw InvalidArgument(fmt::format("norm type must be \"rmsnorm\" or \"layernorm\", got \"{}\"", type));
  weight = register_parameter("weight", torch::ones({dim}));
  if (type == "layernorm") bias = register_parameter("bias", torch::zeros({dim}));
}
NormImpl::~NormImpl() = default;

at::Tensor NormImpl::forward(const at::Tensor& x) {
  if (type == "rmsnorm") return fused::rms_norm(x, weight, eps);  // fp32 math, cast back
  return at::layer_norm(x, {x.size(-1)}, weight.to(x.scalar_type()), bias.to(x.scalar_type()), eps);
}

// ------------------------------------------------------------ RoPE

namespace {

// HF's _compute_llama3_parameters: long wavelengths are divided by `factor`,
// short ones kept, the band between interpolated smoothly (all in fp32).
at::Tensor llama3_scaled(const at::Tensor& inv_freq, const RopeScaling& s) {
  const double low_wavelen = static_cast<double>(s.original_max_seq_len) / s.low_freq_factor;
  const double high_wavelen = static_cast<double>(s.original_max_seq_len) / s.high_freq_factor;
  at::Tensor wavelen = 2 * M_PI / inv_freq;
  at::Tensor scaled = at::where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq);
  at::Tensor smooth = (static_cast<double>(s.original_max_seq_len) / wavelen - s.low_freq_factor) /
                      (s.high_freq_factor - s.low_freq_factor);
  at::Tensor smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
  at::Tensor medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
  return at::where(medium, smoothed, scaled);
}

}  // namespace

RotaryEmbedding::RotaryEmbedding(int64_t head_dim, int64_t max_seq_len, double theta, const RopeScaling& scaling)
    : max_seq_len_(max_seq_len) {
  if (head_dim % 2 != 0) throw InvalidArgument(fmt::format("RoPE needs an even head_dim, got {}", head_dim));
  auto opts = at::TensorOptions().dtype(at::kFloat);
  at::Tensor exponents = at::arange(0, head_dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) /
                         static_cast<double>(head_dim);
  at::Tensor inv_freq = 1.0 / at::pow(at::scalar_tensor(theta, at::TensorOptions().dtype(at::kDouble)), exponents.to(at::kDouble)).to(at::kFloat);
  if (scaling.type == "llama3") {
    inv_freq = llama3_scaled(inv_freq, scaling);
  } else if (scaling.type == "linear") {
    inv_freq = inv_freq / scaling.factor;
  } else if (scaling.type != "none") {
    throw InvalidArgument(fmt::format("RoPE scaling \"{}\" is not supported (none, linear, llama3)", scaling.type));
  }
  at::Tensor t = at::arange(max_seq_len, opts);
  at::Tensor freqs = at::outer(t, inv_freq);
  cos_ = freqs.cos();
  sin_ = freqs.sin();
}

std::pair<at::Tensor, at::Tensor> RotaryEmbedding::rows(const at::Tensor& positions, at::ScalarType dtype) const {
  if (!cos_.defined()) throw InvalidArgument("RotaryEmbedding used before construction");
  const auto device = positions.device();
  if (!dev_cos_.defined() || dev_cos_.device() != device) {
    dev_cos_ = cos_.to(device);
    dev_sin_ = sin_.to(device);
  }
  return {dev_cos_.index_select(0, positions).to(dtype), dev_sin_.index_select(0, positions).to(dtype)};
}

// Under autocast q and k go straight to attention, which would cast an fp32 rotation to autocast's dtype
// (scaled_dot_product_attention is on its lower-precision list): written in that dtype at once, they skip the
// fp32 copies and the casts, forward and backward, with the same bits.
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const auto dev = x.device().type();
  if (at::autocast::is_autocast_enabled(dev) && at::isFloatingType(x.scalar_type()))
    return fused::rope(x, cos, sin, at::autocast::get_autocast_dtype(dev));
  return fused::rope(x, cos, sin);
}

at::Tensor residual_add(const at::Tensor& h, const at::Tensor& branch) { return fused::residual_add(h, branch); }

// ------------------------------------------------------------ attention core

// The keys each query may see: (1 or B, S, S_kv) bool. Causal over absolute
// positions (queries start at `start`), within a document, real keys only; a
// query left with no key sees every key instead (the NaN guard).
static at::Tensor allowed_keys(int64_t S, int64_t S_kv, int64_t start, const AttentionInputs& in,
                               const at::Device& device) {
  auto lopts = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor qpos = at::arange(start, start + S, lopts).unsqueeze(1);
  at::Tensor kpos = at::arange(S_kv, lopts).unsqueeze(0);
  at::Tensor allowed = (kpos <= qpos).unsqueeze(0);  // (1, S, S_kv)
  if (in.doc_ids.defined()) allowed = allowed & (in.doc_ids.unsqueeze(2) == in.doc_ids.unsqueeze(1));
  if (in.key_padding_mask.defined()) {
    if (in.key_padding_mask.size(-1) != S_kv)
      throw InvalidArgument(fmt::format("key_padding_mask covers {} positions, attention has {} keys",
                                        in.key_padding_mask.size(-1), S_kv));
    allowed = allowed & in.key_padding_mask.to(at::kBool).unsqueeze(1);
  }
  return allowed | allowed.any(-1, /*keepdim=*/true).logical_not();
}

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k_in, const at::Tensor& v_in,
                            const AttentionInputs& in, LayerKV* cache) {
  const int64_t S = q.size(2);
  const int64_t H = q.size(1);
  at::Tensor k = k_in, v = v_in;
  const int64_t start = in.start_pos;
  if (cache) {
    if (!cache->k.defined()) throw InvalidArgument("KV cache layer is not allocated");
    const int64_t cap = cache->k.size(2);
    if (start + S > cap)
      throw InvalidArgument(fmt::format("KV cache overflow: {} + {} positions > capacity {}", start, S, cap));
    cache->k.narrow(2, start, S).copy_(k);
    cache->v.narrow(2, start, S).copy_(v);
    k = cache->k.narrow(2, 0, start + S);
    v = cache->v.narrow(2, 0, start + S);
  }
  const int64_t Hkv = k.size(1);
  if (H % Hkv != 0) throw InvalidArgument(fmt::format("{} query heads are not a multiple of {} KV heads", H, Hkv));
  const int64_t S_kv = k.size(2);
  const bool need_mask = in.doc_ids.defined() || in.key_padding_mask.defined() || (start > 0 && S > 1);
  if (!need_mask) {
    // Training and prefill: plain causal. A single decode token attends to the whole cache. GQA inside the
    // kernel: each group of query heads reads its KV head in place (no repeated K/V copies). Training on a CPU
    // at a few hundred positions: the same forward, forge's backward by GEMMs (attention_cpu.h).
    if (!cache && S > 1 && fused::causal_attention_fusable(q, k, v)) return fused::causal_attention(q, k, v);
    return at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/S > 1, std::nullopt, H != Hkv);
  }
  // With a mask, CUDA's flash kernel is out and the memory-efficient one takes no GQA: repeat K/V so the
  // efficient kernel stays eligible instead of the math fallback.
  if (H != Hkv) {
    k = k.repeat_interleave(H / Hkv, 1);
    v = v.repeat_interleave(H / Hkv, 1);
  }
  if (in.doc_ids.defined() && cache) throw InvalidArgument("doc_ids masking cannot be combined with a KV cache");
  return at::scaled_dot_product_attention(q, k, v, allowed_keys(S, S_kv, start, in, q.device()).unsqueeze(1), 0.0,
                                          false);
}

at::Tensor attention_probabilities(const at::Tensor& q, const at::Tensor& k_in, const AttentionInputs& in) {
  const int64_t S = q.size(2), H = q.size(1), S_kv = k_in.size(2);
  const at::Tensor k = H == k_in.size(1) ? k_in : k_in.repeat_interleave(H / k_in.size(1), 1);
  at::Tensor scores = at::matmul(q.to(at::kFloat), k.to(at::kFloat).transpose(-2, -1)) /
                      std::sqrt(static_cast<double>(q.size(-1)));
  at::Tensor allowed = allowed_keys(S, S_kv, in.start_pos, in, q.device()).unsqueeze(1);  // (B|1, 1, S, S_kv)
  return at::softmax(scores.masked_fill(allowed.logical_not(), -std::numeric_limits<double>::infinity()), -1);
}

// ------------------------------------------------------------ Attention

static torch::nn::Linear linear(int64_t in, int64_t out, bool bias = false) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
}

// One linear: l(x), by fused::linear_bf16 where it applies (CPU bf16 autocast training).
static at::Tensor project(const torch::nn::Linear& l, const at::Tensor& x) { return packed_linear(x, {l.get()}); }

bool packs_projections(const at::Tensor& x) {
  const auto dev = x.device().type();
  return at::autocast::is_autocast_enabled(dev) && at::autocast::get_autocast_dtype(dev) != x.scalar_type();
}

// On a CPU under bf16 autocast, fused::linear_bf16 (fp32 weight gradients); elsewhere each weight is cast by
// autocast's per-step cache, as at::linear would.
at::Tensor packed_linear(const at::Tensor& x, std::initializer_list<const torch::nn::LinearImpl*> ls) {
  if (fused::linear_bf16_applies(x, ls)) return fused::linear_bf16(x, ls);
  if (ls.size() == 1) return at::linear(x, (*ls.begin())->weight, (*ls.begin())->bias);  // l(x), in any mode
  const auto dev = x.device().type();
  const auto dt = at::autocast::get_autocast_dtype(dev);
  std::vector<at::Tensor> w, b;
  const bool any_bias = std::any_of(ls.begin(), ls.end(), [](auto* l) { return l->bias.defined(); });
  for (const auto* l : ls) {
    w.push_back(at::autocast::cached_cast(dt, l->weight, dev));
    if (any_bias)
      b.push_back(l->bias.defined() ? at::autocast::cached_cast(dt, l->bias, dev)
                                    : at::zeros({l->weight.size(0)}, l->weight.options().dtype(dt)));
  }
  return at::linear(x, at::cat(w), any_bias ? at::cat(b) : at::Tensor());
}

std::vector<at::Tensor> projections(const at::Tensor& x, std::initializer_list<const torch::nn::LinearImpl*> ls) {
  if (ls.size() > 1 && packs_projections(x)) {
    std::vector<int64_t> sizes;
    for (const auto* l : ls) sizes.push_back(l->weight.size(0));
    return packed_linear(x, ls).split_with_sizes(sizes, -1);
  }
  std::vector<at::Tensor> out;
  for (const auto* l : ls) out.push_back(packed_linear(x, {l}));
  return out;
}

AttentionImpl::AttentionImpl(const AttentionOptions& o) : options(o) {
  if (o.n_heads <= 0 || o.n_kv_heads <= 0 || o.n_heads % o.n_kv_heads != 0)
    throw InvalidArgument(fmt::format("attention: n_kv_heads ({}) must be > 0 and divide n_heads ({})", o.n_kv_heads,
                                      o.n_heads));
  q_proj = register_module("q_proj", linear(o.dim, o.n_heads * o.head_dim, o.qkv_bias));
  k_proj = register_module("k_proj", linear(o.dim, o.n_kv_heads * o.head_dim, o.qkv_bias));
  v_proj = register_module("v_proj", linear(o.dim, o.n_kv_heads * o.head_dim, o.qkv_bias));
  o_proj = register_module("o_proj", linear(o.n_heads * o.head_dim, o.dim, o.o_bias));
  if (o.qk_norm) {
    q_norm = register_module("q_norm", Norm(o.head_dim, "rmsnorm", o.qk_norm_eps));
    k_norm = register_module("k_norm", Norm(o.head_dim, "rmsnorm", o.qk_norm_eps));
  }
}
AttentionImpl::~AttentionImpl() = default;

// A projection's output (B, S, heads * hd) as (B, heads, S, hd), after the optional per-head norm.
static at::Tensor split_heads(const at::Tensor& y, int64_t heads, int64_t hd, Norm& norm) {
  at::Tensor h = y.view({y.size(0), y.size(1), heads, hd});
  if (norm) h = norm(h);
  return h.transpose(1, 2);
}

at::Tensor AttentionImpl::project_q(const at::Tensor& x) {
  return split_heads(project(q_proj, x), options.n_heads, options.head_dim, q_norm);
}
at::Tensor AttentionImpl::project_k(const at::Tensor& x) {
  return split_heads(project(k_proj, x), options.n_kv_heads, options.head_dim, k_norm);
}
at::Tensor AttentionImpl::project_v(const at::Tensor& x) {
  Norm none{nullptr};
  return split_heads(project(v_proj, x), options.n_kv_heads, options.head_dim, none);
}

at::Tensor AttentionImpl::forward(const at::Tensor& x, const AttentionInputs& in, LayerKV* cache) {
  const auto qkv = projections(x, {q_proj.get(), k_proj.get(), v_proj.get()});
  const int64_t hd = options.head_dim;
  Norm none{nullptr};
  const at::Tensor q = apply_rope(split_heads(qkv[0], options.n_heads, hd, q_norm), in.cos, in.sin);
  const at::Tensor k = apply_rope(split_heads(qkv[1], options.n_kv_heads, hd, k_norm), in.cos, in.sin);
  const at::Tensor v = split_heads(qkv[2], options.n_kv_heads, hd, none);
  if (keep_probabilities && !cache) probabilities = attention_probabilities(q, k, in).detach();
  at::Tensor o = causal_attention(q, k, v, in, cache);
  return project(o_proj, o.transpose(1, 2).reshape({x.size(0), x.size(1), options.n_heads * options.head_dim}));
}

// ------------------------------------------------------------ MLP

MlpImpl::MlpImpl(int64_t dim, int64_t hidden, std::string act, bool bias) : activation(std::move(act)) {
  if (activation == "silu") {
    gate_proj = register_module("gate_proj", linear(dim, hidden, bias));
  } else if (activation != "gelu" && activation != "relu") {
    throw InvalidArgument(fmt::format("MLP activation must be silu, gelu or relu, got \"{}\"", activation));
  }
  up_proj = register_module("up_proj", linear(dim, hidden, bias));
  down_proj = register_module("down_proj", linear(hidden, dim, bias));
}
MlpImpl::~MlpImpl() = default;

at::Tensor MlpImpl::forward(const at::Tensor& x) {
  if (activation == "silu")
    return project(down_proj, packs_projections(x)
                                  ? fused::silu_mul_packed(packed_linear(x, {gate_proj.get(), up_proj.get()}))
                                  : fused::silu_mul(gate_proj(x), up_proj(x)));
  if (activation == "gelu") return project(down_proj, at::gelu(project(up_proj, x)));
  return project(down_proj, at::relu(project(up_proj, x)));
}

// ------------------------------------------------------------ embedding and head

TiedLinearImpl::TiedLinearImpl(int64_t in, int64_t out) {
  weight = register_parameter("weight", torch::empty({out, in}).normal_(0.0, 0.02));
}
TiedLinearImpl::~TiedLinearImpl() = default;
at::Tensor TiedLinearImpl::forward(const at::Tensor& x) { return at::linear(x, weight.to(x.scalar_type())); }
void TiedLinearImpl::tie(const at::Tensor& shared) {
  parameters_["weight"] = shared;
  weight = shared;
}

TokenEmbeddingImpl::TokenEmbeddingImpl(int64_t vocab, int64_t dim) {
  embedding = register_module("embedding", torch::nn::Embedding(vocab, dim));
}
TokenEmbeddingImpl::~TokenEmbeddingImpl() = default;
at::Tensor TokenEmbeddingImpl::forward(const at::Tensor& tokens) { return embedding(tokens); }

OutputHeadImpl::OutputHeadImpl(int64_t dim, int64_t vocab) { proj = register_module("proj", TiedLinear(dim, vocab)); }
OutputHeadImpl::~OutputHeadImpl() = default;
at::Tensor OutputHeadImpl::forward(const at::Tensor& h) { return proj(h); }

// ------------------------------------------------------------ helpers

AttentionOptions attention_options(const ModelConfig& cfg) {
  AttentionOptions o;
  o.dim = cfg.dim;
  o.n_heads = cfg.n_heads;
  o.n_kv_heads = cfg.kv_heads();
  o.head_dim = cfg.head_dim();
  o.qk_norm = cfg.qk_norm;
  o.qk_norm_eps = cfg.qk_norm_eps;
  o.qkv_bias = cfg.qkv_bias;
  o.o_bias = cfg.o_bias;
  return o;
}

RopeScaling rope_scaling(const ModelConfig& cfg) {
  RopeScaling s;
  s.type = cfg.rope_scaling;
  s.factor = cfg.rope_scaling_factor;
  s.low_freq_factor = cfg.rope_low_freq_factor;
  s.high_freq_factor = cfg.rope_high_freq_factor;
  s.original_max_seq_len = cfg.rope_original_max_seq_len;
  return s;
}

int64_t ffn_hidden_size(int64_t dim, double multiplier, std::optional<int64_t> explicit_hidden) {
  if (explicit_hidden) return *explicit_hidden;
  // Left to right in double, as the reference: 4 * dim * (2/3) * multiplier.
  double raw = static_cast<double>(4 * dim) * (2.0 / 3.0) * multiplier;
  auto h = static_cast<int64_t>(std::trunc(raw));
  return (h + 255) / 256 * 256;
}

void zero_parameters(torch::nn::Module& module, const std::vector<std::string>& suffixes) {
  torch::NoGradGuard guard;
  for (auto& item : module.named_parameters(true)) {
    const std::string& name = item.key();
    for (const auto& s : suffixes) {
      if (name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
        item.value().zero_();
        break;
      }
    }
  }
}

std::vector<std::pair<std::string, at::Tensor>> unique_named_parameters(const torch::nn::Module& module) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  std::unordered_set<const void*> seen;
  for (const auto& item : module.named_parameters(true)) {
    const void* key = item.value().unsafeGetTensorImpl();
    if (seen.insert(key).second) out.emplace_back(item.key(), item.value());
  }
  return out;
}

}  // namespace forge::nn
