// Fuzz target: a job config (TOML) and its command-line overrides.
// Input: the TOML text, then NUL-separated overrides ("--train.max_steps=3").
// Properties: load_config_text either accepts the config or throws one of
// forge's errors; an accepted config's resolved TOML (what a checkpoint's
// config.toml holds) loads back to the same resolved TOML.
#include <string>

#include "core/config/loader.h"
#include "core/registry/registry.h"
#include "fuzz/support.h"

using namespace forge;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Registry registry;  // the build tree's plugins, loaded once
  auto parts = fuzz::split_parts(data, size, 9);
  LoadOptions options;
  options.use_env_plugin_path = false;
  for (size_t i = 1; i < parts.size(); ++i) options.overrides.emplace_back(parts[i]);
  fuzz::expect_forge_errors([&] {
    LoadedConfig loaded = load_config_text(std::string(parts[0]), "fuzz.toml", registry, options);
    std::string resolved = to_toml(loaded.job);
    std::string again;
    try {
      again = to_toml(load_config_text(resolved, "resolved.toml", registry, {}).job);
    } catch (const std::exception& e) {
      fuzz::violated("the resolved config does not load back: " + std::string(e.what()) + "\n" + resolved);
    }
    if (again != resolved) fuzz::violated("the resolved config changes on a second load:\n" + resolved + "\n---\n" + again);
  });
  return 0;
}
