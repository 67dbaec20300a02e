// Pretrained Hugging Face causal LMs in and out of forge's decoder:
// config.json <-> [model], HF weight names <-> the reference's decoder names.
// Families: Llama (1, 2, 3, 3.1, 3.2, SmolLM2), Mistral, Qwen2/Qwen2.5, Qwen3.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "forge/config.h"
#include "forge/export.h"

namespace forge {
class DecoderImpl;
}

namespace forge::hf {

// The model_type values init_from_hf accepts.
FORGE_API const std::vector<std::string>& supported_llm_types();

// What a causal-LM folder's config.json says, as forge's [model].
struct FORGE_API LlmConfig {
  std::string dir;
  std::string config_path;  // <dir>/config.json
  std::string model_type;
  // `base` with every key the folder determines replaced (see `keys`).
  ModelConfig model;
  // [model] key -> the config.json key it came from, for agreement messages.
  std::vector<std::pair<std::string, std::string>> keys;
  int64_t max_position_embeddings = 0;
  // The attention window when sliding-window attention is on (Mistral's
  // sliding_window, Qwen's use_sliding_window); forge refuses it when it binds.
  std::optional<int64_t> sliding_window;
  std::string sliding_window_key;
  // Special ids from generation_config.json, then config.json (first of a list).
  std::optional<int64_t> bos_id, eos_id, pad_id;
};

// Reads <dir>/config.json (and generation_config.json when present). Errors
// (FormatError, exit 2) name the file, the key and what forge supports.
FORGE_API LlmConfig read_llm_config(const std::string& dir, const ModelConfig& base);

// The effective value of a [model] key as text ("4", "true", "1e-06"), for
// comparing a config's explicit keys with a folder's.
FORGE_API std::string model_value(const ModelConfig& m, const std::string& key);

// HF name -> the decoder's ("model.layers.0.self_attn.q_proj.weight" ->
// "layers.0.attention.q_proj.weight"); "" when the name is no decoder weight.
FORGE_API std::string forge_name_of(const std::string& hf_name);
// The decoder's name -> HF's ("norm.weight" -> "model.norm.weight"); "" when
// it has no HF equivalent (e.g. arch modules).
FORGE_API std::string hf_name_of(const std::string& forge_name);

// Loads the folder's weights (model.safetensors or its shards) into `decoder`
// through its arch's DecoderHooks::load_dense. Every decoder weight must be
// there with its shape, and every stored decoder weight must be used; bf16 or
// fp16 weights become the decoder's dtype (fp32 masters). Returns the tensors
// copied.
FORGE_API int64_t load_llm_weights(DecoderImpl& decoder, const std::string& dir);

}  // namespace forge::hf
