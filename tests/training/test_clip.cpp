// Gradient clipping of a replicated run: LibTorch's clip_grad_norm_, bit for
// bit, with or without clipping, and with a non-finite norm.
#include <catch2/catch.hpp>

#include <torch/nn/utils/clip_grad.h>

#include <cmath>

#include <fmt/format.h>

#include "core/distributed/data_parallel.h"

using namespace forge;

TEST_CASE("clipping a replicated run's gradients is LibTorch's clip_grad_norm_, bit for bit", "[optim][clip]") {
  auto dist = Distributed::from_env(DistributedConfig{}, at::Device(at::kCPU));
  REQUIRE(dist->world() == 1);
  DataParallel dp(DistributedConfig{}, *dist);
  at::manual_seed(9);
  for (double max_norm : {0.5, 1e6}) {  // clipped, and a factor of exactly 1
    for (bool nan : {false, true}) {
      DYNAMIC_SECTION("max_norm " << max_norm << (nan ? " with a NaN gradient" : "")) {
        ParamGroups groups;
        std::vector<at::Tensor> ref;
        // Small and large gradients (the large ones past ATen's parallel grain), fp32 and bf16.
        const std::vector<std::pair<std::vector<int64_t>, at::ScalarType>> shapes{
            {{7, 5}, at::kFloat}, {{8, 5}, at::kFloat}, {{9, 5}, at::kFloat}, {{700, 400}, at::kFloat},
            {{300, 500}, at::kFloat}, {{400, 300}, at::kBFloat16}};
        for (size_t i = 0; i < shapes.size(); ++i) {
          const auto& [shape, dtype] = shapes[i];
          at::Tensor p = at::randn(shape, dtype).requires_grad_(true);
          p.mutable_grad() = (at::randn(shape) * 0.3).to(dtype);
          at::Tensor q = p.detach().clone().requires_grad_(true);
          q.mutable_grad() = p.grad().clone();
          groups.decay.emplace_back(fmt::format("p{}", i), p);  // in all()'s order, as the reference reads them
          ref.push_back(q);
        }
        at::Tensor no_grad = at::randn({3}).requires_grad_(true);  // skipped, as LibTorch skips it
        groups.no_decay.emplace_back("no_grad", no_grad);
        if (nan) groups.decay[0].second.mutable_grad()[0][0] = NAN, ref[0].mutable_grad()[0][0] = NAN;
        const std::vector<at::Tensor> ours = groups.all();
        const double want = torch::nn::utils::clip_grad_norm_(ref, max_norm);
        const double got = dp.clip_grad_norm(groups, max_norm);
        CHECK((std::isnan(want) ? std::isnan(got) : got == want));
        CHECK_FALSE(no_grad.grad().defined());
        std::vector<at::Tensor> with_grad;
        for (const auto& p : ours)
          if (p.grad().defined()) with_grad.push_back(p);
        REQUIRE(with_grad.size() == ref.size());
        for (size_t i = 0; i < ref.size(); ++i) {
          INFO("parameter " << i);
          CHECK(at::equal(with_grad[i].grad().isnan(), ref[i].grad().isnan()));
          CHECK(at::equal(with_grad[i].grad().nan_to_num(0), ref[i].grad().nan_to_num(0)));
        }
        if (max_norm < 1 && !nan) {
          std::vector<at::Tensor> norms;
          for (const auto& p : with_grad) norms.push_back(p.grad().norm().to(at::kFloat));
          // max_norm, up to the bf16 gradient's rounding of its clipped values (2^-9 relative each)
          CHECK(std::abs(at::stack(norms).norm().item<double>() - max_norm) < max_norm * 2e-3);
        }
      }
    }
  }
}
