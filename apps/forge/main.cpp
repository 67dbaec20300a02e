// forge: train vision-language models on LibTorch, with plugins.
//
// This file parses the command line and maps every failure to an exit code:
// 0 success, 1 runtime failure, 2 usage / config / plugin / input error.
// User mistakes never print a stack trace.
#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "apps/forge/commands.h"
#include "core/distributed/dist.h"
#include "core/util/logging.h"
#include "core/util/strings.h"
#include "forge/error.h"
#include "forge/version.h"

namespace {

// Config overrides look like --section.key=value (a dot in the key). They are
// taken out before CLI11 sees the arguments.
bool is_override(const std::string& arg) {
  if (!forge::util::starts_with(arg, "--") || arg.size() < 3) return false;
  std::string key = arg.substr(2, arg.find('=') == std::string::npos ? std::string::npos : arg.find('=') - 2);
  return key.find('.') != std::string::npos && key.find('/') == std::string::npos;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args;
  std::vector<std::string> overrides;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (is_override(a)) {
      overrides.push_back(a);
    } else {
      args.push_back(a);
    }
  }

  CLI::App app{
      "forge: train vision-language models on LibTorch.\n"
      "Archs, adapters and vision encoders are plugins (libforge_<kind>_<name>.so) found at start-up.\n"
      "Config values can be overridden after the config path with --section.key=value (TOML syntax).",
      "forge"};
  app.require_subcommand(0, 1);
  app.fallthrough();  // global options (--log-level) may follow the command
  app.set_version_flag("--version", [] { return std::string(); }, "Print forge, SDK, plugin ABI, torch and CUDA versions");
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}))
      ->default_val("info");
  app.footer(
      "Exit codes: 0 success, 1 runtime failure, 2 usage, config, plugin or input error.\n"
      "Docs: docs/README.md (running), docs/configuration.md (every key), docs/writing-a-plugin.md.");

  std::vector<std::string> plugin_paths;
  auto add_plugin_path = [&](CLI::App* sub) {
    sub->add_option("--plugin-path", plugin_paths,
                    "Extra plugin folder, searched first (repeatable); then FORGE_PLUGIN_PATH, [plugins] paths, "
                    "the installed plugins");
  };

  forge::app::ConfigArgs cfg;
  auto* plugins = app.add_subcommand("plugins", "List every plugin file found, with its descriptor and verdict");
  add_plugin_path(plugins);

  auto* validate = app.add_subcommand(
      "validate", "Check a config and print it fully resolved (defaults filled in); exit 2 on any error");
  validate->add_option("config", cfg.config, "The TOML config")->required();
  add_plugin_path(validate);

  int64_t check_batch = 2;
  auto* check = app.add_subcommand(
      "check-model",
      "Build the model a config describes; print parameter counts per module, the residual layout, and one "
      "forward/backward on random data");
  check->add_option("config", cfg.config, "The TOML config")->required();
  check->add_option("--batch", check_batch, "Batch size of the random forward/backward")->default_val(2)
      ->check(CLI::PositiveNumber);
  add_plugin_path(check);

  auto* train = app.add_subcommand(
      "train", "Train a VLM: logs progress, evaluates, writes checkpoints to checkpoint.dir and resumes from them");
  train->add_option("config", cfg.config, "The TOML config (e.g. configs/shapes.toml)")->required();
  int nproc = 1;
  train->add_option("--nproc", nproc,
                    "Data parallelism on this machine: start N ranks (Gloo on CPUs). Launchers that set RANK, "
                    "WORLD_SIZE, MASTER_ADDR and MASTER_PORT (torchrun, SLURM scripts) need no --nproc")
      ->check(CLI::PositiveNumber);
  add_plugin_path(train);

  forge::app::BenchArgs bench_args;
  auto* bench = app.add_subcommand(
      "bench", "Time the training step of a config's model on synthetic batches of its shape: step time, tokens/s, "
               "FLOP/s, MFU, the machine's GEMM rate at the model's shapes, peak memory; writes a JSON result");
  bench->add_option("config", cfg.config, "The TOML config (e.g. configs/bench/small.toml)")->required();
  bench->add_option("--steps", bench_args.steps, "Timed steps (or batches with --data-only)")->default_val(10)
      ->check(CLI::PositiveNumber);
  bench->add_option("--warmup", bench_args.warmup, "Untimed steps first")->default_val(3)->check(CLI::NonNegativeNumber);
  bench->add_option("--out", bench_args.out, "Write the JSON result to this file too");
  bench->add_option("--label", bench_args.label, "A name stored in the result");
  bench->add_flag("--data-only", bench_args.data_only,
                  "Time the data path instead (dataset, image decode and preprocessing, tokenizer, collate): "
                  "samples/s");
  bench->add_option("--targets", bench_args.targets,
                    "The fraction of each sample's text positions that are loss targets, the rest ignored (-100) "
                    "as a short caption's padding up to max_text_len is: the loss skips the output head there")
      ->default_val(1.0)
      ->check(CLI::Validator(
          [](std::string& v) {
            double x = 0;
            return CLI::detail::lexical_cast(v, x) && x > 0 && x <= 1
                       ? std::string()
                       : fmt::format("got {}; give a fraction above 0 and at most 1 (0.25: a quarter of them)", v);
          },
          "in (0, 1]"));
  bench->add_option("--profile", bench_args.profile,
                    "After the timed steps, profile one more step (Kineto) and write its Chrome trace here");
  add_plugin_path(bench);

  forge::app::GenerateArgs gen;
  auto* generate = app.add_subcommand(
      "generate", "Caption an image (or a video model's clip) with a trained checkpoint (KV-cache decoding)");
  generate->add_option("--checkpoint", gen.checkpoint, "A run folder (uses latest) or one step_<N> folder")->required();
  auto* gen_image = generate->add_option("--image", gen.image, "A PNG or JPEG file")->check(CLI::ExistingFile);
  auto* gen_video = generate->add_option("--video", gen.video,
                                         "A video file (any container FFmpeg reads) for a video model: its frames are "
                                         "sampled as its [video] section says")
                        ->check(CLI::ExistingFile);
  gen_image->excludes(gen_video);
  gen_video->excludes(gen_image);
  generate->add_option("--prompt", gen.prompt, "Text the caption follows (masked in training as a prompt)");
  generate->add_option("--max-new-tokens", gen.max_new_tokens, "Tokens to generate at most (default: vlm.max_text_len)")
      ->check(CLI::NonNegativeNumber);
  generate->add_option("--temperature", gen.temperature, "0 is greedy (the default); >= 0.001 samples, higher is more random")
      ->check(CLI::NonNegativeNumber);
  generate->add_option("--top-k", gen.top_k, "Sample among the k most likely tokens (0: off)")
      ->check(CLI::NonNegativeNumber);
  generate->add_option("--top-p", gen.top_p, "Sample from the smallest set of tokens holding this much probability, in (0, 1] (1: off)")
      ->check(CLI::Range(0.0, 1.0));
  generate->add_option("--seed", gen.seed, "Seed of the sampling");
  generate->add_option("--device", gen.device, "auto (CUDA when a GPU is visible), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  generate->add_option("--plugin-path", gen.plugin_paths, "Extra plugin folder (repeatable)");

  forge::app::EvalArgs ev;
  forge::app::ActivationsArgs act;
  auto* activations = app.add_subcommand(
      "activations", "Write the decoder's residual stream after chosen layers for one image and text (safetensors)");
  activations->add_option("--checkpoint", act.checkpoint, "A run folder (uses latest) or one step_<N> folder")
      ->required();
  activations->add_option("--image", act.image, "A PNG or JPEG file")->required()->check(CLI::ExistingFile);
  activations->add_option("--text", act.text, "The caption, laid out as in training ([BOS] prompt text EOS)");
  activations->add_option("--prompt", act.prompt, "Text before the caption (as in training)");
  activations->add_option("--layers", act.layers, "Decoder layers, 0-based, comma-separated (default: every layer)")
      ->delimiter(',');
  activations->add_flag("--attention", act.attention,
                        "Also write attention.<i>: the layer's attention probabilities (heads x positions x positions)");
  activations->add_option("--out", act.out, "The .safetensors file to write: layers.<i> (positions x dim, fp32) and "
                          "input_ids")
      ->required();
  activations->add_option("--device", act.device, "cpu (the default) or cuda")->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  activations->add_option("--plugin-path", act.plugin_paths, "Extra plugin folder (repeatable)");

  auto* eval = app.add_subcommand(
      "eval", "Evaluate a checkpoint on its held-out data: loss, token and image-word accuracy, and generated "
              "captions scored with BLEU-4, CIDEr-D and exact match");
  eval->add_option("--checkpoint", ev.checkpoint, "A run folder (uses latest) or one step_<N> folder")->required();
  eval->add_option("--batches", ev.batches, "Batches to evaluate (default: eval.steps)")->check(CLI::PositiveNumber);
  eval->add_option("--captions", ev.captions,
                   "Held-out samples to caption greedily and score (default: eval.caption_samples; 0: none)")
      ->check(CLI::NonNegativeNumber);
  eval->add_option("--captions-out", ev.captions_out,
                   "Write the generated captions here as JSONL: index, source, reference, more_references, generated");
  eval->add_option("--device", ev.device, "auto (CUDA when a GPU is visible), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  add_plugin_path(eval);

  forge::app::ExportArgs exp;
  auto* export_cmd = app.add_subcommand(
      "export",
      "Export a checkpoint as Hugging Face folders. joint_decoder + mlp_2layer + a SigLIP/CLIP tower becomes one "
      "folder that transformers' LlavaForConditionalGeneration and AutoProcessor load (a SigLIP tower needs "
      "vision_encoder.feature_layer < 0); any other model becomes parts: language_model/ (AutoModelForCausalLM), "
      "vision_tower/ (SiglipVisionModel/CLIPVisionModel), forge_extra.safetensors and manifest.json. "
      "Written atomically: a failed export leaves nothing behind. See docs/export.md");
  export_cmd->add_option("--checkpoint", exp.checkpoint, "A run folder (uses latest) or one step_<N> folder")->required();
  export_cmd->add_option("--format", exp.format, "Output format; only hf (Hugging Face folders)")
      ->required()
      ->check(CLI::IsMember({"hf"}));
  export_cmd->add_option("out", exp.out, "The folder to create (must not exist or be empty, unless --force)")->required();
  export_cmd->add_option("--layout", exp.layout,
                         "auto (LLaVA when the model is one, else parts), llava (fail when it is not), or parts")
      ->check(CLI::IsMember({"auto", "llava", "parts"}));
  export_cmd->add_flag("--force", exp.force, "Replace a non-empty output folder (atomically: the old one stays until the new one is complete)");
  add_plugin_path(export_cmd);
  export_cmd->footer(
      "Examples:\n"
      "  forge export --checkpoint runs/llava_stage1 --format hf out/llava            # a LLaVA folder\n"
      "  forge export --checkpoint runs/tiny_mot --format hf out/mot --layout parts   # the parts of any model\n"
      "Exit codes: 0 success, 1 runtime failure (I/O), 2 bad input (no checkpoint, an existing folder, a model the "
      "layout cannot hold).");

  auto* data = app.add_subcommand("data", "Look at and check datasets");
  data->require_subcommand(1);
  forge::app::DataSampleArgs sample;
  auto* data_sample = data->add_subcommand(
      "sample", "Write samples as PNG files with a manifest.jsonl of captions (the embedded dataset by default)");
  data_sample->add_option("config", sample.config.config, "A config whose [data] to sample (optional)");
  data_sample->add_option("--out", sample.out, "Output folder")->required();
  data_sample->add_option("-n,--count", sample.count, "How many samples")->check(CLI::PositiveNumber);
  data_sample->add_option("--split", sample.split, "train or heldout")->check(CLI::IsMember({"train", "heldout"}));
  data_sample->add_option("--image-size", sample.image_size, "Image side for the embedded dataset (default 48)")
      ->check(CLI::PositiveNumber);
  add_plugin_path(data_sample);
  auto* data_check = data->add_subcommand(
      "check", "Scan a config's data: rows, bad rows by reason, decoding throughput");
  data_check->add_option("config", cfg.config, "The TOML config")->required();
  add_plugin_path(data_check);

  std::string report_dir, report_out;
  auto* report = app.add_subcommand(
      "report", "Write a run's report: one self-contained HTML page with the loss, lr, throughput, MFU and eval "
                "curves, the captioned held-out images, the plugins and the resolved config");
  report->add_option("run_dir", report_dir, "The run folder (checkpoint.dir) of a forge train run")->required();
  report->add_option("--out", report_out, "The HTML file to write (default: RUN_DIR/report.html)");
  report->footer(
      "\nforge train writes RUN_DIR/report.html itself at each evaluation and at the end ([metrics] report);\n"
      "this command redraws it, e.g. for a run still in progress or from before the report existed.\n"
      "  forge report runs/shapes && chromium runs/shapes/report.html\n"
      "Exit codes: 0 written, 1 cannot write it, 2 not a run folder.");

  auto* reference = app.add_subcommand("config-reference",
                                       "Print the configuration reference (Markdown) for the core and every plugin");
  add_plugin_path(reference);

  try {
    std::vector<std::string> reversed(args.rbegin(), args.rend());
    app.parse(reversed);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion&) {
    return forge::app::cmd_version();
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    std::cerr << "Run 'forge --help' (or 'forge <command> --help') for usage." << std::endl;
    return forge::kExitUsage;
  }
  forge::set_log_level(log_level);
  cfg.overrides = overrides;
  cfg.plugin_paths = plugin_paths;

  int rc = forge::kExitOk;
  try {
    if (!overrides.empty() && !validate->parsed() && !check->parsed() && !train->parsed() &&
        !bench->parsed() && !data_check->parsed() && !data_sample->parsed()) {
      throw forge::UsageError("config overrides (" + overrides.front() +
                              ") apply only to commands that take a config");
    }
    if (plugins->parsed()) {
      rc = forge::app::cmd_plugins(plugin_paths);
    } else if (validate->parsed()) {
      rc = forge::app::cmd_validate(cfg);
    } else if (train->parsed() && nproc > 1 && !std::getenv("RANK")) {
      std::vector<std::string> rank_args{argv[0]};  // the same command, less --nproc
      for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--nproc") {
          ++i;
          continue;
        }
        if (forge::util::starts_with(a, "--nproc=")) continue;
        rank_args.push_back(a);
      }
      rc = forge::launch_local_ranks(nproc, rank_args);
    } else if (train->parsed()) {
      rc = forge::app::cmd_train(cfg);
    } else if (bench->parsed()) {
      bench_args.config = cfg;
      rc = forge::app::cmd_bench(bench_args);
    } else if (generate->parsed()) {
      rc = forge::app::cmd_generate(gen);
    } else if (activations->parsed()) {
      rc = forge::app::cmd_activations(act);
    } else if (eval->parsed()) {
      ev.plugin_paths = plugin_paths;
      rc = forge::app::cmd_eval(ev);
    } else if (export_cmd->parsed()) {
      exp.plugin_paths = plugin_paths;
      rc = forge::app::cmd_export(exp);
    } else if (data_sample->parsed()) {
      sample.config.overrides = overrides;
      sample.config.plugin_paths = plugin_paths;
      rc = forge::app::cmd_data_sample(sample);
    } else if (data_check->parsed()) {
      rc = forge::app::cmd_data_check(cfg);
    } else if (check->parsed()) {
      rc = forge::app::cmd_check_model(cfg, check_batch);
    } else if (report->parsed()) {
      rc = forge::app::cmd_report(report_dir, report_out);
    } else if (reference->parsed()) {
      rc = forge::app::cmd_config_reference(plugin_paths);
    } else {
      std::cout << app.help() << std::flush;
      rc = forge::kExitUsage;
    }
  } catch (const forge::ConfigError& e) {
    for (const auto& d : e.diagnostics()) std::cerr << d.format() << "\n";
    if (e.diagnostics().empty()) std::cerr << "error: " << e.what() << "\n";
    rc = e.exit_code();
  } catch (const forge::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    rc = e.exit_code();
  } catch (const c10::Error& e) {
    std::cerr << "error: internal failure in LibTorch: " << e.what_without_backtrace() << "\n";
    rc = forge::kExitRuntime;
  } catch (const std::exception& e) {
    std::cerr << "error: internal failure: " << e.what() << "\n";
    rc = forge::kExitRuntime;
  }
  forge::flush_logs();
  std::cout.flush();
  return rc;
}
