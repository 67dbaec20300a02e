#include "core/distributed/grad_buckets.h"

#include <torch/csrc/autograd/variable.h>

#include <fmt/format.h>

#include "forge/error.h"

namespace forge {

struct GradBuckets::Bucket {
  std::vector<at::Tensor> params;
  std::vector<int64_t> offsets;
  int64_t numel = 0;       // gradient elements; then one "had a gradient" flag per parameter
  at::Tensor flat;         // [numel + params.size()], filled by the hooks
  std::vector<bool> filled;
  std::vector<int64_t> hooks;  // register_hook handles while armed, else -1
  size_t pending = 0;      // parameters whose gradient has not arrived this step
  std::unique_ptr<Distributed::Pending> work;
};

GradBuckets::GradBuckets(const std::vector<at::Tensor>& params, double bucket_mb, Distributed& dist) : dist_(dist) {
  if (!(bucket_mb > 0)) throw InvalidArgument(fmt::format("gradient buckets of {} MB: must be > 0", bucket_mb));
  const double cap = bucket_mb * 1024 * 1024;
  // Reverse order: backward produces the last layers' gradients first.
  for (auto it = params.rbegin(); it != params.rend(); ++it) {
    const at::Tensor& p = *it;
    const double bytes = static_cast<double>(p.numel() * p.element_size());
    if (buckets_.empty() || (buckets_.back()->numel > 0 &&
                             static_cast<double>(buckets_.back()->numel) * p.element_size() + bytes > cap) ||
        buckets_.back()->params.front().scalar_type() != p.scalar_type())
      buckets_.push_back(std::make_unique<Bucket>());
    Bucket& b = *buckets_.back();
    b.params.push_back(p);
    b.offsets.push_back(b.numel);
    b.numel += p.numel();
  }
  for (auto& b : buckets_) {
    b->flat = at::zeros({b->numel + static_cast<int64_t>(b->params.size())},
                        b->params.front().options().requires_grad(false));
    b->filled.assign(b->params.size(), false);
    b->hooks.assign(b->params.size(), -1);
  }
}

void GradBuckets::on_grad(size_t i, size_t k, const at::Tensor& g) {
  Bucket& b = *buckets_[i];
  if (!armed_ || b.filled[k]) return;
  torch::NoGradGuard no_grad;
  const at::Tensor& param = b.params[k];
  at::Tensor slot = b.flat.narrow(0, b.offsets[k], param.numel());
  slot.copy_(g.reshape({-1}));
  if (param.grad().defined()) slot.add_(param.grad().reshape({-1}));  // what earlier micro-batches accumulated
  b.flat[b.numel + static_cast<int64_t>(k)].fill_(1);
  b.filled[k] = true;
  if (--b.pending == 0) launch_ready();
}

GradBuckets::~GradBuckets() = default;

size_t GradBuckets::buckets() const { return buckets_.size(); }

void GradBuckets::arm() {
  // Hooks on the parameters that train at this step (a frozen tensor takes none); removed in finish().
  for (size_t i = 0; i < buckets_.size(); ++i) {
    Bucket& b = *buckets_[i];
    b.flat.zero_();
    b.filled.assign(b.params.size(), false);
    b.pending = 0;
    b.work.reset();
    for (size_t k = 0; k < b.params.size(); ++k) {
      if (!b.params[k].requires_grad()) continue;
      ++b.pending;
      b.hooks[k] = static_cast<int64_t>(
          b.params[k].register_hook([this, i, k](const at::Tensor& g) { on_grad(i, k, g); }));
    }
  }
  next_launch_ = 0;
  during_backward_ = 0;
  armed_ = true;
}

void GradBuckets::launch_ready() {
  // Launch in bucket order only: every rank issues the same sequence of collectives.
  while (next_launch_ < buckets_.size() && buckets_[next_launch_]->pending == 0) {
    launch(next_launch_++);
    ++during_backward_;
  }
}

void GradBuckets::launch(size_t bucket) {
  buckets_[bucket]->work = dist_.all_reduce_sum_async(buckets_[bucket]->flat, "a gradient bucket all-reduce");
}

void GradBuckets::finish() {
  if (!armed_) return;
  armed_ = false;
  for (auto& b : buckets_)
    for (size_t k = 0; k < b->params.size(); ++k)
      if (b->hooks[k] >= 0) {
        b->params[k].remove_hook(static_cast<unsigned>(b->hooks[k]));
        b->hooks[k] = -1;
      }
  while (next_launch_ < buckets_.size()) launch(next_launch_++);  // unused parameters leave buckets unfilled
  torch::NoGradGuard no_grad;
  const double world = static_cast<double>(dist_.world());
  for (auto& b : buckets_) {
    b->work->wait();
    at::Tensor flags = b->flat.narrow(0, b->numel, static_cast<int64_t>(b->params.size())).to(at::kCPU);
    for (size_t k = 0; k < b->params.size(); ++k) {
      at::Tensor p = b->params[k];
      if (flags[static_cast<int64_t>(k)].item<float>() == 0) {
        p.mutable_grad().reset();
        continue;
      }
      at::Tensor mean = b->flat.narrow(0, b->offsets[k], p.numel()).view(p.sizes()).div(world);
      if (p.grad().defined())
        p.mutable_grad().copy_(mean);
      else
        p.mutable_grad() = mean;
    }
  }
}

}  // namespace forge
