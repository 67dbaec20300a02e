// forge's AdamW: the optimizer (FusedAdamW) against LibTorch's AdamW, and its
// one-pass CPU kernel against ATen's fused one, bit for bit, with the clip's
// factor applied as the clip applies it.
#include <catch2/catch.hpp>

#include <torch/nn/utils/clip_grad.h>

#include <ATen/ATen.h>
#include <ATen/ops/_fused_adamw.h>

#include <fmt/format.h>

#include "core/distributed/data_parallel.h"
#include "core/training/adamw_cpu.h"
#include "core/training/fused_adamw.h"
#include "core/training/optim.h"
#include "tests/unit/threads.h"

using namespace forge;
using forge::test::Threads;

TEST_CASE("the fused AdamW makes LibTorch's AdamW updates and keeps its state layout", "[optim]") {
  at::manual_seed(11);
  // Odd sizes (vector body and scalar tail of the kernel), two groups (with and without decay).
  std::vector<at::Tensor> init{at::randn({37, 19}), at::randn({129}), at::randn({5, 3, 7})};
  auto groups_of = [&](std::vector<at::Tensor>& ps) {
    ParamGroups g;
    g.decay = {{"a", ps[0]}, {"c", ps[2]}};
    g.no_decay = {{"b", ps[1]}};
    return g;
  };
  std::vector<at::Tensor> p1, p2;
  for (const auto& t : init) {
    p1.push_back(t.clone().requires_grad_(true));
    p2.push_back(t.clone().requires_grad_(true));
  }
  const ParamGroups g1 = groups_of(p1), g2 = groups_of(p2);
  OptimizerConfig cfg;
  cfg.lr = 1e-2;
  cfg.weight_decay = 0.1;
  cfg.fused = false;
  auto plain = make_adamw(g1, cfg);
  cfg.fused = true;
  auto fused = make_adamw(g2, cfg);
  CHECK(dynamic_cast<FusedAdamW*>(fused.get()) != nullptr);
  CHECK(dynamic_cast<FusedAdamW*>(plain.get()) == nullptr);
  for (int step = 0; step < 6; ++step) {
    set_lr(*plain, cfg.lr * (step + 1) / 6.0);
    set_lr(*fused, cfg.lr * (step + 1) / 6.0);
    for (size_t i = 0; i < init.size(); ++i) {
      if (step == 2 && i == 1) continue;  // a parameter without a gradient this step is skipped by both
      at::Tensor g = at::randn(init[i].sizes());
      p1[i].mutable_grad() = g.clone();
      p2[i].mutable_grad() = g.clone();
    }
    plain->step();
    fused->step();
    for (auto* ps : {&p1, &p2})
      for (auto& p : *ps) p.mutable_grad().reset();
  }
  for (size_t i = 0; i < init.size(); ++i) {
    INFO("parameter " << i);
    CHECK(at::allclose(p1[i], p2[i], 1e-6, 1e-7));
    CHECK_FALSE(at::equal(p1[i], init[i]));
  }
  const auto s1 = optimizer_state(*plain, g1), s2 = optimizer_state(*fused, g2);
  REQUIRE(s1.size() == s2.size());
  for (size_t k = 0; k < s1.size(); ++k) {
    INFO(s1[k].first);
    CHECK(s1[k].first == s2[k].first);
    CHECK(s1[k].second.scalar_type() == s2[k].second.scalar_type());
    CHECK(at::allclose(s1[k].second.to(at::kDouble), s2[k].second.to(at::kDouble), 1e-5, 1e-7));  // lerp vs mul+add: ulps
  }
  CHECK(s2.back().first == "b.step");
  CHECK(s2.back().second.item<int64_t>() == 5);  // skipped once
}

TEST_CASE("an optimizer step with the clip's factor is the clip's multiply then the step, bit for bit", "[adamw]") {
  auto dist = Distributed::from_env(DistributedConfig{}, at::Device(at::kCPU));
  DataParallel dp(DistributedConfig{}, *dist);
  at::manual_seed(23);
  // fp32 matrices and a long vector (forge's one-pass kernel where the CPU has it), and a bf16 vector (ATen's).
  const std::vector<at::Tensor> init{at::randn({37, 19}), at::randn({40000}), at::randn({64}).to(at::kBFloat16)};
  for (bool fused : {true, false}) {
    for (double max_norm : {0.5, 1e6}) {  // clipped, and a factor of 1
      DYNAMIC_SECTION((fused ? "FusedAdamW" : "LibTorch's AdamW") << " max_norm " << max_norm) {
        std::vector<at::Tensor> ours, ref;
        ParamGroups g_ours, g_ref;
        for (size_t i = 0; i < init.size(); ++i) {
          ours.push_back(init[i].clone().requires_grad_(true));
          ref.push_back(init[i].clone().requires_grad_(true));
          g_ours.decay.emplace_back(fmt::format("p{}", i), ours.back());
          g_ref.decay.emplace_back(fmt::format("p{}", i), ref.back());
        }
        OptimizerConfig cfg;
        cfg.lr = 1e-2;
        cfg.weight_decay = 0.1;
        cfg.fused = fused;
        auto opt_ours = make_adamw(g_ours, cfg), opt_ref = make_adamw(g_ref, cfg);
        for (int step = 0; step < 3; ++step) {
          for (size_t i = 0; i < init.size(); ++i) {
            const at::Tensor g = (at::randn(init[i].sizes()) * 0.05).to(init[i].scalar_type());
            ours[i].mutable_grad() = g.clone();
            ref[i].mutable_grad() = g.clone();
          }
          const GradClip clip = dp.grad_clip(g_ours, max_norm);
          std::vector<at::Tensor> copies;  // LibTorch's clip of copies, for its norm
          for (const auto& r : ref) {
            copies.push_back(r.detach().clone());
            copies.back().mutable_grad() = r.grad().clone();
          }
          const double libtorch = torch::nn::utils::clip_grad_norm_(copies, max_norm);
          CHECK(std::abs(clip.norm - libtorch) <= libtorch * 1e-5);  // LibTorch's fp32 norms, within their rounding
          CHECK((max_norm < 1 ? clip.scale < 1 : clip.scale == 1));
          optimizer_step(*opt_ours, clip.scale);
          // The reference: the clip's multiply by the same factor, as clip_grad_norm_ multiplies, then the step.
          scale_gradients(ref, clip.scale);
          opt_ref->step();
          for (size_t i = 0; i < init.size(); ++i) {
            INFO("step " << step << " parameter " << i);
            CHECK(at::equal(ours[i], ref[i]));
          }
        }
      }
    }
  }
}

TEST_CASE("forge's one-pass AdamW kernel is ATen's fused AdamW bit for bit and scales as the clip does", "[adamw]") {
  if (!adamw_cpu::available()) {
    WARN("this CPU has no AVX-512: FusedAdamW keeps ATen's kernel, which the optimizer test covers");
    return;
  }
  at::manual_seed(21);
  // Whole vectors, odd sizes (ATen's scalar tail) and one past the kernels' parallel grains.
  const std::vector<int64_t> sizes{5, 16, 17, 31, 47, 63, 100, 129, 257, 703, 735, 1000, 1020, 2049, 4096, 33333, 100003};
  struct Case {
    adamw_cpu::Hyper h;
    float scale;
  };
  const std::vector<Case> cases{{{1e-2, 0.9, 0.999, 0.1, 1e-8}, 1.0f},
                                {{3e-4, 0.9, 0.95, 0.0, 1e-6}, 0.37f},
                                {{1e-3, 0.3, 0.99, 0.05, 1e-8}, 0.8f}};  // 1 - beta1 >= 0.5: lerp's other form
  for (int threads : {1, 2, 3, 4}) {  // ATen's pieces, and so its scalar tails, move with the thread count
    Threads t(threads);
    for (size_t ci = 0; ci < cases.size(); ++ci) {
      const auto& [h, scale] = cases[ci];
      for (int64_t n : sizes) {
        DYNAMIC_SECTION(threads << " threads case " << ci << " size " << n) {
          at::Tensor p = at::randn({n}), m = at::zeros({n}), v = at::zeros({n});
          at::Tensor rp = p.clone(), rm = m.clone(), rv = v.clone();
          at::Tensor rstep = at::zeros({}, at::kFloat);
          for (int64_t step = 1; step <= 3; ++step) {
            const at::Tensor g = at::randn({n}) * 2;
            const at::Tensor g_before = g.clone();
            at::Tensor bf = at::empty({n}, at::kBFloat16);
            adamw_cpu::update({p.data_ptr<float>(), g.data_ptr<float>(), m.data_ptr<float>(), v.data_ptr<float>(),
                               bf.data_ptr<c10::BFloat16>(), n},
                              h, step, scale);
            // The reference: the clip's multiply (an fp32 tensor factor, as clip_grad_norm_ holds it), then ATen.
            at::Tensor rg = g_before.clone();
            if (scale != 1.0f) rg.mul_(at::scalar_tensor(scale, at::kFloat));
            rstep.add_(1);
            at::_fused_adamw_({rp}, {rg}, {rm}, {rv}, {}, {rstep}, h.lr, h.beta1, h.beta2, h.weight_decay, h.eps,
                              false, false);
            INFO("step " << step);
            CHECK(at::equal(p, rp));
            CHECK(at::equal(m, rm));
            CHECK(at::equal(v, rv));
            CHECK(at::equal(bf, p.to(at::kBFloat16)));  // the new weights, rounded as a cast rounds them
            CHECK(at::equal(g, g_before));              // the gradient is read, not scaled in place
          }
        }
      }
    }
  }
}
