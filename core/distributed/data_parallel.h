// How the ranks share a training step. `[distributed]` with KempnerForge's
// meaning: dp_replicate groups × dp_shard ranks per group = the world.
//   - replicated (dp_shard = 1): every rank holds the whole model and
//     optimizer; gradients are averaged in buckets, all-reduced while the
//     last micro-batch's backward still runs (core/distributed/grad_buckets.h);
//   - fully sharded (dp_replicate = 1, dp_shard = world, the default -1):
//     parameters, gradients and AdamW state are split across ranks
//     (core/distributed/fsdp.h);
//   - hybrid (both > 1): sharded within groups of dp_shard consecutive ranks,
//     and the groups' gradient shards averaged across them.
// The trainer's step calls these pieces in order; with one rank they do
// nothing.
#pragma once

#include <memory>
#include <string>

#include "core/config/job.h"
#include "core/distributed/dist.h"
#include "core/distributed/fsdp.h"
#include "core/distributed/grad_buckets.h"
#include "core/model/vlm.h"
#include "core/training/optim.h"
#include "forge/export.h"

namespace forge {

class FORGE_API DataParallel {
 public:
  DataParallel(const DistributedConfig& cfg, Distributed& dist);
  ~DataParallel();

  bool sharded() const { return shard_; }
  std::string describe() const;

  // Takes over the model once its weights are final (built, broadcast,
  // loaded) and puts it on `device`: a sharded run splits the weights here,
  // keeps its chunks on `device` and frees the whole copies, so the whole
  // model is never on the device; a replicated one moves it there. Sharded
  // runs all-gather weights in `gather_dtype` (bf16 under bf16 compute, as
  // FSDP2's MixedPrecisionPolicy) and reduce gradients in fp32.
  void attach(VLMImpl& model, const at::Device& device, at::ScalarType gather_dtype = at::kFloat);
  // The optimizer's tensors: the parameters, or their shards. Replicated:
  // also sets up the gradient buckets over them.
  ParamGroups optimizer_groups(const ParamGroups& whole);
  // Before the first forward of a step.
  void begin_step();
  // Before each micro-batch's backward; only the last one communicates.
  void before_backward(bool last_micro_batch);
  // After the last backward: every rank's gradients averaged into the
  // optimizer's tensors' .grad.
  void finish_gradients();
  // The global gradient norm of `optimized` (over every rank's shards when
  // sharded; the squares summed in double) and the factor that clips it to
  // max_norm (clip_grad_norm_'s formula, in double, rounded once to fp32),
  // not yet applied: the optimizer step applies it
  // (optimizer_step in core/training/optim.h), in the pass that reads the
  // gradients anyway where it can; scale_gradients there applies it at once.
  GradClip grad_clip(const ParamGroups& optimized, double max_norm);
  // A sharded model evaluates on every rank (its gathers are collectives);
  // a replicated one on rank 0 alone.
  bool every_rank_evaluates() const { return shard_; }
  void begin_eval();
  void end_eval();
  // For checkpoints: null unless sharded.
  const ShardView* shard_view() const { return fsdp_.get(); }
  const FullyShardedModel* fsdp() const { return fsdp_.get(); }
  // Replicated over several ranks: the gradient buckets (else null).
  const GradBuckets* buckets() const { return buckets_.get(); }

 private:
  Distributed& dist_;
  bool shard_ = false;
  std::unique_ptr<FullyShardedModel> fsdp_;
  std::unique_ptr<GradBuckets> buckets_;
  int64_t replicate_ = 1;
  std::unique_ptr<Distributed> shard_group_, replica_group_;  // hybrid only
  double bucket_mb_ = 25;
  bool prefetch_ = false;
};

}  // namespace forge
