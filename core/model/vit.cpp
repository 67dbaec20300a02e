// Vision-transformer blocks (forge/vit.h), HF semantics.
#include "forge/vit.h"

#include <cmath>
#include <filesystem>

#include <fmt/format.h>

#include "core/model/checkpointing.h"
#include "forge/nn.h"
#include "forge/error.h"

namespace forge::nn {

bool is_hf_activation(const std::string& n) {
  return n == "gelu" || n == "gelu_pytorch_tanh" || n == "gelu_new" || n == "quick_gelu" || n == "relu" || n == "silu";
}

at::Tensor hf_activation(const at::Tensor& x, const std::string& n) {
  if (n == "gelu") return at::gelu(x);
  if (n == "gelu_pytorch_tanh" || n == "gelu_new") return at::gelu(x, "tanh");
  if (n == "quick_gelu") return x * at::sigmoid(1.702 * x);
  if (n == "relu") return at::relu(x);
  if (n == "silu") return at::silu(x);
  throw InvalidArgument(fmt::format("unknown activation \"{}\" (forge knows gelu, gelu_pytorch_tanh, gelu_new, "
                                    "quick_gelu, relu, silu)",
                                    n));
}

VitAttentionImpl::VitAttentionImpl(int64_t hidden, int64_t heads_) : heads(heads_) {
  if (heads <= 0 || hidden % heads != 0)
    throw InvalidArgument(fmt::format("vision attention: {} heads do not divide width {}", heads, hidden));
  k_proj = register_module("k_proj", torch::nn::Linear(hidden, hidden));
  v_proj = register_module("v_proj", torch::nn::Linear(hidden, hidden));
  q_proj = register_module("q_proj", torch::nn::Linear(hidden, hidden));
  out_proj = register_module("out_proj", torch::nn::Linear(hidden, hidden));
}
VitAttentionImpl::~VitAttentionImpl() = default;

at::Tensor VitAttentionImpl::forward(const at::Tensor& x) {
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2), hd = D / heads;
  auto split = [&](const at::Tensor& t) { return t.view({B, N, heads, hd}).transpose(1, 2); };
  at::Tensor o = at::scaled_dot_product_attention(split(q_proj(x)), split(k_proj(x)), split(v_proj(x)));
  return out_proj(o.transpose(1, 2).reshape({B, N, D}));
}

VitMlpImpl::VitMlpImpl(int64_t hidden, int64_t intermediate, std::string act) : activation(std::move(act)) {
  if (!is_hf_activation(activation)) hf_activation(at::zeros({1}), activation);  // throws with the list
  fc1 = register_module("fc1", torch::nn::Linear(hidden, intermediate));
  fc2 = register_module("fc2", torch::nn::Linear(intermediate, hidden));
}
VitMlpImpl::~VitMlpImpl() = default;
at::Tensor VitMlpImpl::forward(const at::Tensor& x) { return fc2(hf_activation(fc1(x), activation)); }

VitLayerImpl::VitLayerImpl(const VitOptions& o) {
  layer_norm1 = register_module("layer_norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.hidden}).eps(o.eps)));
  self_attn = register_module("self_attn", VitAttention(o.hidden, o.heads));
  layer_norm2 = register_module("layer_norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.hidden}).eps(o.eps)));
  mlp = register_module("mlp", VitMlp(o.hidden, o.intermediate, o.activation));
}
VitLayerImpl::~VitLayerImpl() = default;
at::Tensor VitLayerImpl::forward(const at::Tensor& x) {
  const at::Tensor h = nn::residual_add(x, self_attn(layer_norm1(x)));
  return nn::residual_add(h, mlp(layer_norm2(h)));
}

VitEncoderImpl::VitEncoderImpl(const VitOptions& o) : options_(o) {
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.layers; ++i) layers->push_back(VitLayer(o));
}
VitEncoderImpl::~VitEncoderImpl() = default;
at::Tensor VitEncoderImpl::forward(at::Tensor x, int64_t n) {
  const int64_t count = n < 0 ? static_cast<int64_t>(layers->size()) : std::min<int64_t>(n, layers->size());
  const bool checkpoint = ac_every_ > 0 && is_training() && at::GradMode::is_enabled();
  for (int64_t i = 0; i < count; ++i) {
    auto* layer = layers->ptr(i)->as<VitLayerImpl>();
    ParamUnit* unit = units_.empty() ? nullptr : units_[static_cast<size_t>(i)].get();
    const bool recompute = checkpoint && (i + 1) % ac_every_ == 0;
    if (!recompute && !unit) {
      x = layer->forward(x);
      continue;
    }
    std::vector<at::Tensor> weights;  // trainable tensors the block reads that no unit gathers
    if (!unit)
      for (const auto& p : layer->parameters(true))
        if (p.requires_grad()) weights.push_back(p);
    // Sharded: the next block's parameters are gathered while this one computes (backward: the one below).
    ParamUnit* below = unit && i > 0 ? units_[static_cast<size_t>(i - 1)].get() : nullptr;
    if (unit && i + 1 < count) units_[static_cast<size_t>(i + 1)]->prefetch();
    x = run_block([layer](const at::Tensor& h, const std::vector<at::Tensor>&) { return layer->forward(h); }, x, {},
                  weights, BlockPolicy{recompute, unit, below});
  }
  return x;
}

std::vector<std::shared_ptr<torch::nn::Module>> VitEncoderImpl::blocks() const {
  std::vector<std::shared_ptr<torch::nn::Module>> out;
  for (size_t i = 0; i < layers->size(); ++i) out.push_back(layers->ptr(i));
  return out;
}

void VitEncoderImpl::set_activation_checkpointing(int64_t every) {
  if (every < 0) throw InvalidArgument(fmt::format("activation checkpointing every {} layers: must be >= 0", every));
  ac_every_ = every;
}

void VitEncoderImpl::set_block_units(std::vector<std::shared_ptr<ParamUnit>> units) {
  if (!units.empty() && units.size() != layers->size())
    throw InvalidArgument(fmt::format("vision tower: {} parameter units for {} layers", units.size(), layers->size()));
  units_ = std::move(units);
}
double VitEncoderImpl::flops(int64_t n) const {
  const double N = static_cast<double>(n), D = options_.hidden, I = options_.intermediate;
  return static_cast<double>(options_.layers) * (2 * N * (4 * D * D + 2 * D * I) + 4 * N * N * D);
}

}  // namespace forge::nn

namespace forge {

void VitEncoderConfig::visit(ConfigVisitor& v) {
  EncoderConfig::visit(v);
  v.field("image_size", image_size,
          "Image side in pixels. 0: the model's own (config.json; for SigLIP2 sqrt(num_patches) x patch_size), or "
          "224 for a random init. SigLIP and CLIP accept only their own size; SigLIP2 any multiple of patch_size.",
          Bounds::non_negative());
  v.field("patch_size", patch_size, "Random init only: patch side in pixels.", Bounds::positive());
  v.field("num_layers", num_layers, "Random init only: transformer layers.", Bounds::positive());
  v.field("num_heads", num_heads, "Random init only: attention heads (must divide feature_dim).", Bounds::positive());
  v.field("intermediate_size", intermediate_size, "Random init only: MLP width; 0: 4 x feature_dim.",
          Bounds::non_negative());
  Bounds at_most_zero;
  at_most_zero.max = 0.0;
  v.field("feature_layer", feature_layer,
          "Which hidden state the tower outputs. 0: the default (SigLIP: last_hidden_state after post_layernorm; "
          "CLIP: the last layer before post_layernorm). A negative k: Hugging Face's hidden_states[k] without "
          "post_layernorm, as LLaVA's vision_feature_layer (-1: the last layer, -2: the penultimate, LLaVA-1.5's "
          "choice; -(layers + 1): the embeddings); the layers after it are not run. A SigLIP tower needs k < 0 to "
          "export as LLaVA (docs/export.md).",
          at_most_zero);
}

int64_t vit_layers_to_run(const char* plugin, int64_t feature_layer, int64_t layers) {
  if (feature_layer == 0) return layers;
  if (feature_layer < -(layers + 1))
    throw UserError(fmt::format("{}: vision_encoder.feature_layer = {} is out of range: the tower has {} layers, so "
                                "hidden_states[k] exists for k in -1 .. -{} (-{}: the embeddings), or 0 for the default",
                                plugin, feature_layer, layers, layers + 1, layers + 1));
  return layers + 1 + feature_layer;
}

nn::VitOptions VitEncoderConfig::random_init(const std::string& plugin, nn::VitOptions o) const {
  o.hidden = feature_dim > 0 ? feature_dim : 768;
  o.heads = num_heads;
  o.layers = num_layers;
  o.intermediate = intermediate_size > 0 ? intermediate_size : 4 * o.hidden;
  if (o.hidden % o.heads != 0)
    throw UserError(fmt::format("{}: num_heads = {} must divide feature_dim = {}", plugin, o.heads, o.hidden));
  return o;
}

std::string VitEncoderConfig::model_dir(const std::string& plugin) const {
  std::string dir = resolved_path();
  if (!std::filesystem::is_directory(dir))
    throw UserError(fmt::format("{}: path \"{}\" is not a folder (expected a Hugging Face model folder with "
                                "config.json and model.safetensors)",
                                plugin, dir));
  return dir;
}

}  // namespace forge
