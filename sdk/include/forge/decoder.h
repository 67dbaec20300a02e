// The core decoder: token embedding, a stack of layers, final norm, optional
// output slice, output head. It knows no arch by name: an arch plugin shapes
// it through DecoderHooks (which layer type to build, extra modules such as
// cross-attention blocks, what runs after each layer, the final norm, RoPE
// positions, weight init).
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "forge/config.h"
#include "forge/export.h"
#include "forge/modality.h"
#include "forge/moe.h"
#include "forge/nn.h"
#include "forge/param_unit.h"

namespace forge {

struct BuildContext;
class DecoderImpl;

// KV cache for generation: one LayerKV per decoder layer plus arch state
// (e.g. cross-attention keys/values of the image, computed once).
struct FORGE_API KVCache {
  std::vector<nn::LayerKV> layers;
  std::map<std::string, at::Tensor> arch_state;
  int64_t length = 0;    // positions already in the cache
  int64_t capacity = 0;  // positions the cache can hold
};

// What every layer and hook sees during one decoder forward. With a KV cache,
// modality.key_padding_mask (when set) covers start_pos + length positions:
// the cached ones and this chunk's, as the attention's keys do.
struct FORGE_API DecoderStep {
  const ModalityContext& modality;
  nn::AttentionInputs attention;  // RoPE rows, start position, masks
  KVCache* cache = nullptr;       // null in training
  int64_t start_pos = 0;          // absolute position of the chunk's first element
  int64_t length = 0;             // positions in this chunk
};

// One layer of the decoder stack, registered as layers.<i>.
class FORGE_API DecoderLayer : public torch::nn::Module {
 public:
  ~DecoderLayer() override;
  virtual at::Tensor forward(const at::Tensor& h, const DecoderStep& step, nn::LayerKV* kv) = 0;
};

// Pre-norm block: h + attention(attention_norm(h)), then h + mlp(mlp_norm(h)).
// Keys: attention_norm.*, attention.{q,k,v,o}_proj.weight, mlp_norm.*, mlp.*.
// Layer `layer_index` gets a mixture-of-experts MLP (`moe`, under the same
// key "mlp") when nn::is_moe_layer(cfg, layer_index), else a dense one (`mlp`).
class FORGE_API TransformerBlockImpl : public DecoderLayer {
 public:
  TransformerBlockImpl(const ModelConfig& cfg, int64_t layer_index);
  ~TransformerBlockImpl() override;
  at::Tensor forward(const at::Tensor& h, const DecoderStep& step, nn::LayerKV* kv) override;
  at::Tensor feed_forward(const at::Tensor& x);  // mlp(x) or moe(x)

  nn::Norm attention_norm{nullptr};
  nn::Attention attention{nullptr};
  nn::Norm mlp_norm{nullptr};
  nn::Mlp mlp{nullptr};  // dense layers
  nn::MoE moe{nullptr};  // MoE layers
};

// Weights of a plain dense decoder under the reference's names, relative to
// the decoder ("token_embedding.embedding.weight", "layers.0.attention.q_proj.weight",
// "layers.0.mlp.down_proj.weight", "norm.weight", "output_head.proj.weight"):
// a pretrained LLM ([model] init_from_hf) or a dense checkpoint (MoT's warm
// start). An arch copies them into its own layout (DecoderHooks::load_dense).
class FORGE_API DenseWeights {
 public:
  virtual ~DenseWeights();
  virtual bool contains(const std::string& name) const = 0;
  // The tensor in fp32 (any stored float dtype is converted).
  virtual at::Tensor load(const std::string& name) const = 0;
  // Where `name` comes from, for messages ("<file>: 'model.layers.0.self_attn.q_proj.weight'").
  virtual std::string where(const std::string& name) const = 0;
  // Copies `name` into `dst`. A shape mismatch is a FormatError naming the
  // source, the key and both shapes; an absent name returns false (or, when
  // `required`, is a FormatError).
  bool copy_to(const std::string& name, at::Tensor dst, bool required = true) const;
};

// How an arch shapes the decoder. Every method has a default that gives the
// plain (text-only / joint-decoder) transformer.
class FORGE_API DecoderHooks {
 public:
  virtual ~DecoderHooks();
  // Layer `index` of the stack. Default: TransformerBlock.
  virtual std::shared_ptr<DecoderLayer> make_layer(int64_t index, const ModelConfig& cfg);
  // Register arch modules on the decoder after the layers (state-dict names
  // are the arch's: e.g. "cross_attention_layers", "mot_norms").
  virtual void add_modules(DecoderImpl& decoder);
  // RoPE rows used by positions [start, start + length). Default: the same numbers.
  virtual at::Tensor rope_positions(int64_t start, int64_t length, const at::Device& device) const;
  // Runs after layer `index` (e.g. a cross-attention block). Default: identity.
  virtual at::Tensor after_layer(int64_t index, const at::Tensor& h, const DecoderStep& step);
  // The final norm. Default: decoder.norm.
  virtual at::Tensor final_norm(const at::Tensor& h, const DecoderStep& step, DecoderImpl& decoder);
  // After the core's init scheme: e.g. zero the output projections that make
  // a fresh block an identity.
  virtual void init_weights(DecoderImpl& decoder);
  // Once per fresh training run, before the first step (e.g. a warm start).
  virtual void prepare_fresh_run(DecoderImpl& decoder, const BuildContext& ctx);
  // Copies pretrained dense-decoder weights into the decoder. Default: every
  // parameter of every TransformerBlock layer, the token embedding, the final
  // norm and the output head (unless tied) by its own name, each required;
  // arch modules the dense model lacks (e.g. cross-attention blocks) keep
  // their init. An arch whose layers are not TransformerBlocks overrides this
  // (MoT copies each dense tensor into every modality's copy, D4). Returns the
  // tensors copied.
  virtual int64_t load_dense(DecoderImpl& decoder, const DenseWeights& weights);
  // The inverse, for export as a Hugging Face causal LM: the decoder's text
  // path as a plain dense decoder, under the names load_dense takes (the
  // tensors themselves, not copies). Default: the TransformerBlock layers,
  // embedding, final norm and head (not when tied). MoT gives its text
  // copies. Empty when the arch's text path is no dense decoder.
  virtual std::vector<std::pair<std::string, at::Tensor>> dense_text_weights(DecoderImpl& decoder);
  // Extra multiply-add FLOPs per sample in one forward that the dense
  // formula misses (e.g. cross-attention blocks), for MFU.
  virtual double extra_forward_flops(int64_t n_visual, int64_t text_len) const;
  // Why this arch cannot generate text token by token (forge generate, the
  // KV-cache decode), or empty when it can. Default: empty.
  virtual std::string generation_refusal() const;
};

// The decoder ("transformer" in the VLM's state dict).
class FORGE_API DecoderImpl : public torch::nn::Module {
 public:
  DecoderImpl(const ModelConfig& cfg, std::shared_ptr<DecoderHooks> hooks);
  ~DecoderImpl() override;

  // tokens: (B, T) int64, or undefined when modality.inputs_embeds is given.
  // Returns logits (B, S_out, V). With `cache`, positions continue from
  // cache->length and the cache grows by this chunk.
  at::Tensor forward(const at::Tensor& tokens, const ModalityContext& modality = ModalityContext(),
                     KVCache* cache = nullptr, const at::Tensor& doc_ids = at::Tensor());

  // An empty cache for `batch` sequences of up to `capacity` positions.
  KVCache make_cache(int64_t batch, int64_t capacity, at::ScalarType dtype, const at::Device& device) const;

  // The core init scheme (spec section 2.6), then hooks->init_weights.
  void init_weights();

  // Activation checkpointing in training: every `every`-th layer (with its
  // after_layer hook, e.g. a cross-attention block) keeps only its input and
  // is recomputed in backward. 0: off; 1: every layer ("full"); 2: every
  // second layer ("selective").
  void set_activation_checkpointing(int64_t every);
  int64_t activation_checkpointing() const { return ac_every_; }

  // Interpretability (forge activations): each later forward keeps the
  // residual stream after every layer in `layers` (after its after_layer hook,
  // e.g. a cross-attention block), detached, in captured(). With `attention`,
  // also the attention probabilities (B, H, S, S) of those layers' first
  // nn::Attention module, in captured_attention() (a layer without one, such
  // as MoT's, has no entry). Empty (the default): nothing is kept and the
  // forward pays one emptiness check.
  void set_capture(std::set<int64_t> layers, bool attention = false);
  const std::map<int64_t, at::Tensor>& captured() const { return captured_; }
  const std::map<int64_t, at::Tensor>& captured_attention() const { return captured_attention_; }

  // Fully sharded data parallelism: layer i's parameters live in units[i]
  // and are gathered only while it runs (forward and backward). Empty: the
  // layers own whole parameters (the default).
  void set_layer_units(std::vector<std::shared_ptr<ParamUnit>> units);

  const ModelConfig& config() const { return cfg_; }
  DecoderHooks& hooks() { return *hooks_; }
  const DecoderHooks& hooks() const { return *hooks_; }
  const std::vector<std::shared_ptr<DecoderLayer>>& layer_list() const { return layer_list_; }

  nn::TokenEmbedding token_embedding{nullptr};
  torch::nn::ModuleDict layers{nullptr};
  nn::Norm norm{nullptr};
  nn::OutputHead output_head{nullptr};

 private:
  at::Tensor block_layer(size_t i, const at::Tensor& h, const DecoderStep& step,
                         const std::vector<at::Tensor>& shared_weights, bool recompute);

  ModelConfig cfg_;
  std::shared_ptr<DecoderHooks> hooks_;
  nn::RotaryEmbedding rope_;
  std::vector<std::shared_ptr<DecoderLayer>> layer_list_;
  int64_t ac_every_ = 0;
  std::vector<std::shared_ptr<ParamUnit>> layer_units_;
  std::set<int64_t> capture_;
  std::map<int64_t, at::Tensor> captured_;
  std::map<int64_t, nn::AttentionImpl*> capture_attention_;  // layer -> the attention whose probabilities it keeps
  std::map<int64_t, at::Tensor> captured_attention_;
};
TORCH_MODULE(Decoder);

}  // namespace forge
