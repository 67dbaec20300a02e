// Fuzz target: a Hugging Face model folder's JSON files, as `[model]
// init_from_hf` and the vision towers read them.
// Input: config.json, then (NUL-separated, optional) generation_config.json
// and preprocessor_config.json. Properties: read_llm_config, ConfigJson's
// typed reads and read_preprocess accept the folder or throw a forge error;
// an accepted config has positive sizes that divide as attention needs.
#include <filesystem>

#include "core/config/loader.h"
#include "core/io/hf_llm.h"
#include "core/registry/registry.h"
#include "forge/hf.h"
#include "fuzz/support.h"

using namespace forge;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto parts = fuzz::split_parts(data, size, 3);
  const std::string dir = fuzz::scratch_dir() + "/hf";
  std::filesystem::create_directories(dir);
  const char* names[] = {"config.json", "generation_config.json", "preprocessor_config.json"};
  for (size_t i = 0; i < 3; ++i) {
    std::string path = dir + "/" + names[i];
    if (i < parts.size()) {
      fuzz::write_file(std::string("hf/") + names[i], parts[i]);
    } else {
      std::filesystem::remove(path);
    }
  }
  fuzz::expect_forge_errors([&] { (void)hf::read_llm_config(dir, ModelConfig{}); });
  // The way a user meets the folder: a job config that starts from it.
  static Registry registry;
  fuzz::expect_forge_errors([&] {
    std::string toml = "[model]\ninit_from_hf = \"" + dir + "\"\n[data]\ntokenizer_path = \"bytes\"\n";
    LoadedConfig loaded = load_config_text(toml, "fuzz.toml", registry, {});
    const ModelConfig& m = loaded.job.model;
    if (m.dim <= 0 || m.n_layers <= 0 || m.n_heads <= 0 || m.vocab_size <= 0)
      fuzz::violated("a config from config.json was accepted with a non-positive size");
    if (m.n_kv_heads && (*m.n_kv_heads <= 0 || m.n_heads % *m.n_kv_heads != 0))
      fuzz::violated("a config from config.json was accepted with n_kv_heads that does not divide n_heads");
  });
  fuzz::expect_forge_errors([&] {
    hf::ConfigJson json(dir + "/config.json");
    (void)json.integer("hidden_size", 0);
    (void)json.number("rms_norm_eps", 1e-6);
    (void)json.boolean("tie_word_embeddings", false);
    (void)json.string("model_type", "");
    (void)json.numbers("image_mean", {0.5, 0.5, 0.5});
    if (json.has("vision_config")) {
      hf::ConfigJson vision = json.sub("vision_config");
      (void)vision.integer("image_size", 224);
      (void)vision.integer("patch_size", 16);
    }
  });
  fuzz::expect_forge_errors([&] { (void)hf::read_preprocess(dir, Preprocess{}); });
  return 0;
}
