// The forge host's commands. main.cpp parses the command line (CLI11) and
// maps errors to exit codes; each command lives in its own function here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace forge {
struct LoadedConfig;
}

namespace forge::app {

// Options shared by commands that read a config.
struct ConfigArgs {
  std::string config;
  std::vector<std::string> overrides;     // --section.key=value
  std::vector<std::string> plugin_paths;  // --plugin-path
};

struct GenerateArgs {
  std::string checkpoint;
  std::string image;  // one of image and video
  std::string video;
  std::string prompt;
  int64_t max_new_tokens = 0;  // 0: vlm.max_text_len
  double temperature = 0.0;    // 0: greedy
  int64_t top_k = 0;
  double top_p = 1.0;
  uint64_t seed = 0;
  std::string device = "auto";  // where to run, whatever device trained the checkpoint
  std::vector<std::string> plugin_paths;
};

struct ActivationsArgs {
  std::string checkpoint;
  std::string image;
  std::string text;
  std::string prompt;
  std::vector<int64_t> layers;  // empty: every layer
  bool attention = false;       // also the layers' attention probabilities
  std::string out;
  std::string device = "cpu";
  std::vector<std::string> plugin_paths;
};

struct ExportArgs {
  std::string checkpoint;
  std::string format = "hf";
  std::string out;
  std::string layout = "auto";  // auto | llava | parts
  bool force = false;
  std::vector<std::string> plugin_paths;
};

struct DataSampleArgs {
  ConfigArgs config;  // optional
  std::string out;
  int64_t count = 16;
  std::string split = "train";
  int64_t image_size = 0;
};

struct EvalArgs {
  std::string checkpoint;  // a run folder (its latest step) or one step_<N> folder
  int64_t batches = 0;     // 0: the checkpoint's eval.steps
  int64_t captions = -1;   // held-out samples to caption and score (-1: the checkpoint's eval.caption_samples)
  std::string captions_out;  // JSONL of the generated captions ("" = none)
  std::string device = "auto";
  std::vector<std::string> plugin_paths;
};

struct BenchArgs {
  ConfigArgs config;
  int64_t steps = 10;
  int64_t warmup = 3;
  std::string out;    // JSON result file ("" = stdout only)
  std::string label;  // recorded in the result (e.g. "forge small joint_decoder bf16")
  bool data_only = false;
  std::string profile;  // Chrome trace of one more step ("" = none)
  double targets = 1.0;  // fraction of each sample's text positions that are loss targets (the rest -100)
};

// Loads args.config with its overrides and plugin folders into the process
// registry, printing the config's warnings.
LoadedConfig load_job(const ConfigArgs& args);
// The config's warnings on stderr, once per job (by rank 0 when ranks run).
void print_warnings(const LoadedConfig& cfg);

int cmd_version();
int cmd_plugins(const std::vector<std::string>& plugin_paths);
int cmd_validate(const ConfigArgs& args);
int cmd_config_reference(const std::vector<std::string>& plugin_paths);
int cmd_check_model(const ConfigArgs& args, int64_t batch);
int cmd_train(const ConfigArgs& args);
int cmd_bench(const BenchArgs& args);
int cmd_generate(const GenerateArgs& args);
int cmd_activations(const ActivationsArgs& args);
int cmd_eval(const EvalArgs& args);
int cmd_export(const ExportArgs& args);
int cmd_data_sample(const DataSampleArgs& args);
int cmd_data_check(const ConfigArgs& args);
// Writes RUN_DIR's report (default RUN_DIR/report.html) and prints its path.
int cmd_report(const std::string& run_dir, const std::string& out);

}  // namespace forge::app
