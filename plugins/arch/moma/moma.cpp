// arch/moma: [vlm] arch = "moma" (Mixture of Modality-Aware Experts).
//
// One residual stream [image tokens | text tokens] with shared attention, as
// in joint_decoder, but every layer's feed-forward is a set of experts per
// modality: image tokens compete for the image experts, text tokens for the
// text experts. Routing is expert choice (each expert takes its top-k tokens
// of the modality by sigmoid score, k = ceil(capacity * tokens), over the
// whole micro-batch), so every expert does the same work and no balancing
// loss is needed. A token's output is the score-weighted sum of the experts
// that picked it; a token no expert picked passes through the residual.
//
// Keys (the reference's): transformer.layers.<i>.attention_norm.weight,
//   transformer.layers.<i>.attention.*, transformer.layers.<i>.mlp_norm.weight,
//   transformer.layers.<i>.mlp.experts.<m>.router.gate.weight,
//   transformer.layers.<i>.mlp.experts.<m>.experts.<e>.{gate,up,down}_proj.weight.
//
// Expert choice looks at every position of the sequence at once (a token's
// expert depends on later tokens), so forge refuses to generate with it.
#include <cmath>

#include <fmt/format.h>

#include "forge/forge.h"

namespace forge::plugins::arch::moma {

const char* const kImage = "image";
const char* const kText = "text";

struct Config final : VLMConfig {
  std::vector<std::string> modalities{kImage, kText};
  IntMap experts_per_modality{{kImage, 4}, {kText, 4}};
  double capacity_factor = 0.0;
  bool gumbel_noise = true;

  void visit(ConfigVisitor& v) override {
    VLMConfig::visit(v);
    v.field("moma_modalities", modalities,
            "Modalities with their own experts. forge places the image first and the text after it, so the list must "
            "be exactly image and text (in either order); tokens go to their modality's experts by name.");
    v.field("moma_experts_per_modality", experts_per_modality,
            "Experts per modality, one count per entry of moma_modalities ([vlm.moma_experts_per_modality] "
            "image = 2); a modality not given keeps its default.",
            Bounds::at_least(1));
    v.field("moma_capacity_factor", capacity_factor,
            "Fraction of a modality's tokens each expert takes (k = ceil(factor * tokens)); 0: 1 / that modality's "
            "experts, so on average each token gets one expert.",
            Bounds::non_negative());
    v.field("moma_gumbel_noise", gumbel_noise,
            "Add Gumbel noise (g1 - g2) to the router logits in training (not in evaluation).");
    std::vector<std::string> sorted = modalities;
    std::sort(sorted.begin(), sorted.end());
    v.require(sorted == std::vector<std::string>{kImage, kText}, "moma_modalities",
              fmt::format("got [{}]; forge's MoMa supports exactly the modalities image and text",
                          fmt::join(modalities, ", ")));
    std::vector<std::string> keys;
    for (const auto& [k, n] : experts_per_modality) keys.push_back(k);
    v.require(keys == sorted, "moma_experts_per_modality",
              fmt::format("has entries [{}]; it takes one per modality of moma_modalities: [{}]", fmt::join(keys, ", "),
                          fmt::join(sorted, ", ")));
  }
  StringListMap arch_module_patterns() const override {
    return {{"moma", {"transformer.layers", "transformer.layers.*"}}};
  }
  // The capacity modality `m` uses: the factor, or 1 / its experts.
  double capacity(const std::string& m) const {
    return capacity_factor > 0 ? capacity_factor : 1.0 / static_cast<double>(experts_per_modality.at(m));
  }
};

// Tokens each expert takes out of `n` (computed in double, as the reference).
int64_t tokens_per_expert(int64_t n, double capacity) {
  return std::min<int64_t>(n, std::max<int64_t>(1, static_cast<int64_t>(std::ceil(capacity * static_cast<double>(n)))));
}

// The router's gate under the key router.gate.
class GateImpl : public torch::nn::Module {
 public:
  GateImpl(int64_t dim, int64_t experts) {
    gate = register_module("gate", torch::nn::Linear(torch::nn::LinearOptions(dim, experts).bias(false)));
  }
  torch::nn::Linear gate{nullptr};
};
TORCH_MODULE(Gate);

// One modality's experts with expert-choice routing (spec 2.11).
class ExpertChoiceImpl : public torch::nn::Module {
 public:
  ExpertChoiceImpl(const ModelConfig& m, int64_t experts, double capacity, bool gumbel)
      : capacity_(capacity), gumbel_(gumbel) {
    router = register_module("router", Gate(m.dim, experts));
    this->experts = register_module("experts", torch::nn::ModuleList());
    const int64_t hidden = nn::expert_hidden_size(m.ffn_hidden(), m.moe_expert_ffn_multiplier);
    for (int64_t e = 0; e < experts; ++e) this->experts->push_back(nn::Mlp(m.dim, hidden, m.activation, m.mlp_bias));
  }

  // x: (N, D), the modality's tokens. Returns (N, D).
  at::Tensor forward(const at::Tensor& x) {
    const int64_t N = x.size(0), E = static_cast<int64_t>(experts->size());
    if (N == 0) return x;
    at::Tensor logits = router->gate(x);  // (N, E)
    if (is_training() && gumbel_) logits = logits + gumbel_difference(logits);
    at::Tensor scores = at::sigmoid(logits);
    const int64_t k = tokens_per_expert(N, capacity_);
    auto [top, picked] = scores.t().topk(k, /*dim=*/1);  // (E, k): each expert's tokens
    at::Tensor out = at::zeros_like(x);
    for (int64_t e = 0; e < E; ++e) {
      at::Tensor rows = picked[e];
      at::Tensor y = experts[e]->as<nn::MlpImpl>()->forward(x.index_select(0, rows)) * top[e].unsqueeze(1).to(x.dtype());
      out = out.index_add(0, rows, y);
    }
    last_k_ = k;
    last_tokens_ = N;
    {
      torch::NoGradGuard no_grad;
      at::Tensor hit = at::zeros({N}, x.options().dtype(at::kFloat)).index_fill_(0, picked.reshape(-1), 1.0);
      last_unrouted_ = 1.0 - hit.mean();
    }
    return out;
  }

  // The noise g1 - g2, each g = -log(max(-log(max(u, 1e-9)), 1e-9)). u is
  // drawn from the CPU generator on every device, so that checkpoints (which
  // keep its state) resume with the same draws and activation checkpointing
  // (which replays it) recomputes the same ones.
  static at::Tensor gumbel_difference(const at::Tensor& logits) {
    auto g = [&] {
      at::Tensor u = at::rand(logits.sizes(), at::TensorOptions().dtype(at::kFloat));
      return -at::log(at::clamp_min(-at::log(at::clamp_min(u, 1e-9)), 1e-9));
    };
    at::Tensor d = g() - g();
    return d.to(logits.device(), logits.scalar_type());
  }

  int64_t last_k() const { return last_k_; }
  int64_t last_tokens() const { return last_tokens_; }
  const at::Tensor& last_unrouted() const { return last_unrouted_; }

  Gate router{nullptr};
  torch::nn::ModuleList experts{nullptr};

 private:
  double capacity_;
  bool gumbel_;
  int64_t last_k_ = 0, last_tokens_ = 0;
  at::Tensor last_unrouted_;
};
TORCH_MODULE(ExpertChoice);

// The feed-forward of a MoMa block: experts.<m> per modality. Modality ids
// follow the strategy (0 = image, 1 = text); padded positions (key padding
// mask false) go to no expert. Positions no expert takes get zero.
class FeedForwardImpl : public torch::nn::Module, public StepParticipant {
 public:
  FeedForwardImpl(const ModelConfig& m, const Config& c) {
    std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> items;
    std::map<std::string, ExpertChoice> by_name;
    for (const auto& name : c.modalities) {
      ExpertChoice ec(m, c.experts_per_modality.at(name), c.capacity(name), c.gumbel_noise);
      by_name.emplace(name, ec);
      items.emplace_back(name, ec.ptr());
    }
    register_module("experts", torch::nn::ModuleDict(items));
    for (const char* name : {kImage, kText}) per_id_.push_back(by_name.at(name));
  }

  at::Tensor forward(const at::Tensor& x, const at::Tensor& modality_ids, const at::Tensor& key_padding_mask) {
    const int64_t B = x.size(0), S = x.size(1), D = x.size(2);
    at::Tensor flat = x.reshape({B * S, D});
    at::Tensor ids = modality_ids.reshape({B * S});
    at::Tensor real = key_padding_mask.defined() ? key_padding_mask.reshape({B * S}) : at::Tensor();
    at::Tensor out = at::zeros_like(flat);
    int64_t routed = 0;
    for (size_t i = 0; i < per_id_.size(); ++i) {
      at::Tensor sel = ids == static_cast<int64_t>(i);
      if (real.defined()) sel = sel & real;
      at::Tensor rows = sel.nonzero().squeeze(1);
      routed += rows.size(0);
      if (rows.size(0) == 0) continue;
      out = out.index_copy(0, rows, per_id_[i]->forward(flat.index_select(0, rows)));
    }
    const int64_t expected = real.defined() ? real.sum().item<int64_t>() : B * S;
    if (routed != expected)
      throw InvalidArgument(fmt::format("moma: modality_ids has out-of-range values ({} of {} positions are neither "
                                        "0 = image nor 1 = text)",
                                        expected - routed, expected));
    return out.view({B, S, D});
  }

  void report(const std::string& name, StepReport& out) const override {
    const char* names[] = {kImage, kText};
    std::vector<double> unrouted;
    for (size_t i = 0; i < per_id_.size(); ++i) {
      const auto& ec = *per_id_[i];
      out.series[fmt::format("moma/expert_counts/{}.{}", name, names[i])] =
          std::vector<double>(ec.experts->size(), static_cast<double>(ec.last_k()));
      unrouted.push_back(ec.last_unrouted().defined() ? ec.last_unrouted().item<double>() : 0.0);
    }
    out.series["moma/unrouted_fraction/" + name] = unrouted;  // [image, text]
  }

  std::vector<ExpertChoice> per_id_;  // 0 = image, 1 = text
};
TORCH_MODULE(FeedForward);

class BlockImpl : public DecoderLayer {
 public:
  BlockImpl(const ModelConfig& m, const Config& c) {
    attention_norm = register_module("attention_norm", nn::Norm(m.dim, m.norm_type, m.norm_eps));
    attention = register_module("attention", nn::Attention(nn::attention_options(m)));
    mlp_norm = register_module("mlp_norm", nn::Norm(m.dim, m.norm_type, m.norm_eps));
    mlp = register_module("mlp", FeedForward(m, c));
  }

  at::Tensor forward(const at::Tensor& h, const DecoderStep& step, nn::LayerKV* kv) override {
    if (step.cache || kv)
      throw InvalidArgument("moma: decoding with a KV cache is not supported (expert-choice routing is non-causal)");
    const at::Tensor& ids = step.modality.modality_ids();
    if (!ids.defined() || ids.sizes() != at::IntArrayRef{h.size(0), h.size(1)})
      throw InvalidArgument(fmt::format("moma: modality_ids must be (B, S) = ({}, {}) int64, got {}", h.size(0),
                                        h.size(1), ids.defined() ? c10::str(ids.sizes()) : std::string("none")));
    const at::Tensor x = nn::residual_add(h, attention->forward(attention_norm(h), step.attention, nullptr));
    return nn::residual_add(x, mlp->forward(mlp_norm(x), ids, step.modality.key_padding_mask()));
  }

  nn::Norm attention_norm{nullptr};
  nn::Attention attention{nullptr};
  nn::Norm mlp_norm{nullptr};
  FeedForward mlp{nullptr};
};

class Hooks final : public DecoderHooks {
 public:
  Hooks(const ModelConfig& m, const Config& c) : model_(m), cfg_(c) {}

  std::shared_ptr<DecoderLayer> make_layer(int64_t, const ModelConfig& m) override {
    return std::make_shared<BlockImpl>(m, cfg_);
  }

  int64_t load_dense(DecoderImpl&, const DenseWeights&) override {
    throw UserError(
        "arch = \"moma\" cannot start from a dense pretrained decoder ([model] init_from_hf): its feed-forward "
        "layers are per-modality experts that a dense MLP does not fill (forge does not upcycle); train from "
        "scratch or choose arch = \"joint_decoder\", \"cross_attention\" or \"mot\"");
  }

  std::string generation_refusal() const override {
    return "arch = \"moma\" routes tokens by expert choice over the whole sequence, so a token's experts depend on "
           "the tokens after it and a caption cannot be decoded one token at a time as it was trained; evaluate "
           "with teacher forcing (forge eval) instead";
  }

  // The experts replace the dense MLP: per layer, each modality's E experts
  // each run k = ceil(capacity * tokens) tokens, plus the routers.
  double extra_forward_flops(int64_t n_visual, int64_t T) const override {
    const double D = model_.dim, F = model_.ffn_hidden();
    const double Fe = nn::expert_hidden_size(model_.ffn_hidden(), model_.moe_expert_ffn_multiplier);
    const double mats = model_.activation == "silu" ? 3 : 2;
    double per_layer = -2 * mats * D * F * static_cast<double>(n_visual + T);  // the dense MLP the core counted
    const std::pair<const char*, int64_t> parts[] = {{kImage, n_visual}, {kText, T}};
    for (const auto& [name, n] : parts) {
      if (n == 0) continue;
      const double E = cfg_.experts_per_modality.at(name);
      per_layer += 2 * D * E * n;  // router
      per_layer += 2 * mats * D * Fe * E * static_cast<double>(tokens_per_expert(n, cfg_.capacity(name)));
    }
    return static_cast<double>(model_.n_layers) * per_layer;
  }

 private:
  ModelConfig model_;
  Config cfg_;
};

class Plugin final : public ArchPlugin {
 public:
  std::unique_ptr<VLMConfig> make_config() const override { return std::make_unique<Config>(); }
  void check(const VLMConfig&, const ModelConfig& m, ConfigVisitor& v) const override {
    v.require(m.num_experts == 0, "arch",
              fmt::format("arch = \"moma\" with model.num_experts = {}: MoMa's feed-forward layers are its own "
                          "per-modality experts ([vlm] moma_experts_per_modality); set num_experts = 0",
                          m.num_experts));
  }
  std::shared_ptr<ModalityStrategy> make_strategy(const VLMConfig&) const override {
    return std::make_shared<PrefixStrategy>("moma", /*modality_ids=*/true);
  }
  std::shared_ptr<DecoderHooks> make_hooks(const ModelConfig& m, const VLMConfig& c, int64_t) const override {
    return std::make_shared<Hooks>(m, static_cast<const Config&>(c));
  }
};

void register_plugin(Registrar& r) { r.add_arch(std::make_shared<Plugin>()); }

}  // namespace forge::plugins::arch::moma

FORGE_PLUGIN(forge::plugins::arch::moma::register_plugin,
             "Mixture of Modality-Aware Experts: shared attention, per-modality expert-choice feed-forward experts")
