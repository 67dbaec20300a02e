// Parameters that live sharded across data-parallel ranks and are whole only
// while the block that reads them runs (fully sharded data parallelism,
// `[distributed] dp_shard`). The trainer makes one unit per decoder layer and
// per tower block; each block runs between gather() and release(), in forward
// and again in backward, and hands its gradients to reduce_grads().
#pragma once

#include <ATen/ATen.h>

#include <torch/nn/module.h>

#include <memory>
#include <vector>

#include "forge/export.h"

namespace forge {

class FORGE_API ParamUnit {
 public:
  virtual ~ParamUnit();
  // Makes params() whole. A collective: every rank calls it in the same
  // order. Nested calls are counted; only the outermost one gathers.
  virtual void gather() = 0;
  // Frees the whole parameters again (their shapes stay, their memory goes).
  virtual void release() = 0;
  // Starts gathering without waiting, so that the next gather() finds the
  // parameters on their way (the block that runs next, while the current one
  // computes). A collective like gather(). Default: nothing.
  virtual void prefetch() {}
  // The unit's parameters, whole-shaped; their values are valid between
  // gather() and release().
  virtual const std::vector<at::Tensor>& params() const = 0;
  // The gradients of params() from one backward of the block (undefined
  // where a parameter got none), averaged over ranks into the shards. A
  // collective, like gather().
  virtual void reduce_grads(const std::vector<at::Tensor>& grads) = 0;
};

// A stack of repeated blocks (a vision tower's layers) that the trainer can
// run with activation checkpointing and with sharded parameters, as it does
// the decoder's layers. A VisionEncoder exposes its own through block_stack().
class FORGE_API BlockStack {
 public:
  virtual ~BlockStack();
  // The blocks, in the order they run; each becomes one ParamUnit when sharded.
  virtual std::vector<std::shared_ptr<torch::nn::Module>> blocks() const = 0;
  // In training, recompute every `every`-th block in backward (0: off).
  virtual void set_activation_checkpointing(int64_t every) = 0;
  // Block i's parameters live in units[i] (empty: whole parameters).
  virtual void set_block_units(std::vector<std::shared_ptr<ParamUnit>> units) = 0;
};

}  // namespace forge
