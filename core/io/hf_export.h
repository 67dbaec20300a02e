// forge export --format hf: a trained checkpoint as Hugging Face folders.
//
// Two layouts (docs/export.md):
//  - "llava": joint_decoder + mlp_2layer (hidden = model.dim) + a SigLIP or
//    CLIP tower: one folder that transformers' LlavaForConditionalGeneration
//    and AutoProcessor load (config.json, model.safetensors, tokenizer,
//    image processor, processor_config.json, README.md).
//  - "parts": any other model: language_model/ (an HF causal LM, from the
//    arch's dense text path), vision_tower/ (an HF SigLIP/CLIP vision model,
//    when the encoder is one), forge_extra.safetensors (every other weight
//    under its forge name) and manifest.json.
// The output folder is written next to its final place and renamed in, so a
// failed export leaves nothing (and, with force, the previous folder intact).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/config/job.h"
#include "forge/export.h"

namespace forge {
class VLMImpl;
class Tokenizer;
}  // namespace forge

namespace forge::hf {

struct FORGE_API ExportRequest {
  const JobConfig* job = nullptr;
  VLMImpl* model = nullptr;     // weights loaded, on the CPU
  std::string step_dir;         // the checkpoint it came from (for the manifest)
  std::string out;              // the folder to create
  std::string layout = "auto";  // "auto" | "llava" | "parts"
  bool force = false;           // replace a non-empty `out`
};

struct FORGE_API ExportReport {
  std::string layout;  // "llava" | "parts"
  std::string out;
  std::vector<std::string> files;  // relative to out
  std::vector<std::string> notes;  // what the user should know (warnings)
  std::vector<std::string> facts;  // what was chosen (printed with the summary)
};

// Writes the export; UserError (exit 2) for what the model or the request
// cannot give (naming why and what to do), RuntimeError for I/O failures.
FORGE_API ExportReport export_hf(const ExportRequest& request);

// Why `job` cannot be a LLaVA folder ("" when it can).
FORGE_API std::string llava_blocker(const JobConfig& job);

// ------------------------------------------------------------ config.json builders (hf_export_configs.cpp)

// The HF causal-LM config.json reproducing `m` (model_type llama, qwen2 or
// qwen3); UserError naming the [model] key no HF family reproduces.
FORGE_API nlohmann::json text_config(const ModelConfig& m, const Tokenizer& tok, int64_t vocab_size);

// Every field of an EncoderConfig (or subclass) as JSON, read through visit().
FORGE_API nlohmann::json encoder_fields(EncoderConfig& cfg);

// The vision tower's HF config (model_type <family>_vision_model): the
// encoder folder's own config.json (its vision_config) or, for a tower
// trained from scratch, one written from the [vision_encoder] keys.
// `image_size` is the encoder's.
FORGE_API nlohmann::json vision_config(EncoderConfig& cfg, int64_t image_size);

// preprocessor_config.json for the tower's image processor, from forge's
// preprocessing (size, resize filter, mean, std).
FORGE_API nlohmann::json image_processor_config(const std::string& family, int64_t image_size,
                                                const std::string& resize, const std::vector<double>& mean,
                                                const std::vector<double>& std);

}  // namespace forge::hf
