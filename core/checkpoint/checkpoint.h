// Training checkpoints.
//
// <checkpoint.dir>/step_<N>/ holds:
//   model.safetensors    the model's state dict with KempnerForge's key names
//   trainer.safetensors  AdamW moments by parameter name, and the RNG state
//   train_state.json     step, tokens seen, data position, freeze state, plugins, versions
//   config.toml          the resolved config that produced it
// A checkpoint is written into a temporary folder and renamed into place;
// <checkpoint.dir>/latest (a symlink) is switched to it last, and only then
// are checkpoints beyond keep_last_n deleted. A failed save leaves every
// earlier checkpoint untouched.
#pragma once

#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/optim/adamw.h>

#include "core/checkpoint/shard_view.h"
#include "core/config/job.h"
#include "core/data/loader.h"
#include "core/training/optim.h"
#include "forge/export.h"

namespace forge {

class Registry;

struct FORGE_API TrainState {
  int64_t step = 0;
  int64_t tokens_seen = 0;
  LoaderState data;
  std::vector<FreezeSpec> vlm_freeze;  // canonical effective freeze at `step`
  int64_t world_size = 1;
};

struct FORGE_API SaveRequest {
  std::string run_dir;
  const TrainState* state = nullptr;
  const torch::nn::Module* model = nullptr;
  torch::optim::AdamW* optimizer = nullptr;  // optional
  const ParamGroups* groups = nullptr;       // with optimizer
  const JobConfig* config = nullptr;
  const Registry* registry = nullptr;        // for the plugin list
  int64_t keep_last_n = 3;
  // A sharded run: every rank calls save_checkpoint with the same request;
  // whole tensors are gathered one at a time (a collective per tensor) and
  // only the `writer` rank writes, so no rank ever holds the whole model.
  const ShardView* shards = nullptr;
  bool writer = true;
};

// Writes step_<N> and returns its path ("" on a rank that is not the
// writer); RuntimeError when it cannot (the previous checkpoints are left as
// they were).
FORGE_API std::string save_checkpoint(const SaveRequest& req);

// Tidies what a save killed halfway left in a run folder: an unfinished
// `.step_N.tmp-PID` copy is removed; `.step_N.old-PID` (the previous step_N,
// moved aside just before its replacement was renamed in) is put back when
// step_N is missing. save_checkpoint and train() call it first.
FORGE_API void recover_interrupted_saves(const std::string& run_dir);

// A step folder (holding train_state.json) as is; a run folder resolves to
// what `latest` points at, else its newest step_<N>. "" when there is none.
FORGE_API std::string resolve_checkpoint(const std::string& dir);

// Reads and checks train_state.json (FormatError naming the file).
FORGE_API TrainState read_train_state(const std::string& step_dir);
// Loads model.safetensors into `model`, strictly (FormatError naming the file).
FORGE_API void load_checkpoint_weights(const std::string& step_dir, torch::nn::Module& model);
// Restores AdamW moments and the RNG state from trainer.safetensors.
// With `shards`, each rank keeps its part of the sharded parameters' moments.
FORGE_API void load_checkpoint_trainer(const std::string& step_dir, torch::optim::AdamW& opt, const ParamGroups& groups,
                                       const ShardView* shards = nullptr);

// Throws RuntimeError when the environment variable FORGE_FAILPOINT names
// `point` (used by tests to exercise failure paths).
FORGE_API void failpoint(const char* point);

}  // namespace forge
