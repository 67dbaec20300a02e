// Hugging Face causal LMs <-> forge's decoder (core/io/hf_llm.h).
#include "core/io/hf_llm.h"

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/util/strings.h"
#include "forge/decoder.h"
#include "forge/error.h"
#include "forge/safetensors.h"

namespace fs = std::filesystem;

namespace forge::hf {

using json = nlohmann::json;

const std::vector<std::string>& supported_llm_types() {
  static const std::vector<std::string> types{"llama", "mistral", "qwen2", "qwen3"};
  return types;
}

namespace {

json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw FormatError(fmt::format("{}: cannot open", path));
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw FormatError(fmt::format("{}: not valid JSON ({})", path, e.what()));
  }
  if (!j.is_object()) throw FormatError(fmt::format("{}: expected a JSON object", path));
  return j;
}

// Typed reads that name the file and the key.
struct Reader {
  std::string path;
  const json& j;

  bool has(const std::string& k) const { return j.contains(k) && !j[k].is_null(); }
  [[noreturn]] void fail(const std::string& k, const std::string& what) const {
    throw FormatError(fmt::format("{}: \"{}\" {}", path, k, what));
  }
  int64_t integer(const std::string& k) const {
    if (!has(k)) fail(k, "is missing (every causal-LM config.json has it)");
    return integer(k, 0);
  }
  int64_t integer(const std::string& k, int64_t fallback) const {
    if (!has(k)) return fallback;
    if (!j[k].is_number_integer() || j[k].get<int64_t>() <= 0)
      fail(k, fmt::format("must be a positive integer, got {}", j[k].dump()));
    return j[k].get<int64_t>();
  }
  double number(const std::string& k, double fallback) const {
    if (!has(k)) return fallback;
    if (!j[k].is_number()) fail(k, fmt::format("must be a number, got {}", j[k].dump()));
    return j[k].get<double>();
  }
  bool boolean(const std::string& k, bool fallback) const {
    if (!has(k)) return fallback;
    if (!j[k].is_boolean()) fail(k, fmt::format("must be true or false, got {}", j[k].dump()));
    return j[k].get<bool>();
  }
  std::string string(const std::string& k, const std::string& fallback) const {
    if (!has(k)) return fallback;
    if (!j[k].is_string()) fail(k, fmt::format("must be a string, got {}", j[k].dump()));
    return j[k].get<std::string>();
  }
  // A token id, or the first of a list of them (eos_token_id in Llama-3.1).
  std::optional<int64_t> token_id(const std::string& k) const {
    if (!has(k)) return std::nullopt;
    const json& v = j[k];
    const json* e = &v;
    if (v.is_array()) {
      if (v.empty()) return std::nullopt;
      e = &v[0];
    }
    if (!e->is_number_integer() || e->get<int64_t>() < 0)
      fail(k, fmt::format("must be a token id (or a list of them), got {}", v.dump()));
    return e->get<int64_t>();
  }
};

std::string num_text(double v) { return fmt::format("{}", v); }

// RoPE settings: transformers 5 writes "rope_parameters" {rope_type, rope_theta, ...};
// older folders (every released Llama) write "rope_theta" and "rope_scaling".
void read_rope(const Reader& r, LlmConfig& out) {
  ModelConfig& m = out.model;
  const json* params = nullptr;
  std::string where;
  if (r.has("rope_parameters")) {
    params = &r.j["rope_parameters"];
    where = "rope_parameters";
  } else if (r.has("rope_scaling")) {
    params = &r.j["rope_scaling"];
    where = "rope_scaling";
  }
  m.rope_theta = r.number("rope_theta", 10000.0);
  out.keys.emplace_back("rope_theta", "rope_theta");
  m.rope_scaling = "none";
  if (!params) return;
  if (!params->is_object()) r.fail(where, fmt::format("must be an object, got {}", params->dump()));
  const Reader p{r.path, *params};
  auto sub = [&](const std::string& k) { return where + "." + k; };
  if (p.has("rope_theta")) {
    if (!(*params)["rope_theta"].is_number()) r.fail(sub("rope_theta"), "must be a number");
    m.rope_theta = (*params)["rope_theta"].get<double>();
  }
  std::string type = p.string("rope_type", p.string("type", "default"));
  auto need = [&](const std::string& k) {
    if (!p.has(k) || !(*params)[k].is_number()) r.fail(sub(k), fmt::format("is needed by rope_type \"{}\"", type));
    return (*params)[k].get<double>();
  };
  if (type == "default") return;
  if (type == "linear") {
    m.rope_scaling = "linear";
    m.rope_scaling_factor = need("factor");
  } else if (type == "llama3") {
    m.rope_scaling = "llama3";
    m.rope_scaling_factor = need("factor");
    m.rope_low_freq_factor = need("low_freq_factor");
    m.rope_high_freq_factor = need("high_freq_factor");
    m.rope_original_max_seq_len = static_cast<int64_t>(need("original_max_position_embeddings"));
    out.keys.emplace_back("rope_low_freq_factor", sub("low_freq_factor"));
    out.keys.emplace_back("rope_high_freq_factor", sub("high_freq_factor"));
    out.keys.emplace_back("rope_original_max_seq_len", sub("original_max_position_embeddings"));
  } else {
    r.fail(sub("rope_type"), fmt::format("= \"{}\" is not supported by forge; supported: default, linear, llama3", type));
  }
  out.keys.emplace_back("rope_scaling", sub("rope_type"));
  out.keys.emplace_back("rope_scaling_factor", sub("factor"));
}

}  // namespace

LlmConfig read_llm_config(const std::string& dir, const ModelConfig& base) {
  LlmConfig out;
  out.dir = dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw FormatError(fmt::format("{}: not a folder (init_from_hf needs a local Hugging Face causal-LM folder with "
                                  "config.json and model.safetensors)",
                                  dir));
  out.config_path = (fs::path(dir) / "config.json").string();
  if (!fs::exists(out.config_path, ec))
    throw FormatError(fmt::format("{}: missing; init_from_hf needs the model's config.json next to its weights "
                                  "(download the whole Hugging Face folder)",
                                  out.config_path));
  const json j = read_json(out.config_path);
  const Reader r{out.config_path, j};
  out.model_type = r.string("model_type", "");
  const auto& types = supported_llm_types();
  if (std::find(types.begin(), types.end(), out.model_type) == types.end())
    r.fail("model_type", fmt::format("= \"{}\" is not supported by init_from_hf; supported: {} (Llama 1-3.2 and SmolLM2 "
                                     "are \"llama\", Qwen2.5 is \"qwen2\")",
                                     out.model_type, util::join(types, ", ")));
  ModelConfig& m = out.model;
  m = base;
  auto set = [&](const char* key, const char* hf_key) { out.keys.emplace_back(key, hf_key); };
  m.dim = r.integer("hidden_size");
  set("dim", "hidden_size");
  m.n_layers = r.integer("num_hidden_layers");
  set("n_layers", "num_hidden_layers");
  m.n_heads = r.integer("num_attention_heads");
  set("n_heads", "num_attention_heads");
  m.n_kv_heads = r.integer("num_key_value_heads", m.n_heads);
  set("n_kv_heads", "num_key_value_heads");
  if (m.n_heads % *m.n_kv_heads != 0)
    r.fail("num_key_value_heads", fmt::format("= {} must divide num_attention_heads = {}", *m.n_kv_heads, m.n_heads));
  m.vocab_size = r.integer("vocab_size");
  set("vocab_size", "vocab_size");
  m.ffn_hidden_dim = r.integer("intermediate_size");
  set("ffn_hidden_dim", "intermediate_size");
  m.norm_type = "rmsnorm";
  set("norm_type", "model_type");
  m.norm_eps = r.number("rms_norm_eps", 1e-6);
  set("norm_eps", "rms_norm_eps");
  const std::string act = r.string("hidden_act", "silu");
  if (act != "silu") r.fail("hidden_act", fmt::format("= \"{}\" is not supported; forge's SwiGLU MLP needs \"silu\"", act));
  m.activation = "silu";
  set("activation", "hidden_act");
  m.tie_embeddings = r.boolean("tie_word_embeddings", false);
  set("tie_embeddings", "tie_word_embeddings");
  // head_dim: explicit in Qwen3 (and written, often equal to hidden/heads, by Llama and Mistral).
  const int64_t head_dim = r.integer("head_dim", m.dim / m.n_heads);
  if (!r.has("head_dim") && m.dim % m.n_heads != 0)
    r.fail("hidden_size", fmt::format("= {} is not divisible by num_attention_heads = {} and there is no head_dim",
                                      m.dim, m.n_heads));
  if (head_dim % 2 != 0) r.fail("head_dim", fmt::format("= {} must be even for RoPE", head_dim));
  m.explicit_head_dim = head_dim * m.n_heads == m.dim ? std::nullopt : std::optional<int64_t>(head_dim);
  set("head_dim", "head_dim");
  // Biases and QK-norm by family.
  if (out.model_type == "qwen2") {
    m.qkv_bias = true;
    m.o_bias = false;
  } else {
    const bool b = r.boolean("attention_bias", false);
    m.qkv_bias = m.o_bias = b;
  }
  set("qkv_bias", out.model_type == "qwen2" ? "model_type" : "attention_bias");
  set("o_bias", out.model_type == "qwen2" ? "model_type" : "attention_bias");
  m.mlp_bias = r.boolean("mlp_bias", false);
  set("mlp_bias", "mlp_bias");
  m.qk_norm = out.model_type == "qwen3";
  set("qk_norm", "model_type");
  if (m.qk_norm) {
    m.qk_norm_eps = m.norm_eps;
    set("qk_norm_eps", "rms_norm_eps");
  }
  read_rope(r, out);
  out.max_position_embeddings = r.integer("max_position_embeddings", 2048);

  // Sliding-window attention: the window binds only when it is on and shorter than the sequence.
  if (out.model_type == "mistral") {
    if (r.has("sliding_window")) {
      out.sliding_window = r.integer("sliding_window", 0);
      out.sliding_window_key = "sliding_window";
    }
  } else if (out.model_type == "qwen2" || out.model_type == "qwen3") {
    if (r.boolean("use_sliding_window", false) && r.has("sliding_window")) {
      out.sliding_window = r.integer("sliding_window", 0);
      out.sliding_window_key = "use_sliding_window";
    }
  }
  if (r.has("layer_types") && j["layer_types"].is_array()) {
    for (const auto& t : j["layer_types"])
      if (t == "sliding_attention") {
        out.sliding_window = r.integer("sliding_window", 1);
        out.sliding_window_key = "layer_types";
      }
  }

  // Special ids: generation_config.json first (what generate() stops on), then config.json.
  const std::string gen_path = (fs::path(dir) / "generation_config.json").string();
  std::optional<json> gen;
  if (fs::exists(gen_path, ec)) gen = read_json(gen_path);
  for (auto [key, dst] : {std::pair<const char*, std::optional<int64_t>*>{"bos_token_id", &out.bos_id},
                          {"eos_token_id", &out.eos_id},
                          {"pad_token_id", &out.pad_id}}) {
    if (gen) *dst = Reader{gen_path, *gen}.token_id(key);
    if (!*dst) *dst = r.token_id(key);
  }
  return out;
}

std::string model_value(const ModelConfig& m, const std::string& key) {
  if (key == "dim") return std::to_string(m.dim);
  if (key == "n_layers") return std::to_string(m.n_layers);
  if (key == "n_heads") return std::to_string(m.n_heads);
  if (key == "n_kv_heads") return std::to_string(m.kv_heads());
  if (key == "vocab_size") return std::to_string(m.vocab_size);
  if (key == "ffn_hidden_dim") return std::to_string(m.ffn_hidden());
  if (key == "norm_type") return m.norm_type;
  if (key == "norm_eps") return num_text(m.norm_eps);
  if (key == "activation") return m.activation;
  if (key == "tie_embeddings") return m.tie_embeddings ? "true" : "false";
  if (key == "head_dim") return std::to_string(m.head_dim());
  if (key == "qkv_bias") return m.qkv_bias ? "true" : "false";
  if (key == "o_bias") return m.o_bias ? "true" : "false";
  if (key == "mlp_bias") return m.mlp_bias ? "true" : "false";
  if (key == "qk_norm") return m.qk_norm ? "true" : "false";
  if (key == "qk_norm_eps") return num_text(m.qk_norm_eps);
  if (key == "rope_theta") return num_text(m.rope_theta);
  if (key == "rope_scaling") return m.rope_scaling;
  if (key == "rope_scaling_factor") return num_text(m.rope_scaling_factor);
  if (key == "rope_low_freq_factor") return num_text(m.rope_low_freq_factor);
  if (key == "rope_high_freq_factor") return num_text(m.rope_high_freq_factor);
  if (key == "rope_original_max_seq_len") return std::to_string(m.rope_original_max_seq_len);
  if (key == "max_seq_len") return std::to_string(m.max_seq_len);
  throw InvalidArgument(fmt::format("model_value: no [model] key '{}'", key));
}

// ------------------------------------------------------------ names

namespace {

// HF suffix after "model.layers.<i>." <-> forge suffix after "layers.<i>.".
const std::vector<std::pair<std::string, std::string>>& layer_parts() {
  static const std::vector<std::pair<std::string, std::string>> parts{
      {"input_layernorm.", "attention_norm."},
      {"post_attention_layernorm.", "mlp_norm."},
      {"self_attn.", "attention."},
      {"mlp.", "mlp."},
  };
  return parts;
}

const std::vector<std::pair<std::string, std::string>>& top_names() {
  static const std::vector<std::pair<std::string, std::string>> names{
      {"model.embed_tokens.weight", "token_embedding.embedding.weight"},
      {"model.norm.weight", "norm.weight"},
      {"lm_head.weight", "output_head.proj.weight"},
  };
  return names;
}

// "<prefix><digits>.<rest>" -> {digits, rest}
bool split_layer(const std::string& name, const std::string& prefix, std::string* index, std::string* rest) {
  if (!util::starts_with(name, prefix)) return false;
  size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos || dot == prefix.size()) return false;
  *index = name.substr(prefix.size(), dot - prefix.size());
  if (index->find_first_not_of("0123456789") != std::string::npos) return false;
  *rest = name.substr(dot + 1);
  return true;
}

}  // namespace

std::string forge_name_of(const std::string& hf) {
  for (const auto& [h, f] : top_names())
    if (hf == h) return f;
  std::string i, rest;
  if (!split_layer(hf, "model.layers.", &i, &rest)) return "";
  for (const auto& [h, f] : layer_parts())
    if (util::starts_with(rest, h)) return "layers." + i + "." + f + rest.substr(h.size());
  return "";
}

std::string hf_name_of(const std::string& forge) {
  for (const auto& [h, f] : top_names())
    if (forge == f) return h;
  std::string i, rest;
  if (!split_layer(forge, "layers.", &i, &rest)) return "";
  for (const auto& [h, f] : layer_parts())
    if (util::starts_with(rest, f)) return "model.layers." + i + "." + h + rest.substr(f.size());
  return "";
}

// ------------------------------------------------------------ weights

namespace {

class FolderWeights final : public DenseWeights {
 public:
  explicit FolderWeights(const std::string& dir) : dir_(dir), files_(dir) {
    for (const auto& key : files_.names()) {
      if (util::ends_with(key, "rotary_emb.inv_freq")) continue;  // older checkpoints store RoPE tables
      std::string name = forge_name_of(key);
      if (name.empty())
        throw FormatError(fmt::format("{}: unexpected weight '{}' (not a weight of a Llama-style causal LM; is "
                                      "this folder a {} model?)",
                                      files_.file_of(key), key, util::join(supported_llm_types(), "/")));
      by_forge_[name] = key;
    }
  }
  bool contains(const std::string& name) const override { return by_forge_.count(name) > 0; }
  at::Tensor load(const std::string& name) const override {
    const std::string& key = by_forge_.at(name);
    used_.insert(name);
    const auto& info = files_.info(key);
    if (!c10::isFloatingType(info.scalar_type))
      throw FormatError(fmt::format("{}: weight '{}' has dtype {}; expected F32, F16 or BF16", files_.file_of(key),
                                    key, info.dtype));
    return files_.load(key, at::kFloat);
  }
  std::string where(const std::string& name) const override {
    auto it = by_forge_.find(name);
    if (it != by_forge_.end()) return fmt::format("{}: '{}'", files_.file_of(it->second), it->second);
    const fs::path folder(dir_);
    const std::string file = fs::exists(folder / "model.safetensors.index.json")
                                 ? (folder / "model.safetensors.index.json").string()
                                 : (folder / "model.safetensors").string();
    std::string hf = hf_name_of(name);
    return fmt::format("{}: '{}'", file, hf.empty() ? name : hf);
  }
  // Stored weights the decoder did not take.
  std::vector<std::string> unused() const {
    std::vector<std::string> out;
    for (const auto& [name, key] : by_forge_)
      if (!used_.count(name)) out.push_back(key);
    return out;
  }
  const std::string& file_of(const std::string& key) const { return files_.file_of(key); }

 private:
  std::string dir_;
  safetensors::ModelFiles files_;
  std::map<std::string, std::string> by_forge_;
  mutable std::set<std::string> used_;
};

}  // namespace

int64_t load_llm_weights(DecoderImpl& decoder, const std::string& dir) {
  FolderWeights weights(dir);
  const int64_t n = decoder.hooks().load_dense(decoder, weights);
  for (const auto& key : weights.unused()) {
    if (key == "lm_head.weight" && decoder.config().tie_embeddings) continue;  // a tied head stored anyway
    throw FormatError(fmt::format("{}: unexpected weight '{}' (the decoder built from {}/config.json has no such "
                                  "parameter; is config.json from another model?)",
                                  weights.file_of(key), key, dir));
  }
  return n;
}

}  // namespace forge::hf
