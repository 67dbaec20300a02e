// Activation checkpointing (core/model/checkpointing.h): a custom autograd
// node whose backward re-runs the block with grad mode on and differentiates
// the recomputed graph.
#include "core/model/checkpointing.h"

#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <ATen/CPUGeneratorImpl.h>

namespace forge {

namespace {

using torch::autograd::variable_list;

class CheckpointBackward final : public torch::autograd::Node {
 public:
  CheckpointBackward(CheckpointedFn fn, at::Tensor x, std::vector<at::Tensor> extras, std::vector<at::Tensor> weights,
                     at::Tensor rng_state)
      : fn_(std::move(fn)), x_(std::move(x)), extras_(std::move(extras)), weights_(std::move(weights)),
        rng_state_(std::move(rng_state)) {}

  std::string name() const override { return "forge::CheckpointBackward"; }

  variable_list apply(variable_list&& grads) override {
    // Fresh leaves for the saved inputs, so the recomputed graph ends at them.
    at::Tensor x = x_.detach().requires_grad_(x_.requires_grad());
    std::vector<at::Tensor> extras;
    for (const auto& e : extras_) extras.push_back(e.defined() ? e.detach().requires_grad_(e.requires_grad()) : e);
    at::Tensor y;
    {
      // Same random draws as the forward; the caller's RNG state is put back afterwards.
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      at::Tensor resume = gen.get_state();
      gen.set_state(rng_state_);
      torch::AutoGradMode on(true);
      y = fn_(x, extras);
      gen.set_state(resume);
    }
    // Differentiate w.r.t. every input in the order of this node's edges.
    variable_list inputs{x};
    for (const auto& e : extras) inputs.push_back(e);
    for (const auto& w : weights_) inputs.push_back(w);
    variable_list wanted, out(inputs.size());
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
      for (size_t k = 0; k < where.size(); ++k) out[where[k]] = g[k];
    }
    release();
    return out;
  }

  void release_variables() override { release(); }

 private:
  void release() {
    x_.reset();
    extras_.clear();
  }
  CheckpointedFn fn_;
  at::Tensor x_;
  std::vector<at::Tensor> extras_;
  std::vector<at::Tensor> weights_;
  at::Tensor rng_state_;
};

}  // namespace

at::Tensor checkpointed(const CheckpointedFn& fn, const at::Tensor& x, const std::vector<at::Tensor>& extras,
                        const std::vector<at::Tensor>& weights) {
  bool needs = x.requires_grad();
  for (const auto& e : extras) needs = needs || (e.defined() && e.requires_grad());
  for (const auto& w : weights) needs = needs || w.requires_grad();
  if (!torch::autograd::GradMode::is_enabled() || !needs) return fn(x, extras);

  at::Tensor rng_state = at::detail::getDefaultCPUGenerator().get_state();
  at::Tensor y;
  {
    torch::NoGradGuard no_grad;
    y = fn(x, extras);
  }
  auto node = std::make_shared<CheckpointBackward>(fn, x, extras, weights, rng_state);
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

}  // namespace forge
