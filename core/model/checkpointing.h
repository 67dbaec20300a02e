// How a block runs in training when its activations or its parameters are
// not all kept: activation checkpointing (LibTorch has no
// torch.utils.checkpoint: run the block without keeping its activations and
// recompute it in backward) and fully sharded parameters (gather the block's
// parameters just before it runs, free them after, gather them again for its
// backward and hand its gradients back to their shards).
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <vector>

#include "forge/export.h"
#include "forge/param_unit.h"

namespace forge {

// A block: (x, extras) -> y. With recompute it must compute the same thing
// every time it is called with the same inputs (the CPU RNG state is saved and
// restored around the recomputation, so dropout-like draws repeat).
using CheckpointedFn = std::function<at::Tensor(const at::Tensor& x, const std::vector<at::Tensor>& extras)>;

struct BlockPolicy {
  bool recompute = false;      // keep only the inputs; recompute in backward
  ParamUnit* unit = nullptr;   // the block's sharded parameters, or none
  ParamUnit* prefetch_in_backward = nullptr;  // the unit whose backward comes next, started early
};

// Holds a unit's parameters whole for a scope (nothing when unit is null).
// The gather is a collective: every rank must open the same scopes in order.
class GatheredUnit {
 public:
  explicit GatheredUnit(ParamUnit* unit) : unit_(unit) {
    if (unit_) unit_->gather();
  }
  ~GatheredUnit() {
    if (unit_) unit_->release();
  }
  GatheredUnit(const GatheredUnit&) = delete;
  GatheredUnit& operator=(const GatheredUnit&) = delete;

 private:
  ParamUnit* unit_;
};

// y = fn(x, extras) under `policy`. `weights` are the trainable tensors fn
// reads that are not in policy.unit (their gradients flow back as usual);
// `extras` are other inputs that may need a gradient (e.g. image features of
// cross-attention). The unit's gradients go to unit->reduce_grads. Without
// grad mode, or when nothing needs a gradient, this is fn(x, extras) (with
// the unit gathered around it).
FORGE_API at::Tensor run_block(const CheckpointedFn& fn, const at::Tensor& x, const std::vector<at::Tensor>& extras,
                               const std::vector<at::Tensor>& weights, const BlockPolicy& policy);

// Activation checkpointing alone: run_block with recompute and no unit.
FORGE_API at::Tensor checkpointed(const CheckpointedFn& fn, const at::Tensor& x, const std::vector<at::Tensor>& extras,
                                  const std::vector<at::Tensor>& weights);

}  // namespace forge
