// forge --version, forge plugins, forge validate, forge config-reference.
#include <ATen/Context.h>
#include <torch/headeronly/version.h>

#include <algorithm>
#include <iostream>

#include <fmt/format.h>

#include "apps/forge/commands.h"
#include "core/config/loader.h"
#include "core/registry/registry.h"
#include "forge/version.h"

#ifndef FORGE_TORCH_CUDA_VERSION
#define FORGE_TORCH_CUDA_VERSION "none"
#endif

namespace forge::app {

int cmd_version() {
  std::cout << fmt::format("forge {}\n", FORGE_SDK_VERSION_STRING);
  std::cout << fmt::format("SDK {}, plugin ABI {}, checkpoint schema {}\n", FORGE_SDK_VERSION_STRING, FORGE_PLUGIN_ABI,
                           FORGE_CHECKPOINT_SCHEMA);
  std::cout << fmt::format("LibTorch {}.{}.{} (built for CUDA {}; CUDA devices visible: {})\n", TORCH_VERSION_MAJOR,
                           TORCH_VERSION_MINOR, TORCH_VERSION_PATCH, FORGE_TORCH_CUDA_VERSION,
                           at::globalContext().hasCUDA() ? "yes" : "no");
  return kExitOk;
}

int cmd_plugins(const std::vector<std::string>& plugin_paths) {
  Registry& reg = Registry::global();
  reg.load_directories(plugin_search_path(plugin_paths, {}, true, true));
  auto records = reg.records();
  std::cout << "Plugin folders searched, in order:\n";
  for (const auto& d : reg.searched_dirs()) std::cout << "  " << d << "\n";
  std::cout << "\n";
  if (records.empty()) {
    std::cout << "No plugin files (libforge_<kind>_<name>.so) found.\n";
    return kExitOk;
  }
  size_t wk = 4, wn = 4, wv = 7;
  for (const auto& r : records) {
    wk = std::max(wk, r.kind.size());
    wn = std::max(wn, r.name.size());
    wv = std::max(wv, r.version.size());
  }
  std::cout << fmt::format("{:<{}}  {:<{}}  {:<{}}  {:<8}  {}\n", "KIND", wk, "NAME", wn, "VERSION", wv, "VERDICT",
                           "FILE");
  int bad = 0;
  for (const auto& r : records) {
    std::string name = r.name + (r.aliases.empty() ? "" : " (" + fmt::format("{}", fmt::join(r.aliases, ", ")) + ")");
    std::string verdict = r.ok && r.error.empty() ? "ok" : "rejected";
    std::cout << fmt::format("{:<{}}  {:<{}}  {:<{}}  {:<8}  {}\n", r.kind.empty() ? "?" : r.kind, wk, r.name, wn,
                             r.version.empty() ? "-" : r.version, wv, verdict, r.path);
    if (!r.aliases.empty()) std::cout << fmt::format("{:<{}}  also registered as: {}\n", "", wk, fmt::join(r.aliases, ", "));
    if (!r.ok || !r.error.empty()) {
      std::cout << fmt::format("{:<{}}  reason: {}\n", "", wk, r.error);
      ++bad;
    }
    (void)name;
  }
  std::cout << fmt::format("\n{} plugin file(s): {} ok, {} rejected.\n", records.size(), records.size() - bad, bad);
  return kExitOk;
}

int cmd_validate(const ConfigArgs& args) {
  LoadOptions opts;
  opts.overrides = args.overrides;
  opts.plugin_paths = args.plugin_paths;
  LoadedConfig cfg = load_config(args.config, Registry::global(), opts);
  for (const auto& w : cfg.warnings) std::cerr << w.format() << "\n";
  std::cout << "# forge validate: " << args.config << " (resolved, defaults filled in)\n";
  if (cfg.job.is_vlm()) {
    std::cout << fmt::format(
        "# residual stream: {} image tokens + {} text positions; encoder {}: {} tokens x {}, image {}x{}\n",
        cfg.residual_tokens, cfg.job.vlm->max_text_len, cfg.job.vision_encoder->type, cfg.encoder_info.num_tokens,
        cfg.encoder_info.feature_dim, cfg.job.data.hf_image_size, cfg.job.data.hf_image_size);
  }
  std::cout << to_toml(cfg.job);
  return kExitOk;
}

int cmd_config_reference(const std::vector<std::string>& plugin_paths) {
  Registry& reg = Registry::global();
  reg.load_directories(plugin_search_path(plugin_paths, {}, true, true));
  std::cout << config_reference_markdown(reg);
  return kExitOk;
}

}  // namespace forge::app
