// Parameters that live sharded across data-parallel ranks and are whole only
// while the block that reads them runs (fully sharded data parallelism,
// `[distributed] dp_shard`). The trainer makes one unit per decoder layer;
// the decoder runs each layer between gather() and release(), in forward and
// again in backward, and hands the layer's gradients to reduce_grads().
#pragma once

#include <ATen/ATen.h>

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
  // The unit's parameters, whole-shaped; their values are valid between
  // gather() and release().
  virtual const std::vector<at::Tensor>& params() const = 0;
  // The gradients of params() from one backward of the block (undefined
  // where a parameter got none), averaged over ranks into the shards. A
  // collective, like gather().
  virtual void reduce_grads(const std::vector<at::Tensor>& grads) = 0;
};

}  // namespace forge
