// Fully sharded data parallelism on c10d, in FSDP2's layout: every parameter
// is flattened, padded to a multiple of the world size and cut into equal
// chunks; rank r keeps chunk r as a leaf tensor (the "shard") that the
// optimizer updates, so parameters, gradients and AdamW moments all take
// 1/world of their whole size on each rank.
//
// Parameters are grouped into units: one per named prefix (a decoder layer)
// and a root unit with the rest (embeddings, head, norms, tower, adapter,
// arch modules). A unit's whole parameters exist only between gather() (an
// all-gather of the shards into the parameters' own storage) and release()
// (the storage is freed; shapes stay). Layer units are gathered around their
// forward and again around their backward, and reduce-scatter their
// gradients as soon as their backward is done; the root unit is gathered for
// a whole step and reduces its gradients after the last micro-batch.
#pragma once

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <map>
#include <optional>
#include <memory>
#include <string>
#include <vector>

#include "core/checkpoint/shard_view.h"
#include "core/distributed/dist.h"
#include "forge/export.h"
#include "forge/param_unit.h"

namespace forge {

class ShardedUnit;
struct ShardedParam;

class FORGE_API FullyShardedModel final : public ShardView {
 public:
  // Shards every parameter of `model` (which must hold the same values on
  // every rank) over the ranks of `shards` and frees the whole copies. A
  // parameter whose names all start with unit_prefixes[i] belongs to unit i;
  // any other to the root unit. With `replicas` (hybrid sharding), groups
  // that hold the same shards average their gradients across that group too.
  // The shards, and the whole parameters while gathered, live on `device`
  // (default: where the parameters are): a model built on the CPU and
  // sharded onto a GPU never has its whole weights on the GPU.
  FullyShardedModel(torch::nn::Module& model, const std::vector<std::string>& unit_prefixes, Distributed& shards,
                    Distributed* replicas = nullptr, std::optional<at::Device> device = std::nullopt);
  // Whether ParamUnit::prefetch starts gathering early (else it does nothing).
  void set_prefetch(bool on);
  // The dtype the units' all-gathers send (FSDP2's MixedPrecisionPolicy
  // param_dtype): bf16 halves the bytes on the wire, and the whole parameters
  // then hold the bf16-rounded masters (autocast would round them for the
  // matmuls anyway). Gradients are reduce-scattered in fp32 whatever this is;
  // shards, moments and checkpoints stay fp32 (D5). Default: the shards' dtype.
  void set_gather_dtype(at::ScalarType dtype);
  ~FullyShardedModel() override;

  std::shared_ptr<ParamUnit> unit(size_t i) const;
  size_t units() const;

  // The shard standing for a whole parameter (the optimizer's tensor).
  at::Tensor shard_of(const at::Tensor& param) const;
  bool is_sharded(const std::string& name) const override;
  std::vector<int64_t> full_shape(const std::string& name) const override;
  // The whole tensor from every rank's part of parameter `name`: its shard
  // (when `local` is the parameter itself) or any shard-shaped tensor such as
  // an AdamW moment. A collective.
  at::Tensor gather(const std::string& name, const at::Tensor& local) const override;
  // This rank's chunk of a whole-shaped tensor of parameter `name`.
  at::Tensor local(const std::string& name, const at::Tensor& full) const override;

  // Shards follow their parameters' requires_grad (freeze stages change it).
  void sync_requires_grad();
  // Before the first forward of a step (or an evaluation): the root unit whole.
  void gather_root();
  // After the last backward of a step: the root unit's gradients reduced into
  // its shards, its whole parameters and gradients freed.
  void reduce_root_grads();
  void release_root();

  // Elements of shards this rank holds, and of whole parameters.
  int64_t local_numel() const;
  int64_t local_bytes() const;
  int64_t total_numel() const;

 private:
  Distributed& dist_;
  std::vector<std::unique_ptr<ShardedParam>> params_;
  std::map<std::string, ShardedParam*> by_name_;
  std::map<const void*, ShardedParam*> by_impl_;
  std::vector<std::shared_ptr<ShardedUnit>> units_;
  std::shared_ptr<ShardedUnit> root_;
  const ShardedParam& find(const std::string& name) const;
};

}  // namespace forge
