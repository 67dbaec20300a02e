// Replicated data parallelism done right: gradients averaged in buckets
// while backward still runs. Each parameter gets an autograd hook; on the
// last micro-batch of a step the hook copies the parameter's final gradient
// (this micro-batch's plus what earlier ones accumulated) into its bucket,
// and a bucket whose gradients are all in is all-reduced at once,
// asynchronously, while autograd goes on with the layers below. Earlier
// micro-batches only accumulate locally: no communication. Buckets are filled
// in reverse parameter order (about the order backward produces gradients)
// and always launched in that order, so every rank issues the same
// collectives in the same sequence.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <vector>

#include "core/distributed/dist.h"
#include "forge/export.h"

namespace forge {

class FORGE_API GradBuckets {
 public:
  // `params`: the tensors whose gradients are averaged (each once).
  GradBuckets(const std::vector<at::Tensor>& params, double bucket_mb, Distributed& dist);
  ~GradBuckets();

  // Arms the hooks for the coming backward (the step's last micro-batch).
  void arm();
  // After that backward: launches the buckets not launched yet, waits for all,
  // and puts the averaged gradients in place (a parameter no rank had a
  // gradient for keeps none).
  void finish();

  size_t buckets() const;
  // Buckets launched from hooks (while backward ran) in the last step.
  size_t launched_during_backward() const { return during_backward_; }

  struct Bucket;

 private:
  void on_grad(size_t bucket, size_t param, const at::Tensor& grad);
  void launch_ready();
  void launch(size_t bucket);
  Distributed& dist_;
  std::vector<std::unique_ptr<Bucket>> buckets_;
  size_t next_launch_ = 0;
  size_t during_backward_ = 0;
  bool armed_ = false;
};

}  // namespace forge
