// Blocks run with recomputation and/or sharded parameters
// (core/model/checkpointing.h): a custom autograd node stands for the whole
// block. Its backward either re-runs the block with grad mode on
// (recompute) or differentiates the block's own graph kept from the forward,
// with the block's parameters gathered for as long as that takes.
#include "core/model/checkpointing.h"

#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>

namespace forge {

ParamUnit::~ParamUnit() = default;
BlockStack::~BlockStack() = default;

namespace {

using torch::autograd::variable_list;

// Fresh leaves for a block's inputs, so the block's graph ends at them.
at::Tensor leaf_of(const at::Tensor& t) { return t.defined() ? t.detach().requires_grad_(t.requires_grad()) : t; }

// The autocast state (CPU and CUDA) a block's forward ran under; the
// recomputation runs under the same, whatever backward's state is.
struct AutocastState {
  bool cpu = false, cuda = false;
  at::ScalarType cpu_dtype = at::kBFloat16, cuda_dtype = at::kHalf;
  static AutocastState now() {
    return {at::autocast::is_autocast_enabled(at::kCPU), at::autocast::is_autocast_enabled(at::kCUDA),
            at::autocast::get_autocast_dtype(at::kCPU), at::autocast::get_autocast_dtype(at::kCUDA)};
  }
  void apply() const {
    at::autocast::set_autocast_enabled(at::kCPU, cpu);
    at::autocast::set_autocast_enabled(at::kCUDA, cuda);
    at::autocast::set_autocast_dtype(at::kCPU, cpu_dtype);
    at::autocast::set_autocast_dtype(at::kCUDA, cuda_dtype);
  }
};

// A recomputation replays its forward: the CPU RNG state and the autocast
// state the forward ran under, and the caller's put back when it ends, however
// it ends. The generator's lock is held only while its state is swapped: the
// block itself draws through the same generator (dropout).
class ReplayForward {
 public:
  ReplayForward(const at::Tensor& rng_state, const AutocastState& autocast)
      : gen_(at::detail::getDefaultCPUGenerator()), outside_(AutocastState::now()) {
    {
      std::lock_guard<std::mutex> lock(gen_.mutex());
      resume_ = gen_.get_state();
      gen_.set_state(rng_state);
    }
    autocast.apply();
  }
  ~ReplayForward() {
    outside_.apply();
    at::autocast::clear_cache();
    std::lock_guard<std::mutex> lock(gen_.mutex());
    gen_.set_state(resume_);
  }

 private:
  at::Generator gen_;
  at::Tensor resume_;
  AutocastState outside_;
};

class BlockBackward final : public torch::autograd::Node {
 public:
  BlockBackward(CheckpointedFn fn, BlockPolicy policy, std::vector<at::Tensor> weights)
      : fn_(std::move(fn)), policy_(policy), weights_(std::move(weights)) {}

  std::string name() const override { return "forge::BlockBackward"; }

  // recompute: the block's inputs and the RNG state of its forward.
  void save_inputs(const at::Tensor& x, const std::vector<at::Tensor>& extras, at::Tensor rng_state) {
    x_ = x;
    extras_ = extras;
    rng_state_ = std::move(rng_state);
    autocast_ = AutocastState::now();
  }
  // no recompute: the block's graph, from its input leaves to its output.
  void save_graph(at::Tensor y, at::Tensor x_leaf, std::vector<at::Tensor> extra_leaves) {
    y_ = std::move(y);
    x_ = std::move(x_leaf);
    extras_ = std::move(extra_leaves);
  }

  variable_list apply(variable_list&& grads) override {
    GatheredUnit gathered(policy_.unit);
    if (policy_.prefetch_in_backward) policy_.prefetch_in_backward->prefetch();
    at::Tensor x = x_, y = y_;
    std::vector<at::Tensor> extras = extras_;
    if (policy_.recompute) {
      x = leaf_of(x_);
      extras.clear();
      for (const auto& e : extras_) extras.push_back(leaf_of(e));
      // Same random draws and dtypes (e.g. bf16 autocast on a GPU) as the forward.
      ReplayForward replay(rng_state_, autocast_);
      torch::AutoGradMode on(true);
      y = fn_(x, extras);
    }
    // Differentiate w.r.t. every input in the order of this node's edges, then the unit's parameters.
    variable_list inputs{x};
    for (const auto& e : extras) inputs.push_back(e);
    for (const auto& w : weights_) inputs.push_back(w);
    const size_t n_edges = inputs.size();
    if (policy_.unit)
      for (const auto& p : policy_.unit->params()) inputs.push_back(p);
    variable_list wanted, all(inputs.size());
    std::vector<size_t> where;
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (inputs[i].defined() && inputs[i].requires_grad()) {
        wanted.push_back(inputs[i]);
        where.push_back(i);
      }
    }
    if (!wanted.empty() && y.requires_grad()) {
      variable_list g = torch::autograd::grad({y}, wanted, {grads[0]}, /*retain_graph=*/false,
                                              /*create_graph=*/false, /*allow_unused=*/true);
      for (size_t k = 0; k < where.size(); ++k) all[where[k]] = g[k];
    }
    if (policy_.unit) policy_.unit->reduce_grads(variable_list(all.begin() + static_cast<std::ptrdiff_t>(n_edges),
                                                               all.end()));
    release();
    all.resize(n_edges);
    return all;
  }

  void release_variables() override { release(); }

 private:
  void release() {
    x_.reset();
    y_.reset();
    extras_.clear();
  }
  CheckpointedFn fn_;
  BlockPolicy policy_;
  std::vector<at::Tensor> weights_;
  at::Tensor x_, y_;
  std::vector<at::Tensor> extras_;
  at::Tensor rng_state_;
  AutocastState autocast_;
};

bool any_requires_grad(const std::vector<at::Tensor>& ts) {
  for (const auto& t : ts)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

}  // namespace

at::Tensor run_block(const CheckpointedFn& fn, const at::Tensor& x, const std::vector<at::Tensor>& extras,
                     const std::vector<at::Tensor>& weights, const BlockPolicy& policy) {
  const bool needs = x.requires_grad() || any_requires_grad(extras) || any_requires_grad(weights) ||
                     (policy.unit && any_requires_grad(policy.unit->params()));
  if (!torch::autograd::GradMode::is_enabled() || !needs || (!policy.recompute && !policy.unit)) {
    GatheredUnit gathered(policy.unit);
    return fn(x, extras);
  }
  auto node = std::make_shared<BlockBackward>(fn, policy, weights);
  at::Tensor y;
  {
    GatheredUnit gathered(policy.unit);
    if (policy.recompute) {
      at::Tensor rng_state = at::detail::getDefaultCPUGenerator().get_state();
      torch::NoGradGuard no_grad;
      y = fn(x, extras);
      node->save_inputs(x, extras, rng_state);
    } else {
      // The block's own graph, cut off from the caller's at fresh input leaves.
      at::Tensor x_leaf = leaf_of(x);
      std::vector<at::Tensor> extra_leaves;
      for (const auto& e : extras) extra_leaves.push_back(leaf_of(e));
      at::Tensor inner = fn(x_leaf, extra_leaves);
      y = inner.detach();
      node->save_graph(inner, x_leaf, extra_leaves);
    }
  }
  torch::autograd::edge_list edges = torch::autograd::collect_next_edges(x);
  for (const auto& e : extras) {
    auto more = torch::autograd::collect_next_edges(e);
    edges.insert(edges.end(), more.begin(), more.end());
  }
  for (const auto& w : weights) {
    auto more = torch::autograd::collect_next_edges(w);
    edges.insert(edges.end(), more.begin(), more.end());
  }
  node->set_next_edges(std::move(edges));
  torch::autograd::set_history(y, node);
  return y;
}

at::Tensor checkpointed(const CheckpointedFn& fn, const at::Tensor& x, const std::vector<at::Tensor>& extras,
                        const std::vector<at::Tensor>& weights) {
  return run_block(fn, x, extras, weights, BlockPolicy{true, nullptr});
}

}  // namespace forge
