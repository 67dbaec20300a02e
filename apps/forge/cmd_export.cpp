// forge export: a trained checkpoint as Hugging Face folders (core/io/hf_export.h).
#include <fmt/format.h>

#include <filesystem>
#include <iostream>

#include "apps/forge/commands.h"
#include "core/checkpoint/checkpoint.h"
#include "core/config/loader.h"
#include "core/io/hf_export.h"
#include "core/model/vlm.h"
#include "core/registry/registry.h"
#include "forge/error.h"
#include "forge/logging.h"

namespace fs = std::filesystem;

namespace forge::app {

int cmd_export(const ExportArgs& a) {
  if (a.format != "hf")
    throw UsageError(fmt::format("--format {}: forge exports only \"hf\" (Hugging Face folders)", a.format));
  const std::string step_dir = resolve_checkpoint(a.checkpoint);
  if (step_dir.empty())
    throw UserError(
        fmt::format("no forge checkpoint in \"{}\" (expected a run folder with step_<N>/ or latest, or a "
                    "step folder holding train_state.json)",
                    a.checkpoint));
  LoadOptions opts;
  opts.plugin_paths = a.plugin_paths;
  LoadedConfig cfg = load_config((fs::path(step_dir) / "config.toml").string(), Registry::global(), opts);
  VLM model = build_vlm(cfg.job, Registry::global());
  load_checkpoint_weights(step_dir, *model);
  model->eval();
  hf::ExportRequest req;
  req.job = &cfg.job;
  req.model = model.get();
  req.step_dir = step_dir;
  req.out = a.out;
  req.layout = a.layout;
  req.force = a.force;
  hf::ExportReport rep = hf::export_hf(req);
  for (const auto& n : rep.notes) log()->warn("{}", n);
  std::cout << fmt::format("exported {} as {} to {} ({} files)\n", step_dir,
                           rep.layout == "llava" ? "a LLaVA folder (LlavaForConditionalGeneration + AutoProcessor)"
                                                 : "parts (language_model/, vision_tower/, forge_extra.safetensors, "
                                                   "manifest.json)",
                           rep.out, rep.files.size());
  for (const auto& f : rep.files) std::cout << "  " << f << "\n";
  for (const auto& f : rep.facts) std::cout << f << "\n";
  return kExitOk;
}

}  // namespace forge::app
