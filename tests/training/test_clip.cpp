// Gradient clipping of a replicated run: LibTorch's clip_grad_norm_, bit for
// bit, with or without clipping, and with a non-finite norm, on 2 threads (its
// norms are spread over them); and the helper that spreads them.
#include <catch2/catch.hpp>

#include <torch/nn/utils/clip_grad.h>

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <mutex>
#include <set>
#include <thread>

#include <fmt/format.h>

#include "core/distributed/data_parallel.h"
#include "core/util/parallel.h"
#include "tests/unit/threads.h"

using namespace forge;

using forge::test::Threads;

TEST_CASE("clipping a replicated run's gradients is LibTorch's clip_grad_norm_, bit for bit", "[optim][clip]") {
  Threads two(2);
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
        const GradClip clip = dp.grad_clip(groups, max_norm);  // then applied as the optimizer step applies it
        scale_gradients(groups.all(), clip.scale);
        const double got = clip.norm;
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

TEST_CASE("for_each_by_size runs every item once, over the threads, under the caller's thread-local state",
          "[clip]") {
  Threads two(2);
  const std::vector<int64_t> sizes{5, 900, 3, 40, 700, 8, 1};
  std::vector<int> runs(sizes.size(), 0);
  std::set<std::thread::id> ids;
  std::mutex m;
  bool grad_mode_seen = false;
  {
    at::NoGradGuard no_grad;
    cpu_parallel::for_each_by_size(sizes, [&](size_t i) {
      std::lock_guard<std::mutex> lock(m);
      ++runs[i];
      ids.insert(std::this_thread::get_id());
      grad_mode_seen = grad_mode_seen || at::GradMode::is_enabled();
    });
  }
  CHECK(runs == std::vector<int>(sizes.size(), 1));
  CHECK_FALSE(grad_mode_seen);  // the caller's NoGradGuard held on every thread
#if defined(__GNUC__) && !defined(__clang__)
  CHECK(ids.size() == 2);  // GCC builds compile it with OpenMP: both threads took items
#endif
  std::vector<size_t> order;
  Threads one(1);  // on one thread: in index order, on the caller's
  cpu_parallel::for_each_by_size(sizes, [&](size_t i) { order.push_back(i); });
  CHECK(order == std::vector<size_t>{0, 1, 2, 3, 4, 5, 6});
}
