// The core decoder (forge/decoder.h). It names no arch: everything arch
// specific comes through DecoderHooks.
#include "forge/decoder.h"

#include <cmath>

#include <fmt/format.h>

#include "core/model/checkpointing.h"
#include "core/util/strings.h"
#include "core/util/tensor.h"
#include "forge/error.h"

namespace forge {

DecoderLayer::~DecoderLayer() = default;

// ------------------------------------------------------------ TransformerBlock

TransformerBlockImpl::TransformerBlockImpl(const ModelConfig& cfg, int64_t layer_index) {
  attention_norm = register_module("attention_norm", nn::Norm(cfg.dim, cfg.norm_type, cfg.norm_eps));
  attention = register_module("attention", nn::Attention(nn::attention_options(cfg)));
  mlp_norm = register_module("mlp_norm", nn::Norm(cfg.dim, cfg.norm_type, cfg.norm_eps));
  if (nn::is_moe_layer(cfg, layer_index))
    moe = register_module("mlp", nn::MoE(nn::moe_options(cfg)));
  else
    mlp = register_module("mlp", nn::Mlp(cfg.dim, cfg.ffn_hidden(), cfg.activation, cfg.mlp_bias));
}
TransformerBlockImpl::~TransformerBlockImpl() = default;

at::Tensor TransformerBlockImpl::feed_forward(const at::Tensor& x) { return moe ? moe(x) : mlp(x); }

at::Tensor TransformerBlockImpl::forward(const at::Tensor& h, const DecoderStep& step, nn::LayerKV* kv) {
  const at::Tensor x = nn::residual_add(h, attention->forward(attention_norm(h), step.attention, kv));
  return nn::residual_add(x, feed_forward(mlp_norm(x)));
}

// ------------------------------------------------------------ DenseWeights

DenseWeights::~DenseWeights() = default;

bool DenseWeights::copy_to(const std::string& name, at::Tensor dst, bool required) const {
  if (!contains(name)) {
    if (!required) return false;
    throw FormatError(fmt::format("{}: missing weight (the decoder needs '{}' of shape {})", where(name), name,
                                  util::shape(dst)));
  }
  at::Tensor src = load(name);
  if (src.sizes() != dst.sizes())
    throw FormatError(fmt::format("{}: shape {} does not match the decoder's '{}' of shape {}", where(name),
                                  util::shape(src), name, util::shape(dst)));
  torch::NoGradGuard guard;
  dst.copy_(src.to(dst.scalar_type()));
  return true;
}

// ------------------------------------------------------------ DecoderHooks defaults

DecoderHooks::~DecoderHooks() = default;

std::shared_ptr<DecoderLayer> DecoderHooks::make_layer(int64_t index, const ModelConfig& cfg) {
  return std::make_shared<TransformerBlockImpl>(cfg, index);
}
void DecoderHooks::add_modules(DecoderImpl&) {}
at::Tensor DecoderHooks::rope_positions(int64_t start, int64_t length, const at::Device& device) const {
  return at::arange(start, start + length, at::TensorOptions().dtype(at::kLong).device(device));
}
at::Tensor DecoderHooks::after_layer(int64_t, const at::Tensor& h, const DecoderStep&) { return h; }
at::Tensor DecoderHooks::final_norm(const at::Tensor& h, const DecoderStep&, DecoderImpl& decoder) {
  return decoder.norm(h);
}
void DecoderHooks::init_weights(DecoderImpl&) {}
void DecoderHooks::prepare_fresh_run(DecoderImpl&, const BuildContext&) {}
double DecoderHooks::extra_forward_flops(int64_t, int64_t) const { return 0.0; }

int64_t DecoderHooks::load_dense(DecoderImpl& decoder, const DenseWeights& w) {
  int64_t n = 0;
  const auto& layers = decoder.layer_list();
  for (size_t i = 0; i < layers.size(); ++i) {
    auto block = std::dynamic_pointer_cast<TransformerBlockImpl>(layers[i]);
    if (!block)
      throw InvalidArgument(fmt::format("decoder layer {} is not a TransformerBlock: its arch must override "
                                        "DecoderHooks::load_dense to take pretrained dense weights",
                                        i));
    if (block->moe)
      throw InvalidArgument(fmt::format("decoder layer {} is a mixture-of-experts layer: dense pretrained weights "
                                        "do not fit it (forge does not upcycle MLPs into experts)",
                                        i));
    for (auto& [name, p] : nn::unique_named_parameters(*layers[i])) n += w.copy_to(fmt::format("layers.{}.{}", i, name), p);
  }
  n += w.copy_to("token_embedding.embedding.weight", decoder.token_embedding->embedding->weight);
  for (auto& [name, p] : nn::unique_named_parameters(*decoder.norm)) n += w.copy_to("norm." + name, p);
  if (!decoder.config().tie_embeddings) n += w.copy_to("output_head.proj.weight", decoder.output_head->proj->weight);
  return n;
}

std::string DecoderHooks::generation_refusal() const { return ""; }

std::vector<std::pair<std::string, at::Tensor>> DecoderHooks::dense_text_weights(DecoderImpl& decoder) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  const auto& layers = decoder.layer_list();
  for (size_t i = 0; i < layers.size(); ++i) {
    auto block = std::dynamic_pointer_cast<TransformerBlockImpl>(layers[i]);
    if (!block || block->moe) return {};  // no dense decoder: an arch's own layers, or experts
    for (auto& [name, p] : nn::unique_named_parameters(*layers[i])) out.emplace_back(fmt::format("layers.{}.{}", i, name), p);
  }
  out.emplace_back("token_embedding.embedding.weight", decoder.token_embedding->embedding->weight);
  for (auto& [name, p] : nn::unique_named_parameters(*decoder.norm)) out.emplace_back("norm." + name, p);
  if (!decoder.config().tie_embeddings) out.emplace_back("output_head.proj.weight", decoder.output_head->proj->weight);
  return out;
}

// ------------------------------------------------------------ Decoder

DecoderImpl::DecoderImpl(const ModelConfig& cfg, std::shared_ptr<DecoderHooks> hooks)
    : cfg_(cfg), hooks_(hooks ? std::move(hooks) : std::make_shared<DecoderHooks>()) {
  if (cfg.dim <= 0 || cfg.n_heads <= 0 || (!cfg.explicit_head_dim && cfg.dim % cfg.n_heads != 0))
    throw InvalidArgument(fmt::format("decoder: dim ({}) must be a positive multiple of n_heads ({}) unless head_dim "
                                      "is set",
                                      cfg.dim, cfg.n_heads));
  token_embedding = register_module("token_embedding", nn::TokenEmbedding(cfg.vocab_size, cfg.dim));
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> stack;
  for (int64_t i = 0; i < cfg.n_layers; ++i) {
    std::shared_ptr<DecoderLayer> layer = hooks_->make_layer(i, cfg);
    if (!layer) throw InvalidArgument(fmt::format("decoder hooks returned no layer {}", i));
    stack.emplace_back(std::to_string(i), layer);
    layer_list_.push_back(layer);
  }
  layers = register_module("layers", torch::nn::ModuleDict(stack));
  hooks_->add_modules(*this);
  norm = register_module("norm", nn::Norm(cfg.dim, cfg.norm_type, cfg.norm_eps));
  output_head = register_module("output_head", nn::OutputHead(cfg.dim, cfg.vocab_size));
  if (cfg.tie_embeddings) output_head->proj->tie(token_embedding->embedding->weight);
  rope_ = nn::RotaryEmbedding(cfg.head_dim(), cfg.max_seq_len, cfg.rope_theta, nn::rope_scaling(cfg));
  init_weights();
}
DecoderImpl::~DecoderImpl() = default;

void DecoderImpl::init_weights() {
  torch::NoGradGuard guard;
  const double std_ = cfg_.init_std;
  const double out_std = cfg_.init_std / std::sqrt(2.0 * static_cast<double>(cfg_.n_layers));
  for (auto& [name, p] : nn::unique_named_parameters(*this)) {
    if (p.dim() < 2) {  // norms keep ones; biases (norms' and linears') start at zero
      if (name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0) p.zero_();
      continue;
    }
    bool out_proj = name.size() >= 13 && (name.compare(name.size() - 13, 13, "o_proj.weight") == 0 ||
                                          (name.size() >= 16 && name.compare(name.size() - 16, 16, "down_proj.weight") == 0));
    p.normal_(0.0, out_proj ? out_std : std_);
  }
  hooks_->init_weights(*this);
}

void DecoderImpl::set_activation_checkpointing(int64_t every) {
  if (every < 0) throw InvalidArgument(fmt::format("activation checkpointing every {} layers: must be >= 0", every));
  ac_every_ = every;
}

void DecoderImpl::set_capture(std::set<int64_t> layers, bool attention) {
  for (int64_t i : layers)
    if (i < 0 || i >= static_cast<int64_t>(layer_list_.size()))
      throw InvalidArgument(fmt::format("decoder: no layer {} to capture (layers 0..{})", i, layer_list_.size() - 1));
  for (auto& [i, a] : capture_attention_) a->keep_probabilities = false;
  capture_attention_.clear();
  captured_attention_.clear();
  if (attention)
    for (int64_t i : layers)
      for (const auto& m : layer_list_[i]->modules(/*include_self=*/false))
        if (auto* a = dynamic_cast<nn::AttentionImpl*>(m.get())) {
          a->keep_probabilities = true;
          capture_attention_[i] = a;
          break;
        }
  capture_ = std::move(layers);
  captured_.clear();
}

void DecoderImpl::set_layer_units(std::vector<std::shared_ptr<ParamUnit>> units) {
  if (!units.empty() && units.size() != layer_list_.size())
    throw InvalidArgument(fmt::format("decoder: {} parameter units for {} layers", units.size(), layer_list_.size()));
  layer_units_ = std::move(units);
}

at::Tensor DecoderImpl::block_layer(size_t i, const at::Tensor& h, const DecoderStep& step,
                                    const std::vector<at::Tensor>& shared_weights, bool recompute) {
  // A recomputation runs after forward returns: it owns copies of what the step refers to.
  ModalityContext::Fields fields = step.modality.fields();
  nn::AttentionInputs attention = step.attention;
  const int64_t start = step.start_pos, length = step.length;
  ParamUnit* unit = layer_units_.empty() ? nullptr : layer_units_[i].get();
  std::vector<at::Tensor> weights = shared_weights;
  if (!unit)
    for (const auto& p : layer_list_[i]->parameters(true))
      if (p.requires_grad()) weights.push_back(p);
  CheckpointedFn fn = [this, i, fields, attention, start, length](const at::Tensor& x,
                                                                   const std::vector<at::Tensor>& extras) {
    ModalityContext::Fields f = fields;
    f.image_features = extras[0];
    ModalityContext modality(f);
    DecoderStep s{modality, attention, nullptr, start, length};
    at::Tensor y = layer_list_[i]->forward(x, s, nullptr);
    return hooks_->after_layer(static_cast<int64_t>(i), y, s);
  };
  // Sharded: the next layer's parameters are gathered while this one computes (backward: the one below).
  ParamUnit* below = unit && i > 0 ? layer_units_[i - 1].get() : nullptr;
  if (unit && i + 1 < layer_units_.size()) layer_units_[i + 1]->prefetch();
  return run_block(fn, h, {fields.image_features}, weights, BlockPolicy{recompute, unit, below});
}

KVCache DecoderImpl::make_cache(int64_t batch, int64_t capacity, at::ScalarType dtype, const at::Device& device) const {
  if (capacity > cfg_.max_seq_len)
    throw InvalidArgument(fmt::format("KV cache of {} positions exceeds model.max_seq_len = {}", capacity,
                                      cfg_.max_seq_len));
  KVCache cache;
  cache.capacity = capacity;
  auto opts = at::TensorOptions().dtype(dtype).device(device);
  for (size_t i = 0; i < layer_list_.size(); ++i) {
    cache.layers.push_back(nn::LayerKV{at::zeros({batch, cfg_.kv_heads(), capacity, cfg_.head_dim()}, opts),
                                       at::zeros({batch, cfg_.kv_heads(), capacity, cfg_.head_dim()}, opts)});
  }
  return cache;
}

at::Tensor DecoderImpl::forward(const at::Tensor& tokens, const ModalityContext& modality, KVCache* cache,
                                const at::Tensor& doc_ids) {
  const bool has_tokens = tokens.defined();
  const bool has_embeds = modality.inputs_embeds().defined();
  if (has_tokens == has_embeds)
    throw InvalidArgument(fmt::format("decoder: pass exactly one of tokens and modality.inputs_embeds (got {})",
                                      has_tokens ? "both" : "neither"));
  const int64_t start = cache ? cache->length : 0;
  if (cache) {
    if (start > 0 && modality.prefix_embeds().defined())
      throw InvalidArgument("decoder: prefix_embeds can only be given on the first (prefill) call with a KV cache");
    if (doc_ids.defined())
      throw InvalidArgument("decoder: doc_ids are training-only; they cannot be combined with a KV cache");
    if (cache->layers.size() != layer_list_.size())
      throw InvalidArgument(fmt::format("decoder: KV cache has {} layers, the decoder {}", cache->layers.size(),
                                        layer_list_.size()));
  }
  at::Tensor h;
  if (has_tokens) {
    if (tokens.dim() != 2 || tokens.scalar_type() != at::kLong)
      throw InvalidArgument(fmt::format("decoder: tokens must be (B, T) int64, got {} {}", util::shape(tokens),
                                        c10::toString(tokens.scalar_type())));
    h = token_embedding(tokens);
  } else {
    h = modality.inputs_embeds();
  }
  if (modality.prefix_embeds().defined()) {
    const at::Tensor& p = modality.prefix_embeds();
    if (p.size(0) != h.size(0) || p.size(2) != h.size(2))
      throw InvalidArgument(fmt::format("decoder: prefix_embeds {} do not match the text embeddings {}", util::shape(p),
                                        util::shape(h)));
    h = at::cat({p.to(h.scalar_type()), h}, 1);
  }
  const int64_t S = h.size(1);
  if (start + S > cfg_.max_seq_len)
    throw InvalidArgument(fmt::format("decoder: {} positions starting at {} exceed model.max_seq_len = {}", S, start,
                                      cfg_.max_seq_len));
  if (const at::Tensor& keys = modality.key_padding_mask();
      keys.defined() && (keys.size(0) != h.size(0) || keys.size(1) != start + S))
    throw InvalidArgument(fmt::format("decoder: key_padding_mask is {}; it must be (B, {}) = ({}, {}){}", util::shape(keys),
                                      start > 0 ? "cached + new positions" : "positions", h.size(0), start + S,
                                      start > 0 ? fmt::format(" with {} positions in the KV cache", start) : ""));
  if (modality.modality_ids().defined() && modality.modality_ids().size(1) != S)
    throw InvalidArgument(fmt::format("decoder: modality_ids cover {} positions, the residual stream has {}",
                                      modality.modality_ids().size(1), S));

  at::Tensor positions = hooks_->rope_positions(start, S, h.device());
  auto [cos, sin] = rope_.rows(positions, h.scalar_type());
  DecoderStep step{modality, nn::AttentionInputs{cos, sin, start, doc_ids, modality.key_padding_mask()}, cache, start,
                   S};
  const bool checkpoint = ac_every_ > 0 && is_training() && !cache && at::GradMode::is_enabled();
  const bool sharded = !layer_units_.empty();
  if (sharded && cache && at::GradMode::is_enabled())
    throw InvalidArgument("decoder: a KV cache over sharded parameters is for generation only (no grad mode)");
  std::vector<at::Tensor> shared_weights;  // trainable tensors outside the layer stack (arch modules)
  if (checkpoint || (sharded && !cache))
    for (const auto& p : named_parameters(true))
      if (p.value().requires_grad() && !util::starts_with(p.key(), "layers.")) shared_weights.push_back(p.value());
  if (!capture_.empty()) captured_.clear();
  for (size_t i = 0; i < layer_list_.size(); ++i) {
    const bool recompute = checkpoint && (static_cast<int64_t>(i) + 1) % ac_every_ == 0;
    if (recompute || (sharded && !cache)) {
      h = block_layer(i, h, step, shared_weights, recompute);
    } else {
      GatheredUnit whole(sharded ? layer_units_[i].get() : nullptr);  // generation over sharded parameters
      if (sharded && i + 1 < layer_units_.size()) layer_units_[i + 1]->prefetch();
      h = layer_list_[i]->forward(h, step, cache ? &cache->layers[i] : nullptr);
      h = hooks_->after_layer(static_cast<int64_t>(i), h, step);
    }
    if (!capture_.empty() && capture_.count(static_cast<int64_t>(i))) {
      captured_[static_cast<int64_t>(i)] = h.detach().clone();
      if (auto a = capture_attention_.find(static_cast<int64_t>(i)); a != capture_attention_.end())
        captured_attention_[a->first] = a->second->probabilities;
    }
  }
  h = hooks_->final_norm(h, step, *this);
  if (const auto& slice = modality.output_slice()) {
    int64_t len = slice->length < 0 ? S - slice->start : slice->length;
    if (slice->start < 0 || slice->start + len > S || len < 0)
      throw InvalidArgument(fmt::format("decoder: output slice [{}, {}) is outside the {} positions", slice->start,
                                        slice->start + len, S));
    h = h.narrow(1, slice->start, len);
  }
  if (cache) cache->length += S;
  if (modality.output_slice() && modality.output_slice()->hidden) return h;
  return output_head(h);
}

}  // namespace forge
