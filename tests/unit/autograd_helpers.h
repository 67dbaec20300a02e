// Test helpers that look at autograd graphs (kept apart from test_helpers.h,
// which most tests include, for its heavier headers).
#pragma once

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>

#include <set>
#include <string>
#include <vector>

namespace forge::test {

// The names of every autograd node behind `t`: which fused paths ran.
inline std::set<std::string> graph_nodes(const at::Tensor& t) {
  std::set<std::string> names;
  std::vector<torch::autograd::Node*> todo{t.grad_fn().get()};
  std::set<torch::autograd::Node*> seen;
  while (!todo.empty()) {
    torch::autograd::Node* n = todo.back();
    todo.pop_back();
    if (!n || !seen.insert(n).second) continue;
    names.insert(n->name());
    for (const auto& e : n->next_edges()) todo.push_back(e.function.get());
  }
  return names;
}

// The leaf tensors (their TensorImpls) whose gradients come straight from a node named `name` behind `t`.
inline std::set<const c10::TensorImpl*> leaves_under(const at::Tensor& t, const std::string& name) {
  std::set<const c10::TensorImpl*> leaves;
  std::vector<torch::autograd::Node*> todo{t.grad_fn().get()};
  std::set<torch::autograd::Node*> seen;
  while (!todo.empty()) {
    torch::autograd::Node* n = todo.back();
    todo.pop_back();
    if (!n || !seen.insert(n).second) continue;
    for (const auto& e : n->next_edges()) {
      const auto* acc = dynamic_cast<const torch::autograd::AccumulateGrad*>(e.function.get());
      if (acc && n->name() == name) leaves.insert(acc->variable.unsafeGetTensorImpl());
      todo.push_back(e.function.get());
    }
  }
  return leaves;
}

}  // namespace forge::test
