// The bf16 copies of fp32 weights that bf16 compute on a CPU keeps between
// steps (core/model/bf16_weights.h): what they hold, when they are cast
// again, that the optimizer writes them, and that a training run with them
// is bit for bit the run that casts every weight at every forward.
#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <torch/nn/modules/linear.h>

#include "core/distributed/data_parallel.h"
#include "core/model/bf16_weights.h"
#include "core/model/linear_cpu.h"
#include "core/training/adamw_cpu.h"
#include "core/training/fused_adamw.h"
#include "core/training/optim.h"
#include "core/training/precision.h"
#include "core/util/cpu_gemm.h"
#include "forge/nn.h"

using namespace forge;

namespace {

// Forgets the process-wide copies around each test.
struct Fresh {
  Fresh() { bf16_weights::clear(); }
  ~Fresh() { bf16_weights::clear(); }
};

}  // namespace

TEST_CASE("packed bf16 weights: a cast of each, kept only for registered weights, cast again when one changes",
          "[bf16_weights]") {
  Fresh fresh;
  at::manual_seed(31);
  const at::Tensor a = at::randn({6, 8}).requires_grad_(true), b = at::randn({3, 8}).requires_grad_(true);
  const at::Tensor want = at::cat({a, b}).to(at::kBFloat16);
  // Unregistered: a fresh cast at every call.
  const at::Tensor first = bf16_weights::packed({a, b});
  CHECK(first.scalar_type() == at::kBFloat16);
  CHECK(at::equal(first, want));
  CHECK(bf16_weights::packed({a, b}).data_ptr() != first.data_ptr());
  CHECK_FALSE(bf16_weights::copy_of(a).defined());  // registers a; nothing kept yet
  CHECK(bf16_weights::packed({a, b}).data_ptr() != first.data_ptr());  // b is not registered
  bf16_weights::copy_of(b);
  // Both registered: one matrix, kept while neither changes.
  const at::Tensor kept = bf16_weights::packed({a, b});
  CHECK(at::equal(kept, want));
  CHECK(bf16_weights::packed({a, b}).data_ptr() == kept.data_ptr());
  const at::Tensor rows_b = bf16_weights::copy_of(b);
  REQUIRE(rows_b.defined());
  CHECK(rows_b.sizes() == b.sizes());
  CHECK(rows_b.data_ptr() == kept.narrow(0, 6, 3).data_ptr());
  // An in-place change (a checkpoint load, an edit) bumps the weight's version: the next call casts it again.
  {
    at::NoGradGuard no_grad;
    b.mul_(2);
  }
  const at::Tensor again = bf16_weights::packed({a, b});
  CHECK(again.data_ptr() == kept.data_ptr());
  CHECK(at::equal(again, at::cat({a, b}).to(at::kBFloat16)));
  CHECK_FALSE(again.requires_grad());  // a cast of values, with no autograd history
  // New storage for a weight (set_data keeps its version): cast again too.
  a.set_data(at::randn({6, 8}));
  CHECK(at::equal(bf16_weights::packed({a, b}), at::cat({a, b}).to(at::kBFloat16)));
  // A weight that no longer exists takes its matrix with it: a new weight is packed afresh.
  {
    at::Tensor c = at::randn({2, 8}).requires_grad_(true);
    bf16_weights::copy_of(c);
    CHECK(at::equal(bf16_weights::packed({c}), c.to(at::kBFloat16)));
  }
  at::Tensor d = at::randn({2, 8}).requires_grad_(true);
  bf16_weights::copy_of(d);
  CHECK(at::equal(bf16_weights::packed({d}), d.to(at::kBFloat16)));
}

TEST_CASE("FusedAdamW writes the kept bf16 copy of each weight it updates", "[bf16_weights][adamw]") {
  Fresh fresh;
  at::manual_seed(32);
  at::Tensor w = at::randn({40, 24}).requires_grad_(true), v = at::randn({8, 24}).requires_grad_(true);
  ParamGroups g;
  g.decay = {{"w", w}, {"v", v}};
  OptimizerConfig cfg;
  cfg.lr = 1e-2;
  auto opt = make_adamw(g, cfg);
  for (int step = 0; step < 3; ++step) {
    const at::Tensor kept = bf16_weights::packed({w, v});  // from the second step on, the registered copies
    w.mutable_grad() = at::randn(w.sizes());
    v.mutable_grad() = at::randn(v.sizes());
    optimizer_step(*opt, 0.5);
    INFO("step " << step);
    // Written in the update's pass (forge's kernel): the matrix read before the step holds the new weights.
    if (step > 0 && adamw_cpu::available()) CHECK(at::equal(kept, at::cat({w, v}).to(at::kBFloat16)));
    CHECK(at::equal(bf16_weights::packed({w, v}), at::cat({w, v}).to(at::kBFloat16)));
  }
}

namespace {

// Two linears packed into one product, then a third: the shapes of a decoder's q|k|v and o projections.
struct Net {
  torch::nn::Linear a{32, 48}, b{32, 16}, c{64, 8};
  ParamGroups groups() const {
    ParamGroups g;
    g.decay = {{"a", a->weight}, {"b", b->weight}, {"c", c->weight}};
    g.no_decay = {{"a.bias", a->bias}, {"b.bias", b->bias}, {"c.bias", c->bias}};
    return g;
  }
  at::Tensor loss(const at::Tensor& x) const {
    Precision bf16;
    bf16.bf16 = true;
    AutocastScope autocast(bf16);
    const at::Tensor h = at::relu(nn::packed_linear(x, {a.get(), b.get()}));
    return nn::packed_linear(h, {c.get()}).to(at::kFloat).pow(2).mean();
  }
};

std::vector<at::Tensor> train(bool cast_every_forward, const std::vector<at::Tensor>& init) {
  bf16_weights::clear();
  Net net;
  {
    at::NoGradGuard no_grad;
    const ParamGroups g = net.groups();
    const auto all = g.all();
    for (size_t i = 0; i < all.size(); ++i) all[i].copy_(init[i]);
  }
  const ParamGroups g = net.groups();
  OptimizerConfig cfg;
  cfg.lr = 1e-2;
  auto opt = make_adamw(g, cfg);
  auto dist = Distributed::from_env(DistributedConfig{}, at::Device(at::kCPU));
  DataParallel dp(DistributedConfig{}, *dist);
  at::manual_seed(34);
  for (int step = 0; step < 4; ++step) {
    if (cast_every_forward) bf16_weights::clear();
    opt->zero_grad(true);
    net.loss(at::randn({4, 10, 32})).backward();
    const GradClip clip = dp.grad_clip(g, 0.05);
    optimizer_step(*opt, clip.scale);
  }
  std::vector<at::Tensor> out;
  for (const auto& p : g.all()) out.push_back(p.detach().clone());
  return out;
}

}  // namespace

TEST_CASE("a bf16 run with kept weight copies is the run that casts every weight at every forward, bit for bit",
          "[bf16_weights][adamw]") {
  if (!cpu_gemm::available()) {
    WARN("no MKL bf16 GEMM on this CPU: its linears keep autocast's casts and no copies");
    return;
  }
  Fresh fresh;
  at::manual_seed(33);
  const Net init_net;
  std::vector<at::Tensor> init;
  for (const auto& p : init_net.groups().all()) init.push_back(p.detach().clone());
  const auto kept = train(false, init), cast = train(true, init);
  for (size_t i = 0; i < init.size(); ++i) {
    INFO("parameter " << i);
    CHECK_FALSE(at::equal(kept[i], init[i]));
    CHECK(at::equal(kept[i], cast[i]));
  }
}

TEST_CASE("a backward that saved a weight copy the optimizer has since rewritten refuses to run",
          "[bf16_weights][adamw]") {
  if (!cpu_gemm::available() || !adamw_cpu::available()) {
    WARN("this CPU keeps no weight copies (no MKL bf16 GEMM or no AVX-512)");
    return;
  }
  Fresh fresh;
  at::manual_seed(35);
  Net net;
  const ParamGroups g = net.groups();
  OptimizerConfig cfg;
  auto opt = make_adamw(g, cfg);
  net.loss(at::randn({2, 3, 32})).backward();
  optimizer_step(*opt, 1.0);  // registers the weights
  at::Tensor loss = net.loss(at::randn({2, 3, 32}));  // saves the kept copies for its backward
  optimizer_step(*opt, 1.0);                          // rewrites them
  CHECK_THROWS_WITH(loss.backward(), Catch::Contains("modified by an inplace operation"));
}
