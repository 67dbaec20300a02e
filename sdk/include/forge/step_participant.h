// How a module takes part in the training step without the core naming it:
// a mixture-of-experts layer (or an arch plugin's own module) derives from
// StepParticipant next to torch::nn::Module. The trainer finds every
// participant in the model and
//  - tells it, before each micro-batch's forward, which step runs and how the
//    micro-batch's loss is scaled (begin_micro_batch);
//  - adds its auxiliary losses to the objective: a participant attaches them
//    to its own output with attach_aux_loss(), so that they reach backward
//    through the same graph as the block (under activation checkpointing and
//    sharding too) and nothing else has to collect them;
//  - sums step_statistics() over data-parallel ranks after backward and hands
//    them back through end_step() once the optimizer has stepped (e.g. the
//    routing counts that move a router's load-balancing bias, kept equal on
//    every rank);
//  - logs what report() gives at every logged step (metrics.jsonl).
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <string>
#include <vector>

#include "forge/export.h"

namespace torch::nn {
class Module;
}

namespace forge {

struct FORGE_API MicroBatch {
  int64_t step = 0;         // the optimizer step being computed (0-based: steps done before it)
  int64_t max_steps = 1;    // train.max_steps
  double loss_scale = 1.0;  // the factor the micro-batch's loss is multiplied by before backward (1 / accumulation)
};

// Values of the last training forward, for the log.
struct FORGE_API StepReport {
  std::map<std::string, double> sums;                 // added over participants, e.g. "moe/aux_loss"
  std::map<std::string, std::vector<double>> series;  // one per participant, e.g. "moe/expert_counts/layers.1"
};

class FORGE_API StepParticipant {
 public:
  virtual ~StepParticipant();
  // Before each training micro-batch's forward.
  virtual void begin_micro_batch(const MicroBatch& mb);
  // Tensors summed over data-parallel ranks (in place) before end_step; the
  // same shapes on every rank. Default: none.
  virtual std::vector<at::Tensor> step_statistics();
  // After the step: `updated` is false when the optimizer skipped it (a
  // non-finite loss). Default: nothing.
  virtual void end_step(bool updated);
  // Adds the last training forward's values; `name` is the module's path in
  // the model (e.g. "transformer.layers.1.mlp"). Reads device values (a host
  // sync), so the trainer calls it only at logged steps.
  virtual void report(const std::string& name, StepReport& out) const;
};

// Returns y unchanged (a copy) whose backward also sends d(objective)/d(aux)
// = loss_scale to `aux` (a scalar with a graph): the objective becomes
// loss + aux without the caller adding it. Outside grad mode, or when aux
// needs no gradient, returns y itself.
FORGE_API at::Tensor attach_aux_loss(const at::Tensor& y, const at::Tensor& aux, double loss_scale);

// Every participant among `root`'s modules (root included), with its path.
FORGE_API std::vector<std::pair<std::string, StepParticipant*>> step_participants(torch::nn::Module& root);

}  // namespace forge
