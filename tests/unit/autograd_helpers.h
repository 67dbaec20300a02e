// Test helpers that look at autograd graphs (kept apart from test_helpers.h,
// which most tests include, for its heavier headers).
#pragma once

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>

#include <set>
#include <string>
#include <vector>

namespace forge::test {

// f(node) once for every autograd node behind `t`.
template <typename F>
void for_each_node(const at::Tensor& t, F f) {
  std::vector<torch::autograd::Node*> todo{t.grad_fn().get()};
  std::set<torch::autograd::Node*> seen;
  while (!todo.empty()) {
    torch::autograd::Node* n = todo.back();
    todo.pop_back();
    if (!n || !seen.insert(n).second) continue;
    f(*n);
    for (const auto& e : n->next_edges()) todo.push_back(e.function.get());
  }
}

// The names of every autograd node behind `t`: which fused paths ran.
inline std::set<std::string> graph_nodes(const at::Tensor& t) {
  std::set<std::string> names;
  for_each_node(t, [&](torch::autograd::Node& n) { names.insert(n.name()); });
  return names;
}

// The leaf tensors (their TensorImpls) whose gradients come straight from a node named `name` behind `t`.
inline std::set<const c10::TensorImpl*> leaves_under(const at::Tensor& t, const std::string& name) {
  std::set<const c10::TensorImpl*> leaves;
  for_each_node(t, [&](torch::autograd::Node& n) {
    if (n.name() != name) return;
    for (const auto& e : n.next_edges())
      if (const auto* acc = dynamic_cast<const torch::autograd::AccumulateGrad*>(e.function.get()))
        leaves.insert(acc->variable.unsafeGetTensorImpl());
  });
  return leaves;
}

}  // namespace forge::test
