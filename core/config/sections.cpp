// The SDK's config sections: [model], [vision_encoder], [adapter], [vlm].
// Keys, defaults and rules follow KempnerForge (spec section 1), with
// forge's decision D3 for module_patterns.
#include <cmath>
#include <filesystem>
#include <set>

#include <fmt/format.h>

#include "forge/config.h"
#include "forge/nn.h"

namespace forge {

// ------------------------------------------------------------ Bounds

Bounds Bounds::positive() { return Bounds{0.0, std::nullopt, false, true}; }
Bounds Bounds::non_negative() { return Bounds{0.0, std::nullopt, true, true}; }
Bounds Bounds::at_least(double v) { return Bounds{v, std::nullopt, true, true}; }
Bounds Bounds::range(double lo, double hi, bool lo_inclusive, bool hi_inclusive) {
  return Bounds{lo, hi, lo_inclusive, hi_inclusive};
}

bool Bounds::contains(double v) const {
  if (std::isnan(v)) return empty();
  if (min && (min_inclusive ? v < *min : v <= *min)) return false;
  if (max && (max_inclusive ? v > *max : v >= *max)) return false;
  return true;
}

static std::string num(double v) {
  if (std::floor(v) == v && std::abs(v) < 1e15) return fmt::format("{}", static_cast<int64_t>(v));
  return fmt::format("{}", v);
}

std::string Bounds::describe() const {
  if (min && max)
    return fmt::format("must be in {}{}, {}{}", min_inclusive ? "[" : "(", num(*min), num(*max), max_inclusive ? "]" : ")");
  if (min) return fmt::format("must be {} {}", min_inclusive ? ">=" : ">", num(*min));
  if (max) return fmt::format("must be {} {}", max_inclusive ? "<=" : "<", num(*max));
  return "";
}

TableList::~TableList() = default;
ConfigVisitor::~ConfigVisitor() = default;
void ConfigVisitor::unsupported(std::string_view key, std::string_view note, std::string_view) {
  unimplemented(key, note);
}

// ------------------------------------------------------------ [model]

void ModelConfig::visit(ConfigVisitor& v) {
  v.field("init_from_hf", init_from_hf,
          "forge: a local Hugging Face causal-LM folder (Llama 1-3.2, Mistral, Qwen2/2.5, Qwen3, SmolLM2). Its "
          "config.json sets the decoder's shape (a key set here must agree with it), its weights initialise the "
          "decoder, and its tokenizer.json becomes data.tokenizer_path unless that is set. See docs/pretrained.md.");
  v.field("dim", dim, "Width of the decoder's residual stream; must be divisible by n_heads.", Bounds::positive());
  v.field("n_layers", n_layers, "Number of decoder layers.", Bounds::positive());
  v.field("n_heads", n_heads, "Attention (query) heads.", Bounds::positive());
  v.field("n_kv_heads", n_kv_heads,
          "Key/value heads for grouped-query attention; must divide n_heads. Unset: n_heads.", Bounds::positive());
  v.field("vocab_size", vocab_size, "Rows of the token embedding and the output head; must cover the tokenizer.",
          Bounds::positive());
  v.field("ffn_dim_multiplier", ffn_dim_multiplier, "Scales the derived FFN hidden size (see ffn_hidden_dim).",
          Bounds::positive());
  v.field("ffn_hidden_dim", ffn_hidden_dim,
          "FFN hidden size. Unset: trunc(4 * dim * 2/3 * ffn_dim_multiplier) rounded up to a multiple of 256 "
          "(dim 4096 -> 11008).",
          Bounds::positive());
  v.field("norm_type", norm_type, "Normalisation of every block and the final norm.", {"rmsnorm", "layernorm"});
  v.field("norm_eps", norm_eps, "Epsilon of the block and final norms.", Bounds::positive());
  v.field("activation", activation,
          "MLP activation: silu builds a SwiGLU MLP (gate, up, down); gelu (exact erf) and relu build up, down.",
          {"silu", "gelu", "relu"});
  v.field("max_seq_len", max_seq_len,
          "Length of the RoPE table: the residual stream (image tokens in it + vlm.max_text_len) must fit.",
          Bounds::positive());
  v.field("rope_theta", rope_theta, "RoPE base frequency.", Bounds::positive());
  v.field("tie_embeddings", tie_embeddings, "Share one tensor between the token embedding and the output head.");
  v.field("qk_norm", qk_norm, "Per-head RMSNorm (eps 1e-5) on queries and keys before RoPE.");
  v.field("init_std", init_std,
          "Std of the normal init; output projections (o_proj, down_proj) use init_std / sqrt(2 * n_layers).",
          Bounds::positive());
  v.field("head_dim", explicit_head_dim,
          "forge: width of one attention head. Unset: dim / n_heads. Qwen3 sets it explicitly (n_heads * head_dim "
          "may differ from dim).",
          Bounds::positive());
  v.field("qkv_bias", qkv_bias, "forge: biases on q_proj, k_proj and v_proj (Qwen2).");
  v.field("o_bias", o_bias, "forge: a bias on o_proj.");
  v.field("mlp_bias", mlp_bias, "forge: biases on the MLP's linears.");
  v.field("qk_norm_eps", qk_norm_eps, "forge: epsilon of the per-head QK RMSNorm (Qwen3 uses rms_norm_eps).",
          Bounds::positive());
  v.field("rope_scaling", rope_scaling,
          "forge: RoPE frequency scaling. llama3: Llama-3.1's (rope_scaling_factor, rope_low_freq_factor, "
          "rope_high_freq_factor, rope_original_max_seq_len); linear: positions / rope_scaling_factor.",
          {"none", "linear", "llama3"});
  v.field("rope_scaling_factor", rope_scaling_factor, "forge: factor of rope_scaling.", Bounds::positive());
  v.field("rope_low_freq_factor", rope_low_freq_factor, "forge: llama3 rope_scaling's low_freq_factor.",
          Bounds::positive());
  v.field("rope_high_freq_factor", rope_high_freq_factor, "forge: llama3 rope_scaling's high_freq_factor.",
          Bounds::positive());
  v.field("rope_original_max_seq_len", rope_original_max_seq_len,
          "forge: llama3 rope_scaling's original_max_position_embeddings.", Bounds::positive());
  if (rope_scaling == "llama3")
    v.require(rope_high_freq_factor > rope_low_freq_factor, "rope_high_freq_factor",
              fmt::format("rope_high_freq_factor = {} must be greater than rope_low_freq_factor = {}",
                          rope_high_freq_factor, rope_low_freq_factor));
  v.unimplemented("model_type", "the VLM decoder is chosen by [vlm] arch; init_from_hf reads a folder's model_type");
  v.unimplemented("sdpa_backend", "LibTorch chooses the attention kernel");
  v.field("num_experts", num_experts,
          "Routed experts of each MoE layer; 0 builds dense MLPs everywhere. See docs/moe.md.",
          Bounds::non_negative());
  v.field("moe_top_k", moe_top_k, "Experts each token is sent to (1..num_experts).", Bounds::positive());
  v.field("moe_frequency", moe_frequency, "Layer i is an MoE layer when (i + 1) % moe_frequency == 0.",
          Bounds::positive());
  v.field("moe_router", moe_router,
          "softmax_topk: softmax over experts, top-k renormalised, load-balancing aux loss; sigmoid_topk: sigmoid "
          "scores plus a bias nudged toward uniform use (no aux loss unless moe_sequence_aux_loss_weight > 0).",
          {"softmax_topk", "sigmoid_topk"});
  v.field("moe_shared_experts", moe_shared_experts, "> 0 adds one shared expert that every token goes through.",
          Bounds::non_negative());
  v.field("moe_aux_loss_weight", moe_aux_loss_weight, "Weight of the routers' aux losses in the objective.",
          Bounds::non_negative());
  v.field("moe_capacity_factor", moe_capacity_factor,
          "> 0: per top-k slot each expert keeps its first ceil(tokens * top_k / num_experts * factor) tokens; "
          "later ones are dropped (the residual carries them). 0: no dropping.",
          Bounds::non_negative());
  v.field("moe_sequence_aux_loss_weight", moe_sequence_aux_loss_weight,
          "sigmoid_topk: weight of its balance loss inside the aux loss (0: none).", Bounds::non_negative());
  v.field("moe_gradient_scale", moe_gradient_scale,
          "In training, scale each expert's outputs by (average tokens per expert) / (its tokens).");
  v.field("moe_bias_schedule", moe_bias_schedule,
          "sigmoid_topk: rate of the bias nudge over training (cosine_decay to 0; linear_warmup over the first "
          "10 %).",
          {"constant", "cosine_decay", "linear_warmup"});
  v.field("moe_packed_experts", moe_packed_experts,
          "Store the experts as three (num_experts, in, out) tensors up_w, down_w, gate_w instead of one MLP each.");
  v.field("moe_expert_ffn_multiplier", moe_expert_ffn_multiplier,
          "Expert hidden size = max(16, 16 * round(trunc(FFN hidden * multiplier) / 16)).", Bounds::positive());
  v.field("moe_router_z_loss_weight", moe_router_z_loss_weight,
          "Weight of the routers' z-loss mean(logsumexp(router logits)^2) in the objective.", Bounds::non_negative());
  if (num_experts > 0)
    v.require(moe_top_k <= num_experts, "moe_top_k",
              fmt::format("moe_top_k = {} must be <= num_experts = {}", moe_top_k, num_experts));
  if (explicit_head_dim) {
    v.require(*explicit_head_dim % 2 == 0, "head_dim", fmt::format("head_dim = {} must be even for RoPE", *explicit_head_dim));
  } else if (n_heads > 0) {
    v.require(dim % n_heads == 0, "dim",
              fmt::format("dim = {} is not divisible by n_heads = {}; choose dim as a multiple of n_heads (or set "
                          "head_dim)",
                          dim, n_heads));
    if (dim % n_heads == 0) {
      v.require((dim / n_heads) % 2 == 0, "dim",
                fmt::format("head_dim = dim / n_heads = {} must be even for RoPE", dim / n_heads));
    }
  }
  if (n_kv_heads && *n_kv_heads > 0) {
    v.require(n_heads % *n_kv_heads == 0, "n_kv_heads",
              fmt::format("n_kv_heads = {} must divide n_heads = {}", *n_kv_heads, n_heads));
  }
}

int64_t ModelConfig::ffn_hidden() const { return nn::ffn_hidden_size(dim, ffn_dim_multiplier, ffn_hidden_dim); }

// ------------------------------------------------------------ [vision_encoder]

EncoderConfig::~EncoderConfig() = default;

void EncoderConfig::visit(ConfigVisitor& v) {
  v.field("type", type,
          "Encoder plugin (plugins/encoder/<type>): random (deterministic stub), siglip (alias siglip2), clip, "
          "or one you add.");
  v.field("path", path,
          "Local Hugging Face model folder (config.json + model.safetensors or its index); a relative path is "
          "relative to the working directory. Empty: the stub (random) or a randomly initialised tower (siglip, "
          "clip).");
  v.field("feature_dim", feature_dim, "Feature width of the tokens; 0 takes the encoder's own.", Bounds::non_negative());
  v.field("num_tokens", num_tokens, "Patch tokens per image; 0 takes the encoder's own.", Bounds::non_negative());
}

std::string EncoderConfig::resolved_path() const {
  if (path.empty()) return "";
  std::filesystem::path p(path);
  if (p.is_absolute() || base_dir.empty()) return p.lexically_normal().string();
  return (std::filesystem::path(base_dir) / p).lexically_normal().string();
}

// ------------------------------------------------------------ [adapter]

AdapterConfig::~AdapterConfig() = default;

void AdapterConfig::visit(ConfigVisitor& v) {
  v.field("type", type,
          "Adapter plugin (plugins/adapter/<type>): mlp_2layer, linear, avgpool, attentional_pool, or one you add.");
  v.field("hidden_dim", hidden_dim, "mlp_2layer: hidden width; 0 uses model.dim.", Bounds::non_negative());
  v.field("activation", activation, "mlp_2layer: activation between the two linears.", {"gelu", "silu", "relu"});
  v.field("pool_window", pool_window,
          "avgpool / attentional_pool: side of the square window of patches pooled into one token.",
          Bounds::positive());
  v.field("pool_heads", pool_heads, "attentional_pool: attention heads; must divide the encoder's feature width.",
          Bounds::positive());
}

// ------------------------------------------------------------ [vlm]

void FreezeSpec::visit(ConfigVisitor& v) {
  v.field("module", module,
          "An alias of module_patterns (transformer, vision_encoder, adapter, or the arch's), or an fnmatch "
          "pattern over parameter names such as \"transformer.layers.0.*\".");
  v.field("frozen", frozen, "true freezes the matched parameters, false makes them trainable.");
  v.require(!module.empty(), "module", "a freeze spec needs a module (an alias or a parameter-name pattern)");
}

void FreezeStage::visit(ConfigVisitor& v) {
  v.field("start_step", start_step, "Optimizer step from which this stage applies (0 applies from the start).",
          Bounds::non_negative());
  TableListOf<FreezeSpec> list(specs);
  v.tables("specs", list, "Freeze specs of this stage, applied in order over the previous state.");
}

VLMConfig::~VLMConfig() = default;

void VLMConfig::visit(ConfigVisitor& v) {
  v.field("arch", arch,
          "Arch plugin (plugins/arch/<arch>): joint_decoder, cross_attention, mot, or one you add. Its own keys "
          "are listed with it.");
  v.field("max_text_len", max_text_len,
          "Text positions per sample: captions are padded or truncated to exactly this many tokens.",
          Bounds::positive());
  TableListOf<FreezeSpec> f(freeze);
  v.tables("freeze", f, "Freeze specs applied when the model is built, in order (later specs win).");
  TableListOf<FreezeStage> s(freeze_schedule);
  v.tables("freeze_schedule", s,
           "Stages applied when training reaches their start_step; every parameter trainable at any stage is "
           "optimised from the step it becomes trainable.");
  v.field("module_patterns", module_patterns,
          "Freeze aliases -> fnmatch patterns over parameter names, merged over the defaults alias by alias.");
  std::set<int64_t> seen;
  int64_t prev = -1;
  for (size_t i = 0; i < freeze_schedule.size(); ++i) {
    int64_t st = freeze_schedule[i].start_step;
    v.require(st > prev && !seen.count(st), "freeze_schedule",
              fmt::format("start_step values must be unique and strictly increasing (stage {} has start_step {} "
                          "after {})",
                          i, st, prev));
    seen.insert(st);
    prev = st;
  }
}

int64_t VLMConfig::residual_stream_image_tokens(int64_t n_visual) const { return n_visual; }

StringListMap VLMConfig::arch_module_patterns() const { return {}; }

StringListMap VLMConfig::resolved_module_patterns() const {
  StringListMap out{{"transformer", {"transformer", "transformer.*"}},
                    {"vision_encoder", {"vision_encoder", "vision_encoder.*"}},
                    {"adapter", {"adapter", "adapter.*"}}};
  for (const auto& [k, v] : arch_module_patterns()) out[k] = v;
  for (const auto& [k, v] : module_patterns) out[k] = v;
  return out;
}

}  // namespace forge
