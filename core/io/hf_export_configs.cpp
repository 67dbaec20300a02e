// The config.json files of an HF export (core/io/hf_export.h): the causal LM
// reproducing forge's decoder, the vision tower's, the image processor's.
#include <fmt/format.h>

#include <filesystem>
#include <fstream>

#include "core/data/tokenizer.h"
#include "core/io/hf_export.h"
#include "forge/config.h"
#include "forge/error.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace forge::hf {

namespace {

// Reads every field a visit() names into a JSON object.
class JsonCollector final : public ConfigVisitor {
 public:
  json out = json::object();
  void field(std::string_view k, int64_t& v, std::string_view, Bounds) override { out[std::string(k)] = v; }
  void field(std::string_view k, std::optional<int64_t>& v, std::string_view, Bounds) override {
    out[std::string(k)] = v ? json(*v) : json(nullptr);
  }
  void field(std::string_view k, double& v, std::string_view, Bounds) override { out[std::string(k)] = v; }
  void field(std::string_view k, bool& v, std::string_view) override { out[std::string(k)] = v; }
  void field(std::string_view k, std::string& v, std::string_view, const Choices&) override { out[std::string(k)] = v; }
  void field(std::string_view k, std::optional<std::string>& v, std::string_view) override {
    out[std::string(k)] = v ? json(*v) : json(nullptr);
  }
  void field(std::string_view k, std::vector<std::string>& v, std::string_view) override { out[std::string(k)] = v; }
  void field(std::string_view k, std::vector<double>& v, std::string_view, size_t, Bounds) override {
    out[std::string(k)] = v;
  }
  void field(std::string_view k, StringListMap& v, std::string_view) override { out[std::string(k)] = v; }
  void field(std::string_view k, IntMap& v, std::string_view, Bounds) override { out[std::string(k)] = v; }
  void tables(std::string_view, TableList&, std::string_view) override {}
  void unimplemented(std::string_view, std::string_view) override {}
  void require(bool, std::string_view, const std::string&) override {}
  void warn(std::string_view, const std::string&) override {}
  bool reading() const override { return false; }
};

json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw FormatError(fmt::format("{}: cannot open", path));
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw FormatError(fmt::format("{}: not valid JSON ({})", path, e.what()));
  }
}

[[noreturn]] void refuse(const std::string& what) {
  throw UserError(fmt::format("the decoder cannot be exported as a Hugging Face causal LM: {}", what));
}

}  // namespace

json encoder_fields(EncoderConfig& cfg) {
  JsonCollector c;
  cfg.visit(c);
  return c.out;
}

json text_config(const ModelConfig& m, const Tokenizer& tok, int64_t vocab_size) {
  if (m.norm_type != "rmsnorm")
    refuse(fmt::format("model.norm_type = \"{}\" (HF's Llama/Qwen use RMSNorm)", m.norm_type));
  if (m.activation != "silu")
    refuse(fmt::format("model.activation = \"{}\" (HF's Llama/Qwen MLPs are SwiGLU: activation = \"silu\")",
                       m.activation));
  std::string type = "llama", arch = "LlamaForCausalLM";
  if (m.qk_norm) {
    type = "qwen3";
    arch = "Qwen3ForCausalLM";
    if (m.qkv_bias != m.o_bias)
      refuse("Qwen3's attention_bias covers q, k, v and o together; model.qkv_bias != model.o_bias");
    if (m.mlp_bias) refuse("model.mlp_bias = true with qk_norm (Qwen3's MLP has no biases)");
    if (m.qk_norm_eps != m.norm_eps)
      refuse(fmt::format("model.qk_norm_eps = {} differs from model.norm_eps = {} (Qwen3 uses rms_norm_eps for both)",
                         m.qk_norm_eps, m.norm_eps));
  } else if (m.qkv_bias && !m.o_bias) {
    type = "qwen2";
    arch = "Qwen2ForCausalLM";
    if (m.mlp_bias) refuse("model.mlp_bias = true with q/k/v biases only (Qwen2's MLP has no biases)");
  } else if (m.o_bias && !m.qkv_bias) {
    refuse("model.o_bias = true without model.qkv_bias (no HF family has a bias on o_proj alone)");
  }
  json c;
  c["architectures"] = {arch};
  c["model_type"] = type;
  c["hidden_size"] = m.dim;
  c["intermediate_size"] = m.ffn_hidden();
  c["num_hidden_layers"] = m.n_layers;
  c["num_attention_heads"] = m.n_heads;
  c["num_key_value_heads"] = m.kv_heads();
  c["head_dim"] = m.head_dim();
  c["hidden_act"] = "silu";
  c["rms_norm_eps"] = m.norm_eps;
  c["vocab_size"] = vocab_size;
  c["max_position_embeddings"] = m.max_seq_len;
  c["tie_word_embeddings"] = m.tie_embeddings;
  c["initializer_range"] = m.init_std;
  c["attention_dropout"] = 0.0;
  c["use_cache"] = true;
  c["dtype"] = "float32";
  if (type != "qwen2") c["attention_bias"] = m.qkv_bias;
  if (type == "llama") c["mlp_bias"] = m.mlp_bias;
  if (type != "llama") {
    c["use_sliding_window"] = false;
    c["sliding_window"] = nullptr;
    c["max_window_layers"] = m.n_layers;
  }
  json rope{{"rope_theta", m.rope_theta}, {"rope_type", "default"}};
  if (m.rope_scaling == "linear") {
    rope["rope_type"] = "linear";
    rope["factor"] = m.rope_scaling_factor;
  } else if (m.rope_scaling == "llama3") {
    rope["rope_type"] = "llama3";
    rope["factor"] = m.rope_scaling_factor;
    rope["low_freq_factor"] = m.rope_low_freq_factor;
    rope["high_freq_factor"] = m.rope_high_freq_factor;
    rope["original_max_position_embeddings"] = m.rope_original_max_seq_len;
  } else if (m.rope_scaling != "none") {
    refuse(fmt::format("model.rope_scaling = \"{}\"", m.rope_scaling));
  }
  c["rope_parameters"] = rope;
  auto id = [](int64_t v) { return v >= 0 ? json(v) : json(nullptr); };
  c["bos_token_id"] = id(tok.bos_id());
  c["eos_token_id"] = id(tok.eos_id());
  c["pad_token_id"] = id(tok.pad_id());
  return c;
}

json vision_config(EncoderConfig& cfg, int64_t image_size) {
  const json f = encoder_fields(cfg);
  const std::string type = cfg.type == "siglip2" ? "siglip" : cfg.type;
  const std::string dir = cfg.resolved_path();
  json v;
  if (!dir.empty()) {
    const json root = read_json((fs::path(dir) / "config.json").string());
    v = root.contains("vision_config") ? root["vision_config"] : root;
    std::string family = root.value("model_type", type);
    if (auto p = family.find("_vision_model"); p != std::string::npos) family = family.substr(0, p);
    v["model_type"] = family + "_vision_model";
    v.erase("transformers_version");
    v.erase("architectures");
    if (!v.contains("image_size")) v["image_size"] = image_size;
  } else {
    // A tower trained from scratch: the plugin's random-init shape (forge/vit.h's VitEncoderConfig).
    const int64_t hidden = f.value("feature_dim", int64_t{0}) > 0 ? f["feature_dim"].get<int64_t>() : 768;
    const int64_t inter =
        f.value("intermediate_size", int64_t{0}) > 0 ? f["intermediate_size"].get<int64_t>() : 4 * hidden;
    v["model_type"] = type + "_vision_model";
    v["hidden_size"] = hidden;
    v["intermediate_size"] = inter;
    v["num_hidden_layers"] = f.value("num_layers", int64_t{12});
    v["num_attention_heads"] = f.value("num_heads", int64_t{12});
    v["num_channels"] = 3;
    v["image_size"] = image_size;
    v["patch_size"] = f.value("patch_size", int64_t{16});
    v["attention_dropout"] = 0.0;
    if (type == "siglip") {
      v["hidden_act"] = "gelu_pytorch_tanh";
      v["layer_norm_eps"] = 1e-6;
      v["vision_use_head"] = false;  // forge's random SigLIP has no pooling head
    } else {
      v["hidden_act"] = "quick_gelu";
      v["layer_norm_eps"] = 1e-5;
    }
  }
  return v;
}

json image_processor_config(const std::string& family, int64_t size, const std::string& resize,
                            const std::vector<double>& mean, const std::vector<double>& std) {
  // PIL's filter numbers: 2 bilinear, 3 bicubic. forge resizes to size x size (no crop), so CLIP's
  // processor is told the same (do_center_crop off, an exact height and width).
  json p{{"do_resize", true},
         {"size", {{"height", size}, {"width", size}}},
         {"resample", resize == "bicubic" ? 3 : 2},
         {"do_rescale", true},
         {"rescale_factor", 1.0 / 255.0},
         {"do_normalize", true},
         {"image_mean", mean},
         {"image_std", std},
         {"do_convert_rgb", true}};
  if (family == "clip") {
    p["image_processor_type"] = "CLIPImageProcessor";
    p["do_center_crop"] = false;
    p["crop_size"] = {{"height", size}, {"width", size}};
  } else {
    p["image_processor_type"] = "SiglipImageProcessor";
  }
  return p;
}

}  // namespace forge::hf
