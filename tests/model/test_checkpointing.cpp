// Activation checkpointing (train.activation_checkpointing): the recomputed
// layers give the same losses and gradients as keeping every activation,
// bit for bit on a CPU, for every arch.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>

#include <deque>
#include <set>

#include "core/model/checkpointing.h"
#include "core/model/vlm.h"
#include "tests/unit/test_helpers.h"

using namespace forge;

namespace {

// How many checkpoint nodes the autograd graph behind `t` holds.
int count_checkpoints(const at::Tensor& t) {
  int n = 0;
  std::deque<torch::autograd::Node*> todo{t.grad_fn().get()};
  std::set<torch::autograd::Node*> seen;
  while (!todo.empty()) {
    auto* node = todo.front();
    todo.pop_front();
    if (!node || !seen.insert(node).second) continue;
    if (node->name() == "forge::BlockBackward") ++n;
    for (const auto& e : node->next_edges()) todo.push_back(e.function.get());
  }
  return n;
}

struct Result {
  double loss = 0;
  std::map<std::string, at::Tensor> grads;
  int checkpoints = 0;
};

Result step(VLM& model, int64_t every, const at::Tensor& px, const at::Tensor& ids) {
  model->zero_grad();
  model->transformer->set_activation_checkpointing(every);
  if (BlockStack* tower = model->vision_encoder->block_stack()) tower->set_activation_checkpointing(every);
  VLMOutput out = model->forward(px, ids, ids);
  at::Tensor loss = at::cross_entropy_loss(out.logits.reshape({-1, out.logits.size(-1)}), out.targets.reshape({-1}));
  Result r;
  r.checkpoints = count_checkpoints(loss);
  loss.backward();
  r.loss = loss.item<double>();
  for (const auto& p : model->named_parameters(true))
    if (p.value().grad().defined()) r.grads[p.key()] = p.value().grad().clone();
  return r;
}

}  // namespace

TEST_CASE("activation checkpointing: same loss and gradients as none, bit for bit, for every arch", "[model][ac]") {
  auto& reg = forge::test::builtin_registry();
  for (const std::string arch : {"joint_decoder", "cross_attention", "mot"}) {
    INFO(arch);
    LoadedConfig cfg = load_config_text(forge::test::tiny_vlm_toml(arch), "t.toml", reg);
    VLM model = build_vlm(cfg.job, reg);
    for (auto& p : model->parameters(true)) p.requires_grad_(true);  // tower and adapter too
    model->train();
    at::Tensor px = at::rand({2, 3, 16, 16}, at::TensorOptions().dtype(at::kFloat));
    at::Tensor ids = at::randint(0, 64, {2, 12}, at::TensorOptions().dtype(at::kLong));
    Result none = step(model, 0, px, ids);
    CHECK(none.checkpoints == 0);
    for (int64_t every : {1, 2}) {
      INFO("every " << every << " layers");
      Result ac = step(model, every, px, ids);
      CHECK(ac.checkpoints == 2 / every);  // 2 layers
      CHECK(ac.loss == none.loss);
      REQUIRE(ac.grads.size() == none.grads.size());
      for (const auto& [name, g] : none.grads) {
        INFO(name);
        REQUIRE(ac.grads.count(name));
        CHECK(at::equal(ac.grads.at(name), g));
      }
    }
  }
}

TEST_CASE("activation checkpointing covers a ViT tower's blocks, bit for bit", "[model][ac]") {
  auto& reg = forge::test::builtin_registry();
  for (const std::string encoder : {"siglip", "clip"}) {
    INFO(encoder);
    std::string toml = forge::test::tiny_vlm_toml();
    const std::string random = "type = \"random\"\nnum_tokens = 16\nfeature_dim = 24\n";
    REQUIRE(toml.find(random) != std::string::npos);
    toml.replace(toml.find(random), random.size(),
                 "type = \"" + encoder + "\"\nimage_size = 16\npatch_size = 8\nfeature_dim = 24\nnum_layers = 2\n"
                 "num_heads = 4\n");
    LoadedConfig cfg = load_config_text(toml, "t.toml", reg);
    VLM model = build_vlm(cfg.job, reg);
    REQUIRE(model->vision_encoder->block_stack() != nullptr);
    REQUIRE(model->vision_encoder->block_stack()->blocks().size() == 2);
    for (auto& p : model->parameters(true)) p.requires_grad_(true);
    model->train();
    at::Tensor px = at::rand({2, 3, 16, 16});
    at::Tensor ids = at::randint(0, 64, {2, 12}, at::TensorOptions().dtype(at::kLong));
    Result none = step(model, 0, px, ids);
    for (int64_t every : {1, 2}) {
      INFO("every " << every << " blocks");
      Result ac = step(model, every, px, ids);
      CHECK(ac.checkpoints == 2 * (2 / every));  // 2 decoder layers and 2 tower blocks
      CHECK(ac.loss == none.loss);
      REQUIRE(ac.grads.size() == none.grads.size());
      size_t tower = 0;
      for (const auto& [name, g] : none.grads) {
        INFO(name);
        REQUIRE(ac.grads.count(name));
        CHECK(at::equal(ac.grads.at(name), g));
        tower += name.find("vision_encoder.") == 0 ? 1 : 0;
      }
      CHECK(tower > 0);
    }
  }
}

TEST_CASE("activation checkpointing: a frozen block and no-grad mode run it once, without a checkpoint", "[model][ac]") {
  at::Tensor w = at::randn({4, 4});
  int calls = 0;
  CheckpointedFn fn = [&](const at::Tensor& x, const std::vector<at::Tensor>&) {
    ++calls;
    return at::matmul(x, w);
  };
  at::Tensor x = at::randn({3, 4});
  at::Tensor y = checkpointed(fn, x, {}, {w});  // nothing requires grad
  CHECK_FALSE(y.requires_grad());
  CHECK(calls == 1);
  at::Tensor wg = w.clone().requires_grad_(true);
  CheckpointedFn fn2 = [&](const at::Tensor& x2, const std::vector<at::Tensor>&) {
    ++calls;
    return at::matmul(x2, wg).tanh();
  };
  at::Tensor y2 = checkpointed(fn2, x, {}, {wg});
  CHECK(calls == 2);
  y2.sum().backward();
  CHECK(calls == 3);  // recomputed once in backward
  at::Tensor ref = wg.grad().clone();
  wg.mutable_grad().reset();
  at::matmul(x, wg).tanh().sum().backward();
  CHECK(at::equal(ref, wg.grad()));
}

TEST_CASE("activation checkpointing replays a block's random draws in the recomputation", "[model][ac]") {
  // A dropout-like block: the recomputation must draw the forward's mask again (the CPU RNG state is
  // replayed), and the caller's RNG stream continues as if nothing had been recomputed.
  at::Tensor x = at::randn({64}).requires_grad_(true);
  CheckpointedFn fn = [](const at::Tensor& h, const std::vector<at::Tensor>&) {
    return h * (at::rand_like(h) > 0.5).to(h.scalar_type()) * 2;
  };
  at::Tensor y = checkpointed(fn, x, {}, {});
  at::Tensor mask = (y.detach() / x.detach()).round();  // 0 or 2 where the forward kept x
  at::Tensor after_forward = at::detail::getDefaultCPUGenerator().get_state();
  y.sum().backward();
  CHECK(at::equal(x.grad(), mask));
  CHECK(at::equal(at::detail::getDefaultCPUGenerator().get_state(), after_forward));
}

TEST_CASE("activation checkpointing recomputes under the forward's autocast, not backward's", "[model][ac]") {
  // The trainer enables bf16 autocast around the forward only; the recomputation runs inside backward,
  // and must see the same dtypes as the forward did, or it computes something else (or fails on dtypes).
  auto& reg = forge::test::builtin_registry();
  LoadedConfig cfg = load_config_text(forge::test::tiny_vlm_toml(), "t.toml", reg);
  VLM model = build_vlm(cfg.job, reg);
  model->train();
  at::Tensor px = at::rand({2, 3, 16, 16});
  at::Tensor ids = at::randint(0, 64, {2, 12}, at::TensorOptions().dtype(at::kLong));
  auto run = [&](int64_t every) {
    model->zero_grad();
    model->transformer->set_activation_checkpointing(every);
    at::autocast::set_autocast_enabled(at::kCPU, true);
    at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    VLMOutput out = model->forward(px, ids, ids);
    at::Tensor loss = at::cross_entropy_loss(out.logits.reshape({-1, out.logits.size(-1)}).to(at::kFloat),
                                             out.targets.reshape({-1}));
    at::autocast::set_autocast_enabled(at::kCPU, false);
    at::autocast::clear_cache();
    loss.backward();
    std::map<std::string, at::Tensor> grads;
    for (const auto& p : model->named_parameters(true))
      if (p.value().grad().defined()) grads[p.key()] = p.value().grad().clone();
    return grads;
  };
  auto none = run(0), full = run(1);
  CHECK_FALSE(at::autocast::is_autocast_enabled(at::kCPU));  // backward's state is left as it was
  REQUIRE(none.size() == full.size());
  for (const auto& [name, g] : none) {
    INFO(name);
    CHECK(at::equal(full.at(name), g));
  }
}
