// Module state by name: what checkpoints and weight imports read and write.
// Names are the module tree's dotted names (vision_encoder.*, adapter.*,
// transformer.* for a VLM), i.e. KempnerForge's state-dict keys.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "forge/export.h"
#include "forge/safetensors.h"

namespace forge {

// Parameters then buffers, by name. A tied tensor appears under each of its names.
FORGE_API std::vector<std::pair<std::string, at::Tensor>> state_dict(const torch::nn::Module& module);

// Where load_state_dict reads tensors from.
struct FORGE_API TensorSource {
  std::string description;  // for messages, e.g. the file
  std::function<bool(const std::string&)> contains;
  std::function<at::Tensor(const std::string&)> load;
  std::function<std::vector<std::string>()> names;
  std::function<std::vector<int64_t>(const std::string&)> shape;

  static TensorSource from_file(const safetensors::File& file);
  static TensorSource from_map(const std::map<std::string, at::Tensor>& tensors, std::string description);
};

struct FORGE_API LoadReport {
  std::vector<std::string> missing;     // in the module, not in the source
  std::vector<std::string> unexpected;  // in the source, not in the module
  int64_t loaded = 0;
};

// Copies every tensor the source has into the module (converting dtype,
// keeping the module's device). A shape mismatch is a FormatError naming the
// source and the key. With `strict`, missing or unexpected keys are a
// FormatError too (listing a few of each).
FORGE_API LoadReport load_state_dict(torch::nn::Module& module, const TensorSource& source, bool strict);

// Whole-model convenience: safetensors file of state_dict(module).
FORGE_API void save_state_dict(const torch::nn::Module& module, const std::string& path,
                               const std::map<std::string, std::string>& metadata = {});

}  // namespace forge
