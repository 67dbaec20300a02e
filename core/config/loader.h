// Loading a job config: TOML file + command-line overrides -> plugins
// discovered -> typed JobConfig -> cross-section checks. Every problem is
// collected and thrown together as one ConfigError (file:line:column, key,
// value, what is accepted).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/config/job.h"
#include "forge/error.h"
#include "forge/export.h"
#include "forge/vision.h"

namespace forge {

class Registry;

struct FORGE_API LoadOptions {
  std::vector<std::string> overrides;     // "--section.key=value", applied after the file
  std::vector<std::string> plugin_paths;  // --plugin-path, searched first
  bool use_env_plugin_path = true;        // FORGE_PLUGIN_PATH
  bool use_builtin_plugins = true;        // <libdir>/forge/plugins
};

struct FORGE_API LoadedConfig {
  JobConfig job;
  std::vector<ConfigDiagnostic> warnings;
  // Known after the checks (VLM configs only).
  EncoderInfo encoder_info;
  int64_t visual_tokens = 0;    // per sample, after the adapter
  int64_t residual_tokens = 0;  // of those, in the decoder's residual stream
};

// Plugin folders in search order: --plugin-path, FORGE_PLUGIN_PATH,
// [plugins] paths, the installation's own folder.
FORGE_API std::vector<std::string> plugin_search_path(const std::vector<std::string>& cli,
                                                      const std::vector<std::string>& toml_paths,
                                                      bool use_env, bool use_builtin);

// Parses and checks; loads the plugins it needs into `registry`.
FORGE_API LoadedConfig load_config(const std::string& path, Registry& registry, const LoadOptions& options = {});
// Same, from TOML text (`source_name` appears in messages).
FORGE_API LoadedConfig load_config_text(const std::string& text, const std::string& source_name, Registry& registry,
                                        const LoadOptions& options = {});

// The fully resolved config as TOML (defaults filled in); it loads back to
// the same config.
FORGE_API std::string to_toml(const JobConfig& job);

// The configuration reference (Markdown) for the core's sections and every
// plugin in `registry`.
FORGE_API std::string config_reference_markdown(Registry& registry);

// Creates the section structs a plugin registers (with the plugin's library
// held), for code that builds configs without TOML.
FORGE_API std::shared_ptr<VLMConfig> make_vlm_config(Registry& registry, const std::string& arch);
FORGE_API std::shared_ptr<EncoderConfig> make_encoder_config(Registry& registry, const std::string& type);
FORGE_API std::shared_ptr<AdapterConfig> make_adapter_config(Registry& registry, const std::string& type);

}  // namespace forge
