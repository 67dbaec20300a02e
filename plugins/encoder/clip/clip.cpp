// encoder/clip: [vision_encoder] type = "clip".
//
// The CLIP vision tower in LibTorch, loaded from a local Hugging Face folder
// (config.json of a CLIPModel or a CLIPVisionModel; the text tower and the
// projections are ignored). Embeddings are [class token, patches] + a learned
// position table, then pre_layrnorm (HF's spelling) and the encoder. The
// output is the encoder's last hidden state with the class token removed, so
// the N patch tokens form a square grid that pooling adapters can use; it is
// taken before post_layernorm (which HF applies to the pooled class token
// only; its weights are kept for key compatibility). feature_layer = k < 0
// takes HF's hidden_states[k] instead (LLaVA's vision_feature_layer; -1 is the
// default). Preprocessing defaults to
// CLIP's own mean/std (D6), or preprocessor_config.json when present.
// With an empty path, a randomly initialised, trainable CLIP tower.
// State-dict keys: vision_encoder.vision_tower.<HF vision-model keys>.
#include <filesystem>

#include <fmt/format.h>

#include "forge/forge.h"
#include "forge/hf.h"
#include "forge/vit.h"

namespace forge::plugins::encoder::clip {

using Config = VitEncoderConfig;  // the [vision_encoder] keys of every ViT tower (forge/vit.h)

struct Spec {
  nn::VitOptions vit;
  int64_t image_size = 224, patch_size = 16;
  Preprocess pre;
  std::string dir;
  int64_t feature_layer = 0;  // 0 or k < 0: hidden_states[k] (0 = -1)
  int64_t run = 0;            // layers to run
  int64_t grid() const { return image_size / patch_size; }
  int64_t tokens() const { return grid() * grid(); }
};

Spec spec_of(const Config& cfg) {
  Spec s;
  s.vit.eps = 1e-5;
  s.vit.activation = "quick_gelu";
  s.pre.resize = "bicubic";
  s.pre.mean = {0.48145466, 0.4578275, 0.40821073};  // CLIPImageProcessor's constants
  s.pre.std = {0.26862954, 0.26130258, 0.27577711};
  if (cfg.path.empty()) {
    s.vit = cfg.random_init("clip", s.vit);
    s.image_size = cfg.image_size > 0 ? cfg.image_size : 224;
    s.patch_size = cfg.patch_size;
  } else {
    s.dir = cfg.model_dir("clip");
    hf::ConfigJson root((std::filesystem::path(s.dir) / "config.json").string());
    const std::string type = root.string("model_type", "");
    if (type != "clip" && type != "clip_vision_model")
      throw UserError(fmt::format("{}: model_type \"{}\" is not a CLIP model{}", root.path(), type,
                                  type.rfind("siglip", 0) == 0 ? "; use [vision_encoder] type = \"siglip\"" : ""));
    hf::ConfigJson vc = root.has("vision_config") ? root.sub("vision_config") : root;
    s.vit.hidden = vc.integer("hidden_size", 768);
    s.vit.intermediate = vc.integer("intermediate_size", 3072);
    s.vit.layers = vc.integer("num_hidden_layers", 12);
    s.vit.heads = vc.integer("num_attention_heads", 12);
    s.vit.eps = vc.number("layer_norm_eps", 1e-5);
    s.vit.activation = vc.string("hidden_act", "quick_gelu");
    s.image_size = vc.integer("image_size", 224);
    s.patch_size = vc.integer("patch_size", 32);
    if (vc.integer("num_channels", 3) != 3) throw UserError(fmt::format("{}: forge needs num_channels = 3", root.path()));
    if (!nn::is_hf_activation(s.vit.activation))
      throw UserError(fmt::format("{}: hidden_act \"{}\" is not supported", root.path(), s.vit.activation));
    if (cfg.image_size > 0 && cfg.image_size != s.image_size)
      throw UserError(fmt::format("clip: image_size = {} but {} was trained at {} (its position table is fixed); "
                                  "leave image_size at 0",
                                  cfg.image_size, root.path(), s.image_size));
    if (cfg.feature_dim > 0 && cfg.feature_dim != s.vit.hidden)
      throw UserError(fmt::format("clip: feature_dim = {} disagrees with hidden_size = {} in {}; leave it at 0",
                                  cfg.feature_dim, s.vit.hidden, root.path()));
    s.pre = hf::read_preprocess(s.dir, s.pre);
  }
  if (s.image_size % s.patch_size != 0)
    throw UserError(fmt::format("clip: image_size {} is not a multiple of patch_size {}", s.image_size, s.patch_size));
  if (cfg.num_tokens > 0 && cfg.num_tokens != s.tokens())
    throw UserError(fmt::format("clip: num_tokens = {} disagrees with ({} / {})^2 = {} patch tokens (the class token "
                                "is removed); leave it at 0",
                                cfg.num_tokens, s.image_size, s.patch_size, s.tokens()));
  s.pre.image_size = s.image_size;
  s.feature_layer = cfg.feature_layer;
  s.run = vit_layers_to_run("clip", cfg.feature_layer, s.vit.layers);
  return s;
}

class EmbeddingsImpl : public torch::nn::Module {
 public:
  explicit EmbeddingsImpl(const Spec& s) {
    const int64_t D = s.vit.hidden, p = s.patch_size;
    class_embedding = register_parameter("class_embedding", torch::randn({D}) * 0.02);
    patch_embedding =
        register_module("patch_embedding", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, D, p).stride(p).bias(false)));
    position_embedding = register_module("position_embedding", torch::nn::Embedding(s.tokens() + 1, D));
    torch::NoGradGuard g;
    position_embedding->weight.normal_(0.0, 0.02);
  }
  at::Tensor forward(const at::Tensor& px) {
    const int64_t B = px.size(0);
    at::Tensor patches = patch_embedding(px.to(patch_embedding->weight.scalar_type())).flatten(2).transpose(1, 2);
    at::Tensor cls = class_embedding.to(patches.scalar_type()).expand({B, 1, class_embedding.size(0)});
    return at::cat({cls, patches}, 1) + position_embedding->weight;
  }
  at::Tensor class_embedding;
  torch::nn::Conv2d patch_embedding{nullptr};
  torch::nn::Embedding position_embedding{nullptr};
};
TORCH_MODULE(Embeddings);

class TowerImpl : public torch::nn::Module {
 public:
  explicit TowerImpl(const Spec& s) : run_(s.run) {
    auto ln = [&] { return torch::nn::LayerNorm(torch::nn::LayerNormOptions({s.vit.hidden}).eps(s.vit.eps)); };
    embeddings = register_module("embeddings", Embeddings(s));
    pre_layrnorm = register_module("pre_layrnorm", ln());
    encoder = register_module("encoder", nn::VitEncoder(s.vit));
    register_module("post_layernorm", ln());  // applied by HF to the pooled class token only
  }
  // (B, 1 + N, D): hidden_states[feature_layer] (the last one by default), class token first.
  at::Tensor forward(const at::Tensor& px) { return encoder->forward(pre_layrnorm(embeddings(px)), run_); }
  Embeddings embeddings{nullptr};
  torch::nn::LayerNorm pre_layrnorm{nullptr};
  nn::VitEncoder encoder{nullptr};

 private:
  int64_t run_ = 0;
};
TORCH_MODULE(Tower);

class ClipEncoder final : public VisionEncoder {
 public:
  explicit ClipEncoder(const Spec& s) : spec_(s) { vision_tower = register_module("vision_tower", Tower(s)); }
  at::Tensor forward(const at::Tensor& px) override {
    if (px.dim() != 4 || px.size(1) != 3 || px.size(2) != spec_.image_size || px.size(3) != spec_.image_size)
      throw InvalidArgument(fmt::format("encoder clip: expected (B, 3, {0}, {0}) pixels, got ({1})", spec_.image_size,
                                        fmt::join(px.sizes().vec(), ", ")));
    at::Tensor h = vision_tower(px);
    return h.narrow(1, 1, h.size(1) - 1);  // drop the class token
  }
  int64_t feature_dim() const override { return spec_.vit.hidden; }
  int64_t num_tokens() const override { return spec_.tokens(); }
  Preprocess preprocess() const override { return spec_.pre; }
  double forward_flops() const override {
    const double N = spec_.tokens(), D = spec_.vit.hidden, p = spec_.patch_size;
    const double used = static_cast<double>(spec_.run) / static_cast<double>(spec_.vit.layers);
    return vision_tower->encoder->flops(spec_.tokens() + 1) * used + 2 * N * 3 * p * p * D;
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
    auto enc = std::make_shared<ClipEncoder>(s);
    if (!s.dir.empty()) {
      std::string prefix = hf::find_prefix(s.dir, {"vision_model.", ""});
      int64_t n = hf::load_weights(*enc->vision_tower, s.dir, prefix);
      ctx.logger->info("loaded {} CLIP tensors from {} ({} layers, width {}, {} tokens of {}x{} images)", n, s.dir,
                       s.vit.layers, s.vit.hidden, s.tokens(), s.image_size, s.image_size);
    }
    return enc;
  }
};

void register_plugin(Registrar& r) { r.add_encoder(std::make_shared<Plugin>()); }

}  // namespace forge::plugins::encoder::clip

FORGE_PLUGIN(forge::plugins::encoder::clip::register_plugin,
             "CLIP vision tower (class token removed) loaded from a Hugging Face folder (or randomly initialised)")
