// The gradient half of a training step, shared by `forge train` and
// `forge bench`: forward and backward over the micro-batches (bf16 autocast
// when the precision says so), gradients averaged across ranks and their norm
// taken. The caller decides whether the optimizer steps (the trainer skips a
// non-finite one) and steps it with optimizer_step(opt, stats.grad_scale),
// which applies the clip.
#pragma once

#include <functional>
#include <optional>

#include "core/data/data.h"
#include "core/distributed/data_parallel.h"
#include "core/distributed/dist.h"
#include "core/model/vlm.h"
#include "core/training/optim.h"
#include "core/training/precision.h"
#include "forge/export.h"
#include "forge/step_participant.h"

namespace forge {

struct FORGE_API StepParts {
  VLMImpl& model;
  DataParallel& dp;
  Distributed& dist;
  const ParamGroups& optimized;  // what the optimizer updates (the shards when sharded)
  Precision precision;
  at::Device device;
  double z_loss_weight = 0;
  double grad_clip_norm = 1.0;
  int64_t step = 0;       // optimizer steps done before this one (what StepParticipants see)
  int64_t max_steps = 1;  // train.max_steps
};

struct FORGE_API StepStats {
  double loss = 0;           // mean over micro-batches and ranks
  double grad_norm = 0;      // before clipping
  double grad_scale = 1;     // the clip's factor, which the gradients still need (optimizer_step applies it)
  int64_t label_tokens = 0;  // over every rank
  int64_t samples = 0;       // over every rank
  double data_wait_s = 0;    // this rank's time in next_batch
};

// Runs `accum` micro-batches drawn from next_batch and leaves the averaged
// gradients on parts.optimized, unclipped: StepStats::grad_scale clips them.
FORGE_API StepStats compute_gradients(StepParts& parts, int64_t accum, const std::function<Batch()>& next_batch);

// After the optimizer step (updated) or its skip: hands every StepParticipant
// of the model its statistics, summed over ranks by compute_gradients.
FORGE_API void finish_step(VLMImpl& model, bool updated);

// The values the model's StepParticipants report for the last training
// forward (e.g. MoE aux losses and expert counts). A host sync.
FORGE_API StepReport participant_report(VLMImpl& model);

// FLOPs of one training step over `samples` samples of `text_len` tokens
// (D12: every trained FLOP): 3x the decoder's forward (forward + backward),
// the tower's forward once when frozen and 3x when trained, likewise the
// adapter. `head_rows`, where given, is the number of text positions that
// went through the output head (the targets: the loss skips the rest), in
// place of samples x text_len for the head's 6 D V FLOPs a row.
FORGE_API double train_step_flops(VLMImpl& model, int64_t samples, int64_t text_len,
                                  std::optional<int64_t> head_rows = std::nullopt);

}  // namespace forge
