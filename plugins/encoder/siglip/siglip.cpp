// encoder/siglip: [vision_encoder] type = "siglip" (also "siglip2", the
// reference's name).
//
// SigLIP and SigLIP2 vision towers in LibTorch, loaded from a local Hugging
// Face folder ([vision_encoder] path: config.json + model.safetensors or its
// sharded index). config.json may be a full SiglipModel/Siglip2Model (the
// text tower is ignored) or a vision model alone.
//  - SigLIP (model_type siglip / siglip_vision_model): conv patch embedding,
//    a learned position table for exactly (image_size / patch_size)^2 patches.
//  - SigLIP2 NaFlex (model_type siglip2 / siglip2_vision_model): patches
//    flattened (row, column, channel) into a linear embedding, and a square
//    position table resized (bilinear, antialiased) to the image's patch grid,
//    so any image_size that is a multiple of patch_size works.
// Output: last_hidden_state after post_layernorm, (B, patches, hidden); no
// CLS. With feature_layer = k < 0: HF's hidden_states[k] (no post_layernorm),
// as LLaVA's vision_feature_layer. The attention-pooling head's weights are loaded and kept (so state
// dicts match KempnerForge's) but not run, as in the reference.
// With an empty path, a randomly initialised, trainable SigLIP of the shape
// the keys below describe.
// State-dict keys: vision_encoder.vision_tower.<HF vision-model keys>.
#include <filesystem>

#include <fmt/format.h>

#include "forge/forge.h"
#include "forge/hf.h"
#include "forge/vit.h"

namespace forge::plugins::encoder::siglip {

using Config = VitEncoderConfig;  // the [vision_encoder] keys of every ViT tower (forge/vit.h)

struct Spec {
  bool v2 = false;
  bool use_head = false;
  nn::VitOptions vit;
  int64_t image_size = 224, patch_size = 16, table = 0;  // table: SigLIP2 position entries
  Preprocess pre;
  std::string dir;  // "" for random init
  int64_t feature_layer = 0;  // 0: post_layernorm(last layer); k < 0: hidden_states[k]
  int64_t run = 0;            // layers to run
  int64_t grid() const { return image_size / patch_size; }
  int64_t tokens() const { return grid() * grid(); }
};

Spec spec_of(const Config& cfg) {
  Spec s;
  s.pre.resize = "bicubic";  // SiglipImageProcessor's resample; mean = std = 0.5
  if (cfg.path.empty()) {
    s.vit = cfg.random_init("siglip", s.vit);
    s.image_size = cfg.image_size > 0 ? cfg.image_size : 224;
    s.patch_size = cfg.patch_size;
  } else {
    s.dir = cfg.model_dir("siglip");
    hf::ConfigJson root((std::filesystem::path(s.dir) / "config.json").string());
    const std::string type = root.string("model_type", "");
    hf::ConfigJson vc = root.has("vision_config") ? root.sub("vision_config") : root;
    if (type == "siglip" || type == "siglip_vision_model") {
      s.v2 = false;
    } else if (type == "siglip2" || type == "siglip2_vision_model") {
      s.v2 = true;
    } else {
      throw UserError(fmt::format("{}: model_type \"{}\" is not a SigLIP model{}", root.path(), type,
                                  type.rfind("clip", 0) == 0 ? "; use [vision_encoder] type = \"clip\"" : ""));
    }
    s.vit.hidden = vc.integer("hidden_size", 768);
    s.vit.intermediate = vc.integer("intermediate_size", 3072);
    s.vit.layers = vc.integer("num_hidden_layers", 12);
    s.vit.heads = vc.integer("num_attention_heads", 12);
    s.vit.eps = vc.number("layer_norm_eps", 1e-6);
    s.vit.activation = vc.string("hidden_act", "gelu_pytorch_tanh");
    s.patch_size = vc.integer("patch_size", 16);
    s.use_head = vc.boolean("vision_use_head", true);
    if (vc.integer("num_channels", 3) != 3) throw UserError(fmt::format("{}: forge needs num_channels = 3", root.path()));
    if (!nn::is_hf_activation(s.vit.activation))
      throw UserError(fmt::format("{}: hidden_act \"{}\" is not supported", root.path(), s.vit.activation));
    if (s.v2) {
      s.table = vc.integer("num_patches", 256);
      auto side = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(s.table))));
      if (side * side != s.table)
        throw UserError(fmt::format("{}: num_patches = {} is not a square", root.path(), s.table));
      s.image_size = cfg.image_size > 0 ? cfg.image_size : side * s.patch_size;
    } else {
      s.image_size = vc.integer("image_size", 224);
      if (cfg.image_size > 0 && cfg.image_size != s.image_size)
        throw UserError(fmt::format("siglip: image_size = {} but {} was trained at {} (its position table is fixed); "
                                    "leave image_size at 0",
                                    cfg.image_size, root.path(), s.image_size));
    }
    s.pre = hf::read_preprocess(s.dir, s.pre);
    if (cfg.feature_dim > 0 && cfg.feature_dim != s.vit.hidden)
      throw UserError(fmt::format("siglip: feature_dim = {} disagrees with hidden_size = {} in {}; leave it at 0",
                                  cfg.feature_dim, s.vit.hidden, root.path()));
  }
  if (s.image_size % s.patch_size != 0)
    throw UserError(fmt::format("siglip: image_size {} is not a multiple of patch_size {}", s.image_size, s.patch_size));
  if (cfg.num_tokens > 0 && cfg.num_tokens != s.tokens())
    throw UserError(fmt::format("siglip: num_tokens = {} disagrees with ({} / {})^2 = {} patches; leave it at 0",
                                cfg.num_tokens, s.image_size, s.patch_size, s.tokens()));
  s.pre.image_size = s.image_size;
  s.feature_layer = cfg.feature_layer;
  s.run = vit_layers_to_run("siglip", cfg.feature_layer, s.vit.layers);
  return s;
}

class EmbeddingsImpl : public torch::nn::Module {
 public:
  explicit EmbeddingsImpl(const Spec& s) : spec_(s) {
    const int64_t D = s.vit.hidden, p = s.patch_size;
    if (s.v2) {
      linear_ = register_module("patch_embedding", torch::nn::Linear(3 * p * p, D));
      position_embedding = register_module("position_embedding", torch::nn::Embedding(s.table, D));
    } else {
      conv_ = register_module("patch_embedding",
                              torch::nn::Conv2d(torch::nn::Conv2dOptions(3, D, p).stride(p).bias(true)));
      position_embedding = register_module("position_embedding", torch::nn::Embedding(s.tokens(), D));
    }
    torch::NoGradGuard g;  // a random init like HF's (std 1/sqrt(width)); loaded weights replace it
    position_embedding->weight.normal_(0.0, 1.0 / std::sqrt(static_cast<double>(D)));
  }

  at::Tensor forward(const at::Tensor& px) {
    const int64_t B = px.size(0), p = spec_.patch_size, gh = px.size(2) / p, gw = px.size(3) / p;
    if (!spec_.v2) {
      at::Tensor x = conv_(px.to(conv_->weight.scalar_type())).flatten(2).transpose(1, 2);  // (B, N, D)
      return x + position_embedding->weight;
    }
    // (B, 3, H, W) -> (B, gh*gw, p*p*3): patches row-major, each flattened (row, column, channel).
    at::Tensor patches = px.reshape({B, 3, gh, p, gw, p}).permute({0, 2, 4, 3, 5, 1}).reshape({B, gh * gw, p * p * 3});
    at::Tensor x = linear_(patches.to(linear_->weight.scalar_type()));
    const int64_t side = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(spec_.table))));
    const int64_t D = spec_.vit.hidden;
    at::Tensor table = position_embedding->weight.reshape({side, side, D}).permute({2, 0, 1}).unsqueeze(0);
    at::Tensor pos = at::_upsample_bilinear2d_aa(table.to(at::kFloat), {gh, gw}, /*align_corners=*/false);
    pos = pos.reshape({D, gh * gw}).transpose(0, 1).to(x.scalar_type());
    return x + pos;
  }

  torch::nn::Embedding position_embedding{nullptr};

 private:
  Spec spec_;
  torch::nn::Conv2d conv_{nullptr};
  torch::nn::Linear linear_{nullptr};
};
TORCH_MODULE(Embeddings);

// The attention-pooling head: parameters only (its output is not used).
class HeadImpl : public torch::nn::Module {
 public:
  explicit HeadImpl(const nn::VitOptions& o) {
    register_parameter("probe", torch::randn({1, 1, o.hidden}), false);
    auto attention = register_module("attention", std::make_shared<torch::nn::Module>());
    attention->register_parameter("in_proj_weight", torch::randn({3 * o.hidden, o.hidden}) * 0.02, false);
    attention->register_parameter("in_proj_bias", torch::zeros({3 * o.hidden}), false);
    attention->register_module("out_proj", torch::nn::Linear(o.hidden, o.hidden));
    register_module("layernorm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.hidden}).eps(o.eps)));
    register_module("mlp", nn::VitMlp(o.hidden, o.intermediate, o.activation));
    for (auto& p : parameters()) p.requires_grad_(false);
  }
};
TORCH_MODULE(Head);

class TowerImpl : public torch::nn::Module {
 public:
  explicit TowerImpl(const Spec& s) : spec_(s) {
    embeddings = register_module("embeddings", Embeddings(s));
    encoder = register_module("encoder", nn::VitEncoder(s.vit));
    post_layernorm = register_module(
        "post_layernorm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({s.vit.hidden}).eps(s.vit.eps)));
    if (s.use_head) register_module("head", Head(s.vit));
  }
  // feature_layer 0: last_hidden_state (after post_layernorm); k < 0: hidden_states[k], the layers after it skipped.
  at::Tensor forward(const at::Tensor& px) {
    at::Tensor h = encoder->forward(embeddings(px), spec_.run);
    return spec_.feature_layer == 0 ? post_layernorm(h) : h;
  }
  Embeddings embeddings{nullptr};
  nn::VitEncoder encoder{nullptr};
  torch::nn::LayerNorm post_layernorm{nullptr};

 private:
  Spec spec_;
};
TORCH_MODULE(Tower);

class SiglipEncoder final : public VisionEncoder {
 public:
  explicit SiglipEncoder(const Spec& s) : spec_(s) { vision_tower = register_module("vision_tower", Tower(s)); }
  at::Tensor forward(const at::Tensor& px) override {
    if (px.dim() != 4 || px.size(1) != 3 || px.size(2) != spec_.image_size || px.size(3) != spec_.image_size)
      throw InvalidArgument(fmt::format("encoder siglip: expected (B, 3, {0}, {0}) pixels, got ({1})", spec_.image_size,
                                        fmt::join(px.sizes().vec(), ", ")));
    return vision_tower(px);
  }
  int64_t feature_dim() const override { return spec_.vit.hidden; }
  int64_t num_tokens() const override { return spec_.tokens(); }
  Preprocess preprocess() const override { return spec_.pre; }
  double forward_flops() const override {
    const double N = spec_.tokens(), D = spec_.vit.hidden, p = spec_.patch_size;
    const double used = static_cast<double>(spec_.run) / static_cast<double>(spec_.vit.layers);
    return vision_tower->encoder->flops(spec_.tokens()) * used + 2 * N * 3 * p * p * D;
  }
  BlockStack* block_stack() override { return vision_tower->encoder.get(); }
  Tower vision_tower{nullptr};

 private:
  Spec spec_;
};

class Plugin final : public EncoderPlugin {
 public:
  std::unique_ptr<EncoderConfig> make_config() const override { return std::make_unique<Config>(); }
  EncoderInfo describe(const EncoderConfig& cfg) const override {
    Spec s = spec_of(static_cast<const Config&>(cfg));
    return EncoderInfo{s.vit.hidden, s.tokens(), s.pre};
  }
  std::shared_ptr<VisionEncoder> create(const EncoderConfig& cfg, const BuildContext& ctx) const override {
    Spec s = spec_of(static_cast<const Config&>(cfg));
    auto enc = std::make_shared<SiglipEncoder>(s);
    if (!s.dir.empty()) {
      std::string prefix = hf::find_prefix(s.dir, {"vision_model.", ""});
      int64_t n = hf::load_weights(*enc->vision_tower, s.dir, prefix);
      ctx.logger->info("loaded {} {} tensors from {} ({} layers, width {}, {} tokens of {}x{} images)", n,
                       s.v2 ? "SigLIP2" : "SigLIP", s.dir, s.vit.layers, s.vit.hidden, s.tokens(), s.image_size,
                       s.image_size);
    }
    return enc;
  }
};

void register_plugin(Registrar& r) {
  r.add_encoder(std::make_shared<Plugin>());
  r.add_alias("siglip2");  // KempnerForge's name for it
}

}  // namespace forge::plugins::encoder::siglip

FORGE_PLUGIN(forge::plugins::encoder::siglip::register_plugin,
             "SigLIP / SigLIP2 vision tower loaded from a Hugging Face folder (or randomly initialised)")
