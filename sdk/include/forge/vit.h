// Vision-transformer blocks shared by encoder plugins (SigLIP, SigLIP2, CLIP),
// with Hugging Face's parameter names so HF weights load by name:
//   encoder.layers.<i>.{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2, mlp.{fc1,fc2}}.{weight,bias}
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <string>

#include "forge/config.h"
#include "forge/export.h"
#include "forge/param_unit.h"

namespace forge::nn {

// HF activations by their config name: "gelu" (erf), "gelu_pytorch_tanh" /
// "gelu_new" (tanh approximation), "quick_gelu" (x * sigmoid(1.702 x)),
// "relu", "silu". Unknown names throw InvalidArgument.
FORGE_API at::Tensor hf_activation(const at::Tensor& x, const std::string& name);
FORGE_API bool is_hf_activation(const std::string& name);

struct FORGE_API VitOptions {
  int64_t hidden = 768;
  int64_t heads = 12;
  int64_t intermediate = 3072;
  int64_t layers = 12;
  double eps = 1e-6;
  std::string activation = "gelu_pytorch_tanh";
};

// Bidirectional multi-head self-attention with biased projections.
class FORGE_API VitAttentionImpl : public torch::nn::Module {
 public:
  VitAttentionImpl(int64_t hidden, int64_t heads);
  ~VitAttentionImpl() override;
  at::Tensor forward(const at::Tensor& x);
  torch::nn::Linear k_proj{nullptr}, v_proj{nullptr}, q_proj{nullptr}, out_proj{nullptr};
  int64_t heads;
};
TORCH_MODULE(VitAttention);

class FORGE_API VitMlpImpl : public torch::nn::Module {
 public:
  VitMlpImpl(int64_t hidden, int64_t intermediate, std::string activation);
  ~VitMlpImpl() override;
  at::Tensor forward(const at::Tensor& x);
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  std::string activation;
};
TORCH_MODULE(VitMlp);

// Pre-norm layer: x + attn(ln1(x)), then x + mlp(ln2(x)).
class FORGE_API VitLayerImpl : public torch::nn::Module {
 public:
  explicit VitLayerImpl(const VitOptions& o);
  ~VitLayerImpl() override;
  at::Tensor forward(const at::Tensor& x);
  torch::nn::LayerNorm layer_norm1{nullptr}, layer_norm2{nullptr};
  VitAttention self_attn{nullptr};
  VitMlp mlp{nullptr};
};
TORCH_MODULE(VitLayer);

// `layers.<i>` over the options' layer count.
class FORGE_API VitEncoderImpl : public torch::nn::Module, public BlockStack {
 public:
  explicit VitEncoderImpl(const VitOptions& o);
  ~VitEncoderImpl() override;
  // Runs the first n layers (all of them when n < 0).
  at::Tensor forward(at::Tensor x, int64_t n = -1);
  torch::nn::ModuleList layers{nullptr};
  // Multiply-add FLOPs x2 of a forward over n tokens.
  double flops(int64_t n) const;

  std::vector<std::shared_ptr<torch::nn::Module>> blocks() const override;
  void set_activation_checkpointing(int64_t every) override;
  void set_block_units(std::vector<std::shared_ptr<ParamUnit>> units) override;

 private:
  VitOptions options_;
  int64_t ac_every_ = 0;
  std::vector<std::shared_ptr<ParamUnit>> units_;
};
TORCH_MODULE(VitEncoder);

}  // namespace forge::nn

namespace forge {

// [vision_encoder] keys shared by the ViT towers (siglip, clip). With an empty
// path they give the shape of a randomly initialised tower; with a path the
// shape comes from the folder's config.json (image_size may still select a
// size for towers whose position table can be resized).
struct FORGE_API VitEncoderConfig : EncoderConfig {
  int64_t image_size = 0;
  int64_t patch_size = 16;
  int64_t num_layers = 12;
  int64_t num_heads = 12;
  int64_t intermediate_size = 0;
  int64_t feature_layer = 0;  // 0: the tower's default output; k < 0: HF's hidden_states[k]

  void visit(ConfigVisitor& v) override;
  // A random-init tower: `base` (activation, eps) with width feature_dim
  // (0: 768), num_heads, num_layers and intermediate_size (0: 4 x width).
  // UserError naming `plugin` when the heads do not divide the width.
  nn::VitOptions random_init(const std::string& plugin, nn::VitOptions base) const;
  // resolved_path(), checked to be a folder (UserError naming `plugin`).
  std::string model_dir(const std::string& plugin) const;
};

// The layers a tower of `layers` layers runs for `feature_layer` (0: all of
// them); a UserError naming `plugin` and the range when it is out of it.
FORGE_API int64_t vit_layers_to_run(const char* plugin, int64_t feature_layer, int64_t layers);

}  // namespace forge
