#include "core/distributed/data_parallel.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "core/util/sum_squares.h"
#include "forge/error.h"
#include "forge/logging.h"

namespace forge {

DataParallel::DataParallel(const DistributedConfig& cfg, Distributed& dist) : dist_(dist) {
  const int64_t shard = resolved_dp_shard(cfg, dist.world());
  shard_ = shard > 1;
  replicate_ = cfg.dp_replicate;
  if (shard_ && replicate_ > 1) {
    // Hybrid: shard within consecutive groups of `shard` ranks; rank r and r + k * shard hold the same shards.
    const int r = dist.rank(), S = static_cast<int>(shard), R = static_cast<int>(replicate_);
    std::vector<int> within, across;
    for (int i = 0; i < S; ++i) within.push_back(r / S * S + i);
    for (int j = 0; j < R; ++j) across.push_back(j * S + r % S);
    shard_group_ = dist.subgroup(within, fmt::format("shard{}", r / S));
    replica_group_ = dist.subgroup(across, fmt::format("replica{}", r % S));
  }
  bucket_mb_ = cfg.bucket_size_mb;
  prefetch_ = cfg.prefetch == "on" || (cfg.prefetch == "auto" && dist.backend() == "nccl");
}

DataParallel::~DataParallel() = default;

std::string DataParallel::describe() const {
  if (dist_.world() == 1) return "one rank";
  const char* prefetching = prefetch_ ? "; the next block's gather prefetched" : "";
  if (shard_group_)
    return fmt::format("hybrid sharded data parallel over {} ranks ({}): {} groups of {} that shard, replicated{}",
                       dist_.world(), dist_.backend(), replicate_, shard_group_->world(), prefetching);
  if (shard_)
    return fmt::format("fully sharded data parallel over {} ranks ({}){}", dist_.world(), dist_.backend(),
                       prefetching);
  return fmt::format("replicated data parallel, gradients in buckets of {} MB over {} ranks ({})", bucket_mb_,
                     dist_.world(), dist_.backend());
}

namespace {
// "name." of `m` inside `root`.
std::string prefix_of(const torch::nn::Module& root, const torch::nn::Module* m) {
  for (const auto& item : root.named_modules())
    if (item.value().get() == m) return item.key() + ".";
  throw InvalidArgument("data parallel: a block is not a submodule of the model");
}
}  // namespace

void DataParallel::attach(VLMImpl& model, const at::Device& device, at::ScalarType gather_dtype) {
  if (!shard_) {
    model.to(device);
    return;
  }
  // One unit per decoder layer and per tower block; everything else is the root unit.
  std::vector<std::string> prefixes;
  for (const auto& layer : model.transformer->layer_list()) prefixes.push_back(prefix_of(model, layer.get()));
  BlockStack* tower = model.vision_encoder->block_stack();
  std::vector<std::shared_ptr<torch::nn::Module>> tower_blocks;
  if (tower) tower_blocks = tower->blocks();
  for (const auto& b : tower_blocks) prefixes.push_back(prefix_of(model, b.get()));
  fsdp_ = std::make_unique<FullyShardedModel>(model, prefixes, shard_group_ ? *shard_group_ : dist_,
                                              replica_group_.get(), device);
  fsdp_->set_prefetch(prefetch_);
  fsdp_->set_gather_dtype(gather_dtype);
  if (gather_dtype != at::kFloat)
    log()->info("sharded: weights all-gathered in {}, gradients reduce-scattered in fp32, shards and AdamW state fp32",
                c10::toString(gather_dtype));
  const size_t layers = model.transformer->layer_list().size();
  std::vector<std::shared_ptr<ParamUnit>> units, tower_units;
  for (size_t i = 0; i < layers; ++i) units.push_back(fsdp_->unit(i));
  for (size_t i = 0; i < tower_blocks.size(); ++i) tower_units.push_back(fsdp_->unit(layers + i));
  model.transformer->set_layer_units(std::move(units));
  if (tower) tower->set_block_units(std::move(tower_units));
}

ParamGroups DataParallel::optimizer_groups(const ParamGroups& whole) {
  if (!fsdp_) {
    if (dist_.world() > 1) buckets_ = std::make_unique<GradBuckets>(whole.all(), bucket_mb_, dist_);
    return whole;
  }
  ParamGroups g;
  for (const auto& [name, p] : whole.decay) g.decay.emplace_back(name, fsdp_->shard_of(p));
  for (const auto& [name, p] : whole.no_decay) g.no_decay.emplace_back(name, fsdp_->shard_of(p));
  return g;
}

void DataParallel::begin_step() {
  if (!fsdp_) return;
  fsdp_->sync_requires_grad();
  fsdp_->gather_root();
}

void DataParallel::before_backward(bool last_micro_batch) {
  if (buckets_ && last_micro_batch) buckets_->arm();
}

void DataParallel::finish_gradients() {
  if (fsdp_) {  // the layers reduced theirs during backward
    fsdp_->reduce_root_grads();
    fsdp_->release_root();
    return;
  }
  if (buckets_) buckets_->finish();
}

// Σ g² over the gradients of `with_grad`, in double. Dense CPU gradients go through forge's pass
// (core/util/sum_squares.h): exact to double rounding, at the rate of memory, the same on any thread count.
// Others (on a GPU, sparse) add up the squares of their ATen norms, computed on their device in fp32 at least
// (fp16 and bf16 gradients accumulate and round in fp32 there, without a copy), with one read back.
static double grad_sum_of_squares(const std::vector<at::Tensor>& with_grad) {
  std::vector<at::Tensor> on_cpu, norms;
  for (const auto& p : with_grad) {
    const at::Tensor& g = p.grad();
    if (cpu_norm::sums(g)) {
      on_cpu.push_back(g);
    } else {
      const bool low = g.scalar_type() == at::kHalf || g.scalar_type() == at::kBFloat16;
      const at::Tensor n = low ? at::linalg_vector_norm(g.detach(), 2, std::nullopt, false, at::kFloat)
                               : g.detach().norm(2);
      norms.push_back(n.to(at::kDouble));
    }
  }
  double s = cpu_norm::sum_of_squares(on_cpu);
  if (!norms.empty()) s += at::stack(norms).pow(2).sum().item<double>();
  return s;
}

// The global 2-norm of the gradients and clip_grad_norm_'s formula for the factor, max_norm / (norm + 1e-6), in
// double and rounded once to fp32 (as the gradients' multiply rounds it), capped at 1; 1 for a norm that is not
// finite, a step the caller skips. Under FSDP every element lives on exactly one rank of the shard group: the
// sums of squares add up there (replica groups hold the same shards), so a sharded run's norm is the replicated
// run's up to double rounding.
GradClip DataParallel::grad_clip(const ParamGroups& optimized, double max_norm) {
  std::vector<at::Tensor> with_grad;
  for (const auto& p : optimized.all())
    if (p.grad().defined()) with_grad.push_back(p);
  at::NoGradGuard no_grad;
  double squares = grad_sum_of_squares(with_grad);
  if (fsdp_) squares = (shard_group_ ? *shard_group_ : dist_).sum(squares);
  const double total = std::sqrt(squares);
  const double coef = static_cast<float>(max_norm / (total + 1e-6));
  return {total, coef < 1 && std::isfinite(total) ? coef : 1.0};
}

void DataParallel::begin_eval() {
  if (fsdp_) fsdp_->gather_root();
}

void DataParallel::end_eval() {
  if (fsdp_) fsdp_->release_root();
}

}  // namespace forge
