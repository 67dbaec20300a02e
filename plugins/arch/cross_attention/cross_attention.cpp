// arch/cross_attention: [vlm] arch = "cross_attention".
//
// The residual stream holds text only. After text block i with
// (i + 1) % cross_attention_every_n_layers == 0 a cross-attention block runs
// (n_layers / cadence blocks): x + attn(attn_norm(x), image), then
// x + mlp(mlp_norm(x)), with queries from the text and keys/values from the
// image tokens (no RoPE, non-causal). Their o_proj and mlp.down_proj start at
// zero, so a fresh block is an exact identity. Heads: cross_attention_n_heads
// (0: model.n_heads), cross_attention_n_kv_heads (0: the CA heads, i.e. MHA).
// Keys: transformer.cross_attention_layers.<k>.{attn_norm,attn,mlp_norm,mlp}.*
// In generation the image keys/values are computed once and cached.
#include <fmt/format.h>

#include "forge/forge.h"

namespace forge::plugins::arch::cross_attention {

struct Config final : VLMConfig {
  int64_t every_n_layers = 4;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;

  void visit(ConfigVisitor& v) override {
    VLMConfig::visit(v);
    v.field("cross_attention_every_n_layers", every_n_layers,
            "A cross-attention block after every this many text blocks.", Bounds::positive());
    v.field("cross_attention_n_heads", n_heads, "Cross-attention heads; 0: model.n_heads.", Bounds::non_negative());
    v.field("cross_attention_n_kv_heads", n_kv_heads,
            "Cross-attention key/value heads; 0: the cross-attention heads (MHA). Must divide them.",
            Bounds::non_negative());
  }
  int64_t residual_stream_image_tokens(int64_t) const override { return 0; }
  StringListMap arch_module_patterns() const override {
    return {{"cross_attention", {"transformer.cross_attention_layers", "transformer.cross_attention_layers.*"}}};
  }
  int64_t heads(const ModelConfig& m) const { return n_heads > 0 ? n_heads : m.n_heads; }
  int64_t kv_heads(const ModelConfig& m) const { return n_kv_heads > 0 ? n_kv_heads : heads(m); }
};

class CrossAttentionImpl : public torch::nn::Module {
 public:
  CrossAttentionImpl(int64_t dim, int64_t heads, int64_t kv_heads)
      : heads_(heads), kv_heads_(kv_heads), head_dim_(dim / heads) {
    auto lin = [](int64_t i, int64_t o) { return torch::nn::Linear(torch::nn::LinearOptions(i, o).bias(false)); };
    q_proj = register_module("q_proj", lin(dim, heads * head_dim_));
    k_proj = register_module("k_proj", lin(dim, kv_heads * head_dim_));
    v_proj = register_module("v_proj", lin(dim, kv_heads * head_dim_));
    o_proj = register_module("o_proj", lin(heads * head_dim_, dim));
  }
  // (B, Hkv, N, hd) keys and values of the image tokens.
  std::pair<at::Tensor, at::Tensor> image_kv(const at::Tensor& feats) {
    const int64_t B = feats.size(0), N = feats.size(1);
    const auto kv = nn::projections(feats, {k_proj.get(), v_proj.get()});  // under autocast one GEMM, one cast
    auto heads = [&](const at::Tensor& t) { return t.view({B, N, kv_heads_, head_dim_}).transpose(1, 2); };
    return {heads(kv[0]), heads(kv[1])};
  }
  at::Tensor forward(const at::Tensor& x, at::Tensor k, at::Tensor v, const at::Tensor& image_mask) {
    const int64_t B = x.size(0), T = x.size(1);
    // One linear through packed_linear is q_proj(x), but with fp32 weight gradients under CPU bf16 autocast.
    at::Tensor q = nn::packed_linear(x, {q_proj.get()}).view({B, T, heads_, head_dim_}).transpose(1, 2);
    if (heads_ != kv_heads_) {
      k = k.repeat_interleave(heads_ / kv_heads_, 1);
      v = v.repeat_interleave(heads_ / kv_heads_, 1);
    }
    std::optional<at::Tensor> mask;  // nullopt, not an undefined tensor, means "no mask"
    if (image_mask.defined()) {
      at::Tensor m = image_mask;
      m = m | m.any(-1, true).logical_not();  // NaN guard: a sample with no valid image token sees all
      mask = m.unsqueeze(1).unsqueeze(1);      // (B, 1, 1, N)
    }
    at::Tensor o = at::scaled_dot_product_attention(q, k.to(q.scalar_type()), v.to(q.scalar_type()), mask);
    return nn::packed_linear(o.transpose(1, 2).reshape({B, T, heads_ * head_dim_}), {o_proj.get()});
  }
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  int64_t heads_, kv_heads_, head_dim_;
};
TORCH_MODULE(CrossAttention);

class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const ModelConfig& m, int64_t heads, int64_t kv_heads) {
    // The block norms use eps 1e-5 whatever model.norm_eps says (as KempnerForge).
    attn_norm = register_module("attn_norm", nn::Norm(m.dim, m.norm_type, 1e-5));
    attn = register_module("attn", CrossAttention(m.dim, heads, kv_heads));
    mlp_norm = register_module("mlp_norm", nn::Norm(m.dim, m.norm_type, 1e-5));
    mlp = register_module("mlp", nn::Mlp(m.dim, m.ffn_hidden(), m.activation));
  }
  at::Tensor forward(const at::Tensor& x, const at::Tensor& k, const at::Tensor& v, const at::Tensor& image_mask) {
    const at::Tensor h = nn::residual_add(x, attn->forward(attn_norm(x), k, v, image_mask));
    return nn::residual_add(h, mlp(mlp_norm(h)));
  }
  nn::Norm attn_norm{nullptr};
  CrossAttention attn{nullptr};
  nn::Norm mlp_norm{nullptr};
  nn::Mlp mlp{nullptr};
};
TORCH_MODULE(Block);

class Hooks final : public DecoderHooks {
 public:
  Hooks(const ModelConfig& m, const Config& c) : model_(m), every_(c.every_n_layers), heads_(c.heads(m)),
                                                  kv_heads_(c.kv_heads(m)), count_(m.n_layers / c.every_n_layers) {}

  void add_modules(DecoderImpl& decoder) override {
    std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> items;
    for (int64_t k = 0; k < count_; ++k) {
      Block b(model_, heads_, kv_heads_);
      blocks_.push_back(b);
      items.emplace_back(std::to_string(k), b.ptr());
    }
    decoder.register_module("cross_attention_layers", torch::nn::ModuleDict(items));
  }

  at::Tensor after_layer(int64_t i, const at::Tensor& h, const DecoderStep& step) override {
    if ((i + 1) % every_ != 0) return h;
    const int64_t k = (i + 1) / every_ - 1;
    if (k >= count_) return h;
    const at::Tensor& feats = step.modality.image_features();
    const std::string key_k = fmt::format("ca.{}.k", k), key_v = fmt::format("ca.{}.v", k);
    at::Tensor ik, iv;
    if (step.cache && step.cache->arch_state.count(key_k)) {
      ik = step.cache->arch_state[key_k];
      iv = step.cache->arch_state[key_v];
    } else {
      if (!feats.defined())
        throw InvalidArgument("cross_attention: image_features are required (the context has none)");
      std::tie(ik, iv) = blocks_[k]->attn->image_kv(feats.to(h.scalar_type()));
      if (step.cache) {
        step.cache->arch_state[key_k] = ik;
        step.cache->arch_state[key_v] = iv;
      }
    }
    return blocks_[k]->forward(h, ik, iv, step.modality.image_mask());
  }

  void init_weights(DecoderImpl& decoder) override {
    // A fresh cross-attention block is an exact identity.
    for (auto& b : blocks_) nn::zero_parameters(*b, {"attn.o_proj.weight", "mlp.down_proj.weight"});
  }

  double extra_forward_flops(int64_t n_visual, int64_t T) const override {
    const double D = model_.dim, hd = static_cast<double>(model_.dim / heads_), H = heads_, Hkv = kv_heads_;
    const double F = model_.ffn_hidden(), mlp = (model_.activation == "silu" ? 3 : 2) * D * F;
    const double per_block = 2 * (T * (D * H * hd + H * hd * D + mlp) + n_visual * 2 * D * Hkv * hd) +
                             4.0 * T * n_visual * H * hd;
    return static_cast<double>(count_) * per_block;
  }

 private:
  ModelConfig model_;
  int64_t every_, heads_, kv_heads_, count_;
  std::vector<Block> blocks_;
};

class Strategy final : public ModalityStrategy {
 public:
  std::string name() const override { return "cross_attention"; }
  ModalityContext compose(const at::Tensor& visual, const at::Tensor&) const override {
    ModalityContext::Fields f;
    f.image_features = visual;
    return ModalityContext(std::move(f));
  }
  int64_t residual_image_tokens(int64_t) const override { return 0; }
  ModalityContext decode_context(const ModalityContext& prefill) const override {
    ModalityContext::Fields f;
    f.image_features = prefill.image_features();
    f.image_mask = prefill.image_mask();
    return ModalityContext(std::move(f));
  }
};

class Plugin final : public ArchPlugin {
 public:
  std::unique_ptr<VLMConfig> make_config() const override { return std::make_unique<Config>(); }
  void check(const VLMConfig& base, const ModelConfig& m, ConfigVisitor& v) const override {
    const auto& c = static_cast<const Config&>(base);  // made by make_config() above
    const int64_t h = c.heads(m), kv = c.kv_heads(m);
    v.require(m.dim % h == 0, "cross_attention_n_heads",
              fmt::format("model.dim = {} must be divisible by the cross-attention heads ({})", m.dim, h));
    v.require(h % kv == 0, "cross_attention_n_kv_heads",
              fmt::format("the cross-attention kv heads ({}) must divide its heads ({})", kv, h));
    v.require(c.every_n_layers <= m.n_layers, "cross_attention_every_n_layers",
              fmt::format("{} > model.n_layers = {}: no cross-attention block would be built and the model could "
                          "not see the image",
                          c.every_n_layers, m.n_layers));
  }
  std::shared_ptr<ModalityStrategy> make_strategy(const VLMConfig&) const override {
    return std::make_shared<Strategy>();
  }
  std::shared_ptr<DecoderHooks> make_hooks(const ModelConfig& m, const VLMConfig& c, int64_t) const override {
    return std::make_shared<Hooks>(m, static_cast<const Config&>(c));
  }
};

void register_plugin(Registrar& r) { r.add_arch(std::make_shared<Plugin>()); }

}  // namespace forge::plugins::arch::cross_attention

FORGE_PLUGIN(forge::plugins::arch::cross_attention::register_plugin,
             "Text-only residual stream with cross-attention blocks reading the image every N layers")
