// How a sharded run's tensors become whole ones in a checkpoint file and go
// back to shards when it is loaded, at any world size
// (core/distributed/fsdp.h implements it).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "forge/export.h"

namespace forge {

class FORGE_API ShardView {
 public:
  virtual ~ShardView() = default;
  // Whether parameter `name` (any of its names) is split across ranks.
  virtual bool is_sharded(const std::string& name) const = 0;
  virtual std::vector<int64_t> full_shape(const std::string& name) const = 0;
  // The whole tensor of parameter `name` from this rank's part (the
  // parameter itself, or a shard-shaped tensor such as an AdamW moment). A
  // collective: every rank calls it in the same order.
  virtual at::Tensor gather(const std::string& name, const at::Tensor& local) const = 0;
  // This rank's part of a whole-shaped tensor of parameter `name`.
  virtual at::Tensor local(const std::string& name, const at::Tensor& full) const = 0;
};

}  // namespace forge
