// Reading Hugging Face model folders: config.json values and weights by name.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "forge/export.h"
#include "forge/vision.h"

namespace forge::hf {

// Typed reads from a JSON config (config.json, preprocessor_config.json).
// Errors are FormatErrors naming the file and the key.
class FORGE_API ConfigJson {
 public:
  explicit ConfigJson(const std::string& path);
  ~ConfigJson();
  const std::string& path() const { return path_; }
  bool has(const std::string& key) const;
  // The object under `key` (e.g. "vision_config"), same file in messages.
  ConfigJson sub(const std::string& key) const;
  int64_t integer(const std::string& key, int64_t fallback) const;
  double number(const std::string& key, double fallback) const;
  bool boolean(const std::string& key, bool fallback) const;
  std::string string(const std::string& key, const std::string& fallback) const;
  std::vector<double> numbers(const std::string& key, const std::vector<double>& fallback) const;

 private:
  ConfigJson(std::string path, std::shared_ptr<const void> root, const void* node);
  std::string path_;
  std::shared_ptr<const void> root_;  // the parsed document (nlohmann::json)
  const void* node_ = nullptr;        // the object this view reads
};

// An encoder's preprocessing from <dir>/preprocessor_config.json when the file
// exists (image_mean, image_std, resample: 2 bilinear / 3 bicubic), else `defaults`.
FORGE_API Preprocess read_preprocess(const std::string& dir, Preprocess defaults);

// Loads every parameter and buffer of `module` from the HF folder `dir`
// (model.safetensors, or the shards of model.safetensors.index.json): module
// name N is read from key `prefix + N`. Keys that start with `prefix` but
// name nothing in the module are errors unless they match one of
// `ignored_under_prefix` (fnmatch patterns relative to the prefix); keys
// outside the prefix (e.g. a text tower) are ignored. A missing key, a shape
// mismatch or a non-floating dtype is a FormatError naming the file and the
// key. Values are converted to the module's dtypes. Returns the tensors loaded.
FORGE_API int64_t load_weights(torch::nn::Module& module, const std::string& dir, const std::string& prefix,
                               const std::vector<std::string>& ignored_under_prefix = {});

// The prefix under which a checkpoint keeps the vision tower: the first of
// `candidates` that some key in `dir` starts with ("" matches any).
FORGE_API std::string find_prefix(const std::string& dir, const std::vector<std::string>& candidates);

}  // namespace forge::hf
