#include "core/model/vlm.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "core/io/hf_llm.h"
#include "core/registry/registry.h"
#include "core/util/strings.h"
#include "core/util/tensor.h"
#include "forge/error.h"
#include "forge/logging.h"
#include "forge/registry.h"

namespace forge {

// ------------------------------------------------------------ VLM

VLMImpl::VLMImpl(std::shared_ptr<VisionEncoder> encoder, std::shared_ptr<VisionAdapter> adapter_, Decoder transformer_,
                 std::shared_ptr<ModalityStrategy> strategy_, int64_t max_text_len, int64_t frames_per_clip,
                 int64_t frame_window)
    : strategy(std::move(strategy_)), frames_per_clip_(frames_per_clip), frame_window_(frame_window),
      max_text_len_(max_text_len) {
  if (!encoder || !adapter_ || !transformer_ || !strategy) throw InvalidArgument("VLM: every part must be given");
  if (frames_per_clip < 1 || (frames_per_clip > 1 && frame_window < 1))
    throw InvalidArgument(fmt::format("VLM: {} frames per clip with pooling window {}", frames_per_clip, frame_window));
  vision_encoder = register_module("vision_encoder", encoder);
  adapter = register_module("adapter", adapter_);
  transformer = register_module("transformer", transformer_);
  visual_tokens_ = video() ? frames_per_clip_ * pooled_token_count(vision_encoder->num_tokens(), frame_window_)
                           : adapter->output_num_tokens(vision_encoder->num_tokens());
  residual_tokens_ = strategy->residual_image_tokens(visual_tokens_);
  const int64_t need = residual_tokens_ + max_text_len_;
  if (need > transformer->config().max_seq_len)
    throw UserError(fmt::format(
        "model.max_seq_len = {} is too small: {} image tokens in the residual stream + vlm.max_text_len {} = {}",
        transformer->config().max_seq_len, residual_tokens_, max_text_len_, need));
}
VLMImpl::~VLMImpl() = default;

namespace {
bool any_trainable(const torch::nn::Module& m) {
  for (const auto& p : m.parameters(true))
    if (p.requires_grad()) return true;
  return false;
}
}  // namespace

bool VLMImpl::encoder_frozen() const { return !any_trainable(*vision_encoder); }
bool VLMImpl::adapter_frozen() const { return !any_trainable(*adapter); }

void VLMImpl::set_activation_checkpointing(int64_t every) {
  transformer->set_activation_checkpointing(every);
  BlockStack* tower = vision_encoder->block_stack();
  if (tower) tower->set_activation_checkpointing(every);
  if (every > 0 && !tower)
    log()->info("activation checkpointing: the decoder's layers (this vision encoder has no blocks to recompute)");
}

at::Tensor VLMImpl::encode_images(const at::Tensor& pixel_values_in) {
  const int64_t F = frames_per_clip_;
  if (video() ? pixel_values_in.dim() != 5 || pixel_values_in.size(1) != F || pixel_values_in.size(2) != 3
              : pixel_values_in.dim() != 4 || pixel_values_in.size(1) != 3)
    throw InvalidArgument(fmt::format("VLM: pixel_values must be {}, got {}",
                                      video() ? fmt::format("(B, {}, 3, H, W): clips of {} frames", F, F)
                                              : std::string("(B, 3, H, W)"),
                                      util::shape(pixel_values_in)));
  const int64_t B = pixel_values_in.size(0);
  const at::Tensor pixel_values = video() ? pixel_values_in.flatten(0, 1) : pixel_values_in;  // frames in the batch
  at::Tensor feats;
  if (encoder_frozen()) {
    {
      c10::InferenceMode guard;
      feats = vision_encoder->forward(pixel_values);
    }
    feats = feats.clone();  // a normal tensor again, usable by autograd downstream
  } else {
    feats = vision_encoder->forward(pixel_values);
  }
  if (feats.dim() != 3 || feats.size(0) != pixel_values.size(0) || feats.size(1) != vision_encoder->num_tokens() ||
      feats.size(2) != vision_encoder->feature_dim())
    throw InvalidArgument(fmt::format("VLM: the encoder returned {}, expected ({}, {}, {})", util::shape(feats),
                                      pixel_values.size(0), vision_encoder->num_tokens(),
                                      vision_encoder->feature_dim()));
  auto params = adapter->parameters(true);
  if (!params.empty() && feats.scalar_type() != params.front().scalar_type()) feats = feats.to(params.front().scalar_type());
  at::Tensor out = video() ? adapter->forward_window(feats, frame_window_) : adapter->forward(feats);
  const int64_t D = transformer->config().dim, per_image = visual_tokens_ / F;
  if (out.dim() != 3 || out.size(1) != per_image || out.size(2) != D)
    throw InvalidArgument(fmt::format("VLM: the adapter returned {}, expected (B, {}, {})", util::shape(out), per_image,
                                      D));
  return video() ? out.reshape({B, visual_tokens_, D}) : out;  // frames' tokens in time order
}

namespace {

// Masks the visual tokens of padding frames: each frame's bit repeated over
// its tokens. Image-prefix archs get a key padding mask over the residual
// stream (text positions all real), and the padding tokens become zeros: the
// last image position, which predicts the first text token (D1), may be one,
// and its own residual must not carry what the padding pixels were.
// Cross-attention gets an image mask.
ModalityContext mask_frames(const ModalityContext& ctx, const at::Tensor& frame_mask, int64_t visual_tokens,
                            int64_t text_len) {
  const int64_t B = frame_mask.size(0), F = frame_mask.size(1);
  at::Tensor visual = frame_mask.to(at::kBool).repeat_interleave(visual_tokens / F, 1);  // (B, N)
  ModalityContext::Fields f = ctx.fields();
  if (f.prefix_embeds.defined()) {
    f.key_padding_mask = at::cat({visual, at::ones({B, text_len}, visual.options())}, 1);
    f.prefix_embeds = f.prefix_embeds * visual.unsqueeze(-1).to(f.prefix_embeds.scalar_type());
  } else if (f.image_features.defined()) {
    f.image_mask = visual;
  } else {
    throw InvalidArgument("VLM: a frame mask needs an arch that reads the visual tokens as a prefix or through "
                          "cross-attention");
  }
  return ModalityContext(std::move(f));
}

}  // namespace

ModalityContext VLMImpl::compose(const at::Tensor& pixel_values, const at::Tensor& input_ids,
                                 const at::Tensor& frame_mask) {
  if (input_ids.dim() != 2 || input_ids.scalar_type() != at::kLong)
    throw InvalidArgument(fmt::format("VLM: input_ids must be (B, T) int64, got {} {}", util::shape(input_ids),
                                      util::dtype(input_ids)));
  if (pixel_values.size(0) != input_ids.size(0))
    throw InvalidArgument(fmt::format("VLM: {} images but {} text rows", pixel_values.size(0), input_ids.size(0)));
  return compose_encoded(encode_images(pixel_values), input_ids, frame_mask);
}

ModalityContext VLMImpl::compose_encoded(const at::Tensor& visual, const at::Tensor& input_ids,
                                         const at::Tensor& frame_mask) {
  if (visual.size(0) != input_ids.size(0))
    throw InvalidArgument(fmt::format("VLM: {} images but {} text rows", visual.size(0), input_ids.size(0)));
  ModalityContext ctx = strategy->compose(visual, input_ids);
  if (ctx.prefix_embeds().defined() && ctx.prefix_length() != residual_tokens_)
    throw InvalidArgument(fmt::format("VLM: the {} strategy put {} image positions in the residual stream but "
                                      "reports {}",
                                      strategy->name(), ctx.prefix_length(), residual_tokens_));
  if (!frame_mask.defined()) return ctx;
  if (!video() || frame_mask.sizes() != at::IntArrayRef{visual.size(0), frames_per_clip_})
    throw InvalidArgument(fmt::format("VLM: frame_mask {} must be (B, F) = ({}, {}) for a video model",
                                      util::shape(frame_mask), visual.size(0), frames_per_clip_));
  return mask_frames(ctx, frame_mask.to(visual.device()), visual_tokens_, input_ids.size(1));
}

VLMOutput VLMImpl::forward(const at::Tensor& pixel_values, const at::Tensor& input_ids, const at::Tensor& labels,
                           const at::Tensor& frame_mask) {
  return run(pixel_values, input_ids, labels, frame_mask, /*hidden=*/false);
}

VLMOutput VLMImpl::forward_hidden(const at::Tensor& pixel_values, const at::Tensor& input_ids,
                                  const at::Tensor& labels, const at::Tensor& frame_mask) {
  return run(pixel_values, input_ids, labels, frame_mask, /*hidden=*/true);
}

const at::Tensor& VLMImpl::output_weight() const { return transformer->output_head->proj->weight; }

at::Tensor VLMImpl::targets_of(const at::Tensor& labels) const {
  if (!labels.defined() || residual_tokens_ > 0) return labels;
  return labels.narrow(1, 1, labels.size(1) - 1);
}

VLMOutput VLMImpl::run(const at::Tensor& pixel_values, const at::Tensor& input_ids, const at::Tensor& labels,
                       const at::Tensor& frame_mask, bool hidden) {
  ModalityContext ctx = compose(pixel_values, input_ids, frame_mask);
  const int64_t T = input_ids.size(1);
  if (labels.defined() && (labels.sizes() != input_ids.sizes()))
    throw InvalidArgument(fmt::format("VLM: labels {} must match input_ids {}", util::shape(labels), util::shape(input_ids)));
  VLMOutput out;
  at::Tensor& result = hidden ? out.hidden : out.logits;
  if (residual_tokens_ > 0) {
    // D1: position N-1+t predicts token t; the last image position predicts the first text token.
    result = transformer->forward(input_ids, ctx.with_output_slice(OutputSlice{residual_tokens_ - 1, T, hidden}));
    out.targets = targets_of(labels);
  } else {
    if (T < 2) throw InvalidArgument("VLM: with no image positions in the residual stream, text needs >= 2 tokens");
    // D1: text position t predicts token t + 1.
    result = transformer->forward(input_ids, ctx.with_output_slice(OutputSlice{0, T - 1, hidden}));
    if (labels.defined()) out.targets = targets_of(labels);
  }
  return out;
}

double VLMImpl::forward_flops_per_sample(int64_t T) const {
  const ModelConfig& m = transformer->config();
  const double D = m.dim, H = m.n_heads, Hkv = m.kv_heads(), hd = m.head_dim(), F = m.ffn_hidden(), L = m.n_layers,
               V = m.vocab_size;
  const double S = static_cast<double>(residual_tokens_ + T);
  const double attn_params = D * H * hd + 2 * D * Hkv * hd + H * hd * D;
  const double mats = m.activation == "silu" ? 3 : 2;
  // An MoE layer computes its router, top_k experts and the shared expert for each position.
  const double Fe = static_cast<double>(nn::expert_hidden_size(m.ffn_hidden(), m.moe_expert_ffn_multiplier));
  const double moe_params = D * static_cast<double>(m.num_experts) +
                            (static_cast<double>(m.moe_top_k) + (m.moe_shared_experts > 0 ? 1 : 0)) * mats * D * Fe;
  double mlp_params = 0;  // over all layers
  for (int64_t i = 0; i < m.n_layers; ++i) mlp_params += nn::is_moe_layer(m, i) ? moe_params : mats * D * F;
  double flops = S * (2 * (L * attn_params + mlp_params) + L * 4 * H * hd * S);  // matmuls + attention scores
  flops += 2 * D * V * static_cast<double>(T);                              // output head on text positions
  flops += transformer->hooks().extra_forward_flops(visual_tokens_, T);
  return flops;
}

// ------------------------------------------------------------ build

VLM build_vlm(const JobConfig& job, Registry& registry) {
  if (!job.vlm || !job.vision_encoder || !job.adapter)
    throw UserError("the config has no [vlm] (with [vision_encoder]); forge trains vision-language models");
  torch::manual_seed(static_cast<uint64_t>(job.train.seed));
  const auto& ecfg = *job.vision_encoder;
  BuildContext ectx{named_logger("plugin.encoder." + ecfg.type), job.train.seed};
  auto encoder = registry.hold("encoder", ecfg.type, registry.encoder(ecfg.type)->create(ecfg, ectx));
  const auto& acfg = *job.adapter;
  BuildContext actx{named_logger("plugin.adapter." + acfg.type), job.train.seed};
  auto adapter = registry.hold(
      "adapter", acfg.type, registry.adapter(acfg.type)->create(acfg, encoder->feature_dim(), job.model.dim, actx));
  const int64_t frames = job.video ? job.video->max_frames : 1;
  const int64_t window = job.video ? job.video->pool_window : 0;
  const int64_t n_visual = job.video ? frames * pooled_token_count(encoder->num_tokens(), window)
                                     : adapter->output_num_tokens(encoder->num_tokens());
  auto arch = registry.arch(job.vlm->arch);
  auto strategy = registry.hold("arch", job.vlm->arch, arch->make_strategy(*job.vlm));
  auto hooks = registry.hold("arch", job.vlm->arch, arch->make_hooks(job.model, *job.vlm, n_visual));
  Decoder decoder(job.model, hooks);
  if (!job.model.init_from_hf.empty()) {
    const int64_t n = hf::load_llm_weights(*decoder, job.model.init_from_hf);
    log()->info("decoder: {} pretrained tensors from {} (init_from_hf)", n, job.model.init_from_hf);
  }
  return VLM(encoder, adapter, decoder, strategy, job.vlm->max_text_len, frames, window);
}

Decoder build_text_decoder(const ModelConfig& cfg) { return Decoder(cfg, nullptr); }

// ------------------------------------------------------------ freezing

namespace {

std::vector<std::string> patterns_of(const FreezeSpec& spec, const StringListMap& patterns) {
  auto it = patterns.find(spec.module);
  return it != patterns.end() ? it->second : std::vector<std::string>{spec.module};
}

bool matches(const std::vector<std::string>& pats, const std::string& name) {
  for (const auto& p : pats)
    if (util::fnmatch(p, name)) return true;
  return false;
}

UserError unmatched_spec(const FreezeSpec& spec, const torch::OrderedDict<std::string, at::Tensor>& params,
                         const StringListMap& patterns, const std::string& where) {
  std::vector<std::string> aliases;
  for (const auto& [k, v] : patterns) aliases.push_back(k);
  std::string example =
      params.is_empty() ? std::string("transformer.layers.0.attention.q_proj.weight") : params.begin()->key();
  return UserError(fmt::format("{}: module = \"{}\" matches no parameter. Use an alias ({}) or an fnmatch pattern "
                               "over parameter names such as \"{}\"",
                               where, spec.module, util::join(aliases, ", "), example));
}

}  // namespace

std::map<std::string, int64_t> apply_freeze(torch::nn::Module& model, const std::vector<FreezeSpec>& specs,
                                            const StringListMap& patterns) {
  std::map<std::string, int64_t> flipped;
  auto params = model.named_parameters(true);
  for (const auto& spec : specs) {
    auto pats = patterns_of(spec, patterns);
    int64_t matched = 0, n = 0;
    for (auto& item : params) {
      if (!matches(pats, item.key())) continue;
      ++matched;
      at::Tensor p = item.value();
      if (p.requires_grad() == spec.frozen) {
        p.requires_grad_(!spec.frozen);
        n += p.numel();
      }
    }
    if (matched == 0 && !patterns.count(spec.module)) throw unmatched_spec(spec, params, patterns, "freeze spec");
    flipped[spec.module] += n;
  }
  return flipped;
}

std::vector<FreezeSpec> effective_freeze(int64_t step, const std::vector<FreezeSpec>& base,
                                         const std::vector<FreezeStage>& schedule) {
  std::vector<FreezeSpec> out;
  auto put = [&](const FreezeSpec& s) {
    for (auto& e : out) {
      if (e.module == s.module) {
        e.frozen = s.frozen;
        return;
      }
    }
    out.push_back(s);
  };
  for (const auto& s : base) put(s);
  std::vector<const FreezeStage*> stages;
  for (const auto& st : schedule) stages.push_back(&st);
  std::sort(stages.begin(), stages.end(), [](auto a, auto b) { return a->start_step < b->start_step; });
  for (const auto* st : stages) {
    if (st->start_step > step) break;
    for (const auto& s : st->specs) put(s);
  }
  return out;
}

std::vector<FreezeSpec> canonical_freeze(const std::vector<FreezeSpec>& specs) {
  std::vector<FreezeSpec> out = specs;
  std::sort(out.begin(), out.end(), [](const FreezeSpec& a, const FreezeSpec& b) {
    return a.module != b.module ? a.module < b.module : a.frozen < b.frozen;
  });
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

void check_freeze_specs(torch::nn::Module& model, const VLMConfig& vlm) {
  const StringListMap patterns = vlm.resolved_module_patterns();
  auto params = model.named_parameters(true);
  auto check = [&](const FreezeSpec& spec, const std::string& where) {
    if (patterns.count(spec.module)) return;
    for (const auto& item : params)
      if (util::fnmatch(spec.module, item.key())) return;
    throw unmatched_spec(spec, params, patterns, where);
  };
  for (size_t i = 0; i < vlm.freeze.size(); ++i) check(vlm.freeze[i], fmt::format("vlm.freeze[{}]", i));
  for (size_t k = 0; k < vlm.freeze_schedule.size(); ++k) {
    const auto& st = vlm.freeze_schedule[k];
    for (size_t i = 0; i < st.specs.size(); ++i)
      check(st.specs[i], fmt::format("vlm.freeze_schedule[{}] (start_step = {}) specs[{}]", k, st.start_step, i));
  }
}

std::set<std::string> ever_trainable(torch::nn::Module& model, const VLMConfig& vlm) {
  const StringListMap patterns = vlm.resolved_module_patterns();
  std::vector<int64_t> steps{0};
  for (const auto& st : vlm.freeze_schedule) steps.push_back(st.start_step);
  std::set<std::string> out;
  auto params = model.named_parameters(true);
  for (int64_t s : steps) {
    auto specs = effective_freeze(s, vlm.freeze, vlm.freeze_schedule);
    for (const auto& item : params) {
      bool trainable = true;
      for (const auto& spec : specs)
        if (matches(patterns_of(spec, patterns), item.key())) trainable = !spec.frozen;
      if (trainable) out.insert(item.key());
    }
  }
  return out;
}

// ------------------------------------------------------------ generation

at::Tensor sample_next(const at::Tensor& logits_in, const GenerateOptions& o, at::Generator& gen) {
  if (o.temperature <= 0.0) return logits_in.argmax(-1);
  at::Tensor l = logits_in.to(at::kCPU, at::kFloat) / o.temperature;
  const int64_t V = l.size(-1);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  if (o.top_k > 0 && o.top_k < V) {
    at::Tensor kth = std::get<0>(l.topk(o.top_k, -1)).narrow(-1, o.top_k - 1, 1);
    l = l.masked_fill(l < kth, neg_inf);
  }
  if (o.top_p < 1.0) {
    auto [sorted, idx] = l.sort(-1, /*descending=*/true);
    at::Tensor probs = sorted.softmax(-1);
    at::Tensor before = probs.cumsum(-1) - probs;  // mass of strictly better tokens
    at::Tensor drop = before >= o.top_p;
    drop.select(-1, 0).fill_(false);  // the most likely token always stays
    sorted = sorted.masked_fill(drop, neg_inf);
    l = at::full_like(l, neg_inf).scatter(-1, idx, sorted);
  }
  at::Tensor probs = l.softmax(-1);
  return at::multinomial(probs, 1, false, gen).squeeze(-1).to(logits_in.device());
}

namespace {

// The shared decode loop: `first` holds the last-position logits after the
// prompt; `step(tokens)` feeds one token per row and returns its logits.
template <class Step>
at::Tensor decode_loop(at::Tensor logits, const GenerateOptions& o, Step step) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  const int64_t B = logits.size(0);
  std::vector<at::Tensor> out;
  at::Tensor finished = at::zeros({B}, at::TensorOptions().dtype(at::kBool).device(logits.device()));
  for (int64_t i = 0; i < o.max_new_tokens; ++i) {
    at::Tensor next = sample_next(logits.select(1, logits.size(1) - 1), o, gen);
    if (o.agree) o.agree(next);
    if (o.eos_id >= 0) {
      next = at::where(finished, at::full_like(next, o.eos_id), next);
      finished = finished | (next == o.eos_id);
    }
    out.push_back(next);
    if ((o.eos_id >= 0 && finished.all().item<bool>()) || i + 1 == o.max_new_tokens) break;
    logits = step(next.unsqueeze(1), out);
  }
  if (out.empty()) return at::zeros({B, 0}, at::TensorOptions().dtype(at::kLong).device(logits.device()));
  return at::stack(out, 1);
}

// The prompt's shape, and whether the arch can decode token by token at all.
void check_generation(const DecoderImpl& decoder, const at::Tensor& prompt) {
  const std::string refusal = decoder.hooks().generation_refusal();
  if (!refusal.empty()) throw UserError("generate: " + refusal);
  if (prompt.dim() != 2 || prompt.scalar_type() != at::kLong)
    throw InvalidArgument(fmt::format("generate: prompt ids must be (B, P) int64, got {} {}", util::shape(prompt),
                                      util::dtype(prompt)));
}

}  // namespace

at::Tensor generate(VLMImpl& model, const at::Tensor& pixel_values, const at::Tensor& prompt, const GenerateOptions& o,
                    const at::Tensor& frame_mask) {
  check_generation(*model.transformer, prompt);
  torch::NoGradGuard no_grad;
  const int64_t N = model.residual_image_tokens();
  const int64_t P = prompt.size(1);
  const ModelConfig& m = model.transformer->config();
  if (N == 0 && P == 0)
    throw InvalidArgument(fmt::format("generate: the {} arch keeps no image positions in the decoder, so it needs at "
                                      "least one prompt token (the tokenizer's BOS)",
                                      model.strategy->name()));
  const int64_t total = N + P + o.max_new_tokens;
  if (total > m.max_seq_len)
    throw InvalidArgument(fmt::format("generate: {} image positions + {} prompt tokens + max_new_tokens {} = {} "
                                      "exceeds model.max_seq_len = {}",
                                      N, P, o.max_new_tokens, total, m.max_seq_len));
  at::Tensor visual = model.encode_images(pixel_values);
  // Clips without padding frames need no mask: the decode steps keep the unmasked (GQA) attention kernel.
  const at::Tensor frames =
      frame_mask.defined() && model.video() && frame_mask.all().item<bool>() ? at::Tensor() : frame_mask;
  if (!o.use_cache) {
    at::Tensor tokens = prompt;
    auto run = [&](const at::Tensor& ids) {
      ModalityContext ctx = model.compose_encoded(visual, ids, frames);
      const int64_t S = N + ids.size(1);
      return model.transformer->forward(ids, ctx.with_output_slice(OutputSlice{S - 1, 1}));
    };
    return decode_loop(run(tokens), o, [&](const at::Tensor&, const std::vector<at::Tensor>& so_far) {
      return run(at::cat({prompt, at::stack(so_far, 1)}, 1));
    });
  }
  at::ScalarType dtype = model.transformer->parameters().front().scalar_type();
  KVCache cache = model.transformer->make_cache(prompt.size(0), total, dtype, prompt.device());
  ModalityContext ctx = model.compose_encoded(visual, prompt, frames);
  at::Tensor logits = model.transformer->forward(prompt, ctx.with_output_slice(OutputSlice{N + P - 1, 1}), &cache);
  ModalityContext decode_ctx = model.strategy->decode_context(ctx);
  // Padding frames of a clip stay masked as keys for the whole generation: the mask grows by one real
  // position per token.
  at::Tensor keys = ctx.key_padding_mask();
  return decode_loop(logits, o, [&](const at::Tensor& next, const std::vector<at::Tensor>&) {
    if (!keys.defined()) return model.transformer->forward(next, decode_ctx, &cache);
    keys = at::cat({keys, at::ones({keys.size(0), 1}, keys.options())}, 1);
    ModalityContext::Fields f = decode_ctx.fields();
    f.key_padding_mask = keys;
    return model.transformer->forward(next, ModalityContext(std::move(f)), &cache);
  });
}

at::Tensor generate_text(DecoderImpl& decoder, const at::Tensor& prompt, const GenerateOptions& o) {
  check_generation(decoder, prompt);
  torch::NoGradGuard no_grad;
  const int64_t P = prompt.size(1);
  if (P == 0) throw InvalidArgument("generate: text-only generation needs at least one prompt token");
  const int64_t total = P + o.max_new_tokens;
  if (total > decoder.config().max_seq_len)
    throw InvalidArgument(fmt::format("generate: {} prompt tokens + max_new_tokens {} exceeds model.max_seq_len = {}",
                                      P, o.max_new_tokens, decoder.config().max_seq_len));
  if (!o.use_cache) {
    auto run = [&](const at::Tensor& ids) {
      return decoder.forward(ids, ModalityContext().with_output_slice(OutputSlice{ids.size(1) - 1, 1}));
    };
    return decode_loop(run(prompt), o, [&](const at::Tensor&, const std::vector<at::Tensor>& so_far) {
      return run(at::cat({prompt, at::stack(so_far, 1)}, 1));
    });
  }
  at::ScalarType dtype = decoder.parameters().front().scalar_type();
  KVCache cache = decoder.make_cache(prompt.size(0), total, dtype, prompt.device());
  at::Tensor logits = decoder.forward(prompt, ModalityContext().with_output_slice(OutputSlice{P - 1, 1}), &cache);
  return decode_loop(logits, o, [&](const at::Tensor& next, const std::vector<at::Tensor>&) {
    return decoder.forward(next, ModalityContext(), &cache);
  });
}

}  // namespace forge
