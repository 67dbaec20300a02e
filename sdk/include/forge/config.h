// The config API.
//
// A config section is a plain struct with a visit(ConfigVisitor&) method that
// names each field, its help text and its constraints, once. The core runs
// several visitors over the same method:
//   - the reader fills the struct from TOML and reports every problem with
//     file:line:column, the key, the bad value and what is accepted;
//   - the writer prints the fully resolved config as TOML (`forge validate`,
//     and the config.toml stored in every checkpoint);
//   - the documenter writes the configuration reference (docs/configuration.md).
// Plugins extend a section ([vision_encoder], [adapter], [vlm]) by subclassing
// its struct and overriding visit() (call the base first). They never see TOML.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "forge/export.h"

namespace forge {

class ConfigVisitor;

// Numeric constraint on a field; describe() gives the words used in errors
// and docs ("must be > 0", "must be in [0, 1)").
struct FORGE_API Bounds {
  std::optional<double> min;
  std::optional<double> max;
  bool min_inclusive = true;
  bool max_inclusive = true;

  static Bounds positive();                // > 0
  static Bounds non_negative();            // >= 0
  static Bounds at_least(double v);        // >= v
  static Bounds range(double lo, double hi, bool lo_inclusive = true, bool hi_inclusive = true);
  bool contains(double v) const;
  bool empty() const { return !min && !max; }
  std::string describe() const;
};

using Choices = std::vector<std::string>;

// A TOML array of tables ([[section.key]] or key = [{...}, ...]) bound to a
// std::vector of structs with visit(). Use TableListOf<T>.
class FORGE_API TableList {
 public:
  virtual ~TableList();
  virtual size_t size() const = 0;
  virtual void resize(size_t n) = 0;
  virtual void visit(size_t i, ConfigVisitor& v) = 0;
};

template <class T>
class TableListOf final : public TableList {
 public:
  explicit TableListOf(std::vector<T>& items) : items_(items) {}
  size_t size() const override { return items_.size(); }
  void resize(size_t n) override { items_.resize(n); }
  void visit(size_t i, ConfigVisitor& v) override { items_[i].visit(v); }

 private:
  std::vector<T>& items_;
};

using StringListMap = std::map<std::string, std::vector<std::string>>;
using IntMap = std::map<std::string, int64_t>;

class FORGE_API ConfigVisitor {
 public:
  virtual ~ConfigVisitor();

  virtual void field(std::string_view key, int64_t& value, std::string_view help, Bounds bounds = {}) = 0;
  // An optional integer: absent in TOML means "unset" (the reference's None).
  virtual void field(std::string_view key, std::optional<int64_t>& value, std::string_view help,
                     Bounds bounds = {}) = 0;
  virtual void field(std::string_view key, double& value, std::string_view help, Bounds bounds = {}) = 0;
  virtual void field(std::string_view key, bool& value, std::string_view help) = 0;
  // A string; when `choices` is not empty the value must be one of them.
  virtual void field(std::string_view key, std::string& value, std::string_view help,
                     const Choices& choices = {}) = 0;
  virtual void field(std::string_view key, std::optional<std::string>& value, std::string_view help) = 0;
  virtual void field(std::string_view key, std::vector<std::string>& value, std::string_view help) = 0;
  // A list of numbers; `length` > 0 requires exactly that many; each element must satisfy `bounds`.
  virtual void field(std::string_view key, std::vector<double>& value, std::string_view help,
                     size_t length = 0, Bounds bounds = {}) = 0;
  // A table whose values are lists of strings (e.g. [vlm.module_patterns]).
  virtual void field(std::string_view key, StringListMap& value, std::string_view help) = 0;
  // A table whose values are integers, each within `bounds` (e.g. [vlm.moma_experts_per_modality]).
  virtual void field(std::string_view key, IntMap& value, std::string_view help, Bounds bounds = {}) = 0;
  // An array of tables.
  virtual void tables(std::string_view key, TableList& list, std::string_view help) = 0;

  // A key KempnerForge accepts that forge does not implement: reading it
  // gives one warning (so reference configs validate), its value is ignored.
  virtual void unimplemented(std::string_view key, std::string_view note) = 0;
  // A KempnerForge key that would change what is trained or on what data,
  // which forge does not implement: its `neutral` value (TOML text of the
  // value that changes nothing: "1", "\"\"", "false", "[]") is accepted
  // silently, anything else is an error naming the key (no silent
  // downgrade). Default: unimplemented(key, note).
  virtual void unsupported(std::string_view key, std::string_view note, std::string_view neutral);

  // A rule over several fields. When `ok` is false the reader reports
  // `message` as an error located at `key` (other visitors ignore it).
  virtual void require(bool ok, std::string_view key, const std::string& message) = 0;
  // A warning located at `key` (reader only).
  virtual void warn(std::string_view key, const std::string& message) = 0;

  // True while filling a struct from TOML.
  virtual bool reading() const = 0;
};

// ---------------------------------------------------------------- [model]
// The text decoder. Names, defaults and rules follow KempnerForge's
// ModelConfig (docs/configuration.md).
struct FORGE_API ModelConfig {
  // forge: a local Hugging Face causal-LM folder whose config.json gives the
  // decoder's shape and whose weights initialise it (core/io/hf_llm.h).
  std::string init_from_hf;
  int64_t dim = 4096;
  int64_t n_layers = 32;
  int64_t n_heads = 32;
  std::optional<int64_t> n_kv_heads;  // unset: n_heads (MHA)
  int64_t vocab_size = 32000;
  double ffn_dim_multiplier = 1.0;
  std::optional<int64_t> ffn_hidden_dim;  // unset: derived from dim (see ffn_hidden())
  std::string norm_type = "rmsnorm";
  double norm_eps = 1e-5;
  std::string activation = "silu";
  int64_t max_seq_len = 2048;
  double rope_theta = 10000.0;
  bool tie_embeddings = false;
  bool qk_norm = false;
  double init_std = 0.02;
  // forge: what pretrained families need (Qwen2 q/k/v biases, Qwen3's explicit
  // head_dim and QK-norm eps, Llama-3.1's RoPE scaling). Defaults are the
  // reference's decoder.
  std::optional<int64_t> explicit_head_dim;  // key "head_dim"; unset: dim / n_heads
  bool qkv_bias = false;                     // biases on q_proj, k_proj, v_proj
  bool o_bias = false;                       // bias on o_proj
  bool mlp_bias = false;                     // biases on the MLP's linears
  double qk_norm_eps = 1e-5;
  std::string rope_scaling = "none";         // "none" | "llama3" | "linear"
  double rope_scaling_factor = 1.0;
  double rope_low_freq_factor = 1.0;         // llama3
  double rope_high_freq_factor = 4.0;        // llama3
  int64_t rope_original_max_seq_len = 8192;  // llama3
  // Mixture of experts (spec 1.2 and 2.12): layer i's MLP is an MoE layer
  // when num_experts > 0 and (i + 1) % moe_frequency == 0 (forge/moe.h).
  int64_t num_experts = 0;
  int64_t moe_top_k = 2;
  int64_t moe_frequency = 1;
  std::string moe_router = "softmax_topk";
  int64_t moe_shared_experts = 0;  // > 0 builds exactly one shared expert
  double moe_aux_loss_weight = 0.01;
  double moe_capacity_factor = 0.0;
  double moe_sequence_aux_loss_weight = 0.0;
  bool moe_gradient_scale = false;
  std::string moe_bias_schedule = "constant";
  bool moe_packed_experts = false;
  double moe_expert_ffn_multiplier = 1.0;
  double moe_router_z_loss_weight = 0.0;

  void visit(ConfigVisitor& v);

  int64_t head_dim() const { return explicit_head_dim.value_or(n_heads > 0 ? dim / n_heads : 0); }
  int64_t kv_heads() const { return n_kv_heads.value_or(n_heads); }
  // ffn_hidden_dim if set, else trunc(4 * dim * 2/3 * ffn_dim_multiplier)
  // rounded up to a multiple of 256 (dim 4096 -> 11008).
  int64_t ffn_hidden() const;
};

// ---------------------------------------------------------------- [vision_encoder]
// Fields every encoder shares. An encoder plugin may subclass it to add its
// own keys (override visit() and call EncoderConfig::visit first).
struct FORGE_API EncoderConfig {
  virtual ~EncoderConfig();
  std::string type = "random";
  std::string path;          // local Hugging Face model folder; relative to the config file
  int64_t feature_dim = 0;   // 0: the encoder's own
  int64_t num_tokens = 0;    // 0: the encoder's own
  std::string base_dir;      // not a key: the directory relative paths resolve against

  virtual void visit(ConfigVisitor& v);
  // `path` resolved against base_dir ("" stays "").
  std::string resolved_path() const;
};

// ---------------------------------------------------------------- [adapter]
struct FORGE_API AdapterConfig {
  virtual ~AdapterConfig();
  std::string type = "mlp_2layer";
  int64_t hidden_dim = 0;           // mlp_2layer: 0 means model.dim
  std::string activation = "gelu";  // mlp_2layer
  int64_t pool_window = 2;          // avgpool, attentional_pool
  int64_t pool_heads = 16;          // attentional_pool

  virtual void visit(ConfigVisitor& v);
};

// ---------------------------------------------------------------- [vlm]
struct FORGE_API FreezeSpec {
  std::string module;  // an alias of module_patterns, or an fnmatch pattern over parameter names
  bool frozen = true;
  void visit(ConfigVisitor& v);
  bool operator==(const FreezeSpec& o) const { return module == o.module && frozen == o.frozen; }
};

struct FORGE_API FreezeStage {
  int64_t start_step = 0;
  std::vector<FreezeSpec> specs;
  void visit(ConfigVisitor& v);
};

// The arch-level knobs. Each arch plugin registers a subclass holding its own
// fields; `arch` selects which one parses the [vlm] table.
struct FORGE_API VLMConfig {
  virtual ~VLMConfig();
  std::string arch = "joint_decoder";
  int64_t max_text_len = 512;
  std::vector<FreezeSpec> freeze{FreezeSpec{"vision_encoder", true}};
  std::vector<FreezeStage> freeze_schedule;
  StringListMap module_patterns;  // the user's; merged over the defaults alias by alias (D3)

  virtual void visit(ConfigVisitor& v);
  // How many of `n_visual` image tokens sit in the decoder's residual stream.
  virtual int64_t residual_stream_image_tokens(int64_t n_visual) const;
  // Aliases this arch adds to the defaults (e.g. "cross_attention").
  virtual StringListMap arch_module_patterns() const;
  // Defaults (transformer, vision_encoder, adapter), then the arch's, then the user's.
  StringListMap resolved_module_patterns() const;
};

}  // namespace forge
