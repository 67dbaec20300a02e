// Optimizer, parameter groups and learning-rate schedule.
#pragma once

#include <torch/optim/adamw.h>

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/checkpoint/shard_view.h"
#include "core/config/job.h"
#include "forge/export.h"
#include "forge/safetensors.h"

namespace forge {

// Parameters the optimizer holds, by name, in two groups. Only parameters
// that are trainable at some step of the freeze schedule are included (D2);
// a frozen one simply has no gradient at that step and AdamW skips it.
struct FORGE_API ParamGroups {
  std::vector<std::pair<std::string, at::Tensor>> decay;     // matrices
  std::vector<std::pair<std::string, at::Tensor>> no_decay;  // norms, biases, embeddings (unless decayed)
  int64_t numel() const;
  std::vector<at::Tensor> all() const;
};

// Weight decay goes to tensors with >= 2 dims that are not biases and, unless
// `decay_embeddings`, not embedding tables (names containing "embedding").
FORGE_API ParamGroups make_param_groups(const torch::nn::Module& model, const std::set<std::string>& trainable,
                                        bool decay_embeddings);
FORGE_API std::unique_ptr<torch::optim::AdamW> make_adamw(const ParamGroups& groups, const OptimizerConfig& cfg);
// Sets the learning rate of every group.
FORGE_API void set_lr(torch::optim::Optimizer& opt, double lr);

// A clip's outcome: the global gradient norm before clipping, and the factor
// the gradients still need (1: none, also for a norm that is not finite: the
// trainer skips such a step).
struct GradClip {
  double norm = 0;
  double scale = 1;
};

// Every defined gradient of `params` times `scale`, in place (nothing when
// it is 1), each rounded as LibTorch's clip_grad_norm_ rounds it.
FORGE_API void scale_gradients(const std::vector<at::Tensor>& params, double scale);

// One optimizer step on gradients still to be multiplied by `grad_scale` (a
// GradClip's scale): FusedAdamW multiplies as it reads them, any other AdamW
// after scale_gradients. The updates are those of the gradients scaled first.
FORGE_API void optimizer_step(torch::optim::AdamW& opt, double grad_scale);

// The reference's LambdaLR factor for optimizer step `step` (0-based): the
// first update uses factor(0). Formulas in docs/training.md.
FORGE_API double lr_factor(const SchedulerConfig& s, int64_t step, int64_t max_steps);

// AdamW moments by parameter name: "<name>.exp_avg", "<name>.exp_avg_sq",
// "<name>.step" (int64). Parameters that never had a gradient have no state.
FORGE_API std::vector<std::pair<std::string, at::Tensor>> optimizer_state(torch::optim::AdamW& opt,
                                                                          const ParamGroups& groups);
// Restores what optimizer_state wrote; FormatError names the file and key on
// a mismatch. With `shards`, the file holds whole moments and each rank keeps
// its part of those of sharded parameters. Returns the number of parameters
// restored.
FORGE_API int64_t load_optimizer_state(torch::optim::AdamW& opt, const ParamGroups& groups,
                                       const safetensors::File& file, const ShardView* shards = nullptr);

}  // namespace forge
