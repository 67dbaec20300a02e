// Gradient clipping: the global norm from squares summed in double
// (core/util/sum_squares.h), checked against ATen's float64 sums, the same
// bits on any thread count; and the factor that LibTorch's clip_grad_norm_
// computes from that norm, with or without clipping, and with a NaN gradient.
#include <catch2/catch.hpp>

#include <torch/nn/utils/clip_grad.h>

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "core/distributed/data_parallel.h"
#include "core/util/sum_squares.h"
#include "forge/error.h"
#include "tests/unit/threads.h"

using namespace forge;

using forge::test::Threads;

namespace {

// The oracle: ATen's sum of the float64 squares.
double float64_sum_of_squares(const std::vector<at::Tensor>& xs) {
  double s = 0;
  for (const auto& x : xs) s += x.to(at::kDouble).square().sum().item<double>();
  return s;
}

}  // namespace

TEST_CASE("sum_of_squares is the float64 sum of squares and the same bits on any thread count", "[clip]") {
  at::manual_seed(5);
  std::vector<at::Tensor> xs;
  // Four whole blocks of bf16 and of fp64 (each summed four at a time), then sizes around the 32-value lanes
  // and the 2^16-value blocks, empty and scalar tensors, and fp32 over many blocks.
  xs.push_back(at::randn({4 << 16}).to(at::kBFloat16));
  xs.push_back(at::randn({4 << 16}, at::kDouble) * 1e-3);
  for (int64_t n : {0, 1, 31, 32, 33, 65535, 65536, 65537, 300001}) xs.push_back(at::randn({n}) * 3);
  xs.push_back(at::randn({}));
  xs.push_back(at::randn({513, 257}).to(at::kBFloat16));
  xs.push_back(at::randn({300, 700}).t());  // strided
  xs.push_back(at::randn({999}).to(at::kHalf));
  xs.push_back(at::randn({77}, at::kDouble) * 1e-3);
  const double want = float64_sum_of_squares(xs);
  double one_thread = 0;
  for (int threads : {1, 2, 3}) {
    Threads t(threads);
    const double got = cpu_norm::sum_of_squares(xs);
    INFO(threads << " threads: " << got << " against " << want);
    CHECK(std::abs(got - want) <= want * 1e-13);  // both sum in double, in different orders
    if (threads == 1)
      one_thread = got;
    else
      CHECK(got == one_thread);
  }
  SECTION("each tensor on its own, and none") {
    for (const auto& x : xs) {
      const double w = float64_sum_of_squares({x});
      CHECK(std::abs(cpu_norm::sum_of_squares({x}) - w) <= w * 1e-13);
    }
    CHECK(cpu_norm::sum_of_squares({}) == 0.0);
  }
  SECTION("a value ATen's fp32 norm drifts from") {
    // 2^22 values of about 1: one fp32 running sum loses about 1e-4 of it; the double sum keeps all but 1e-15.
    const at::Tensor x = at::randn({int64_t{1} << 22}) + 1;
    const double w = float64_sum_of_squares({x});
    CHECK(std::abs(cpu_norm::sum_of_squares({x}) - w) <= w * 1e-14);
  }
  SECTION("NaN and inf") {
    at::Tensor x = at::randn({100000});
    x[70000] = std::numeric_limits<float>::infinity();
    CHECK(std::isinf(cpu_norm::sum_of_squares({x})));
    x[3] = NAN;
    CHECK(std::isnan(cpu_norm::sum_of_squares({x})));
    at::Tensor b = at::randn({40}).to(at::kBFloat16);
    b[39] = NAN;  // in the tail past the last whole lane group
    CHECK(std::isnan(cpu_norm::sum_of_squares({at::randn({10}), b})));
  }
  SECTION("a tensor off the CPU, sparse, complex or of integers is refused") {
    CHECK_THROWS_AS(cpu_norm::sum_of_squares({at::empty({3}, at::device(at::kMeta))}), InvalidArgument);
    CHECK_THROWS_AS(cpu_norm::sum_of_squares({at::randn({4, 4}).to_sparse()}), InvalidArgument);
    CHECK_THROWS_AS(cpu_norm::sum_of_squares({at::randn({4}, at::kComplexFloat)}), InvalidArgument);
    CHECK_THROWS_AS(cpu_norm::sum_of_squares({at::ones({4}, at::kLong)}), InvalidArgument);
    CHECK_FALSE(cpu_norm::sums(at::randn({4, 4}).to_sparse()));
    CHECK(cpu_norm::sums(at::randn({4, 4}).t()));
  }
}

TEST_CASE("clipping a replicated run's gradients: the float64 global norm and clip_grad_norm_'s factor",
          "[optim][clip]") {
  Threads two(2);
  auto dist = Distributed::from_env(DistributedConfig{}, at::Device(at::kCPU));
  REQUIRE(dist->world() == 1);
  DataParallel dp(DistributedConfig{}, *dist);
  at::manual_seed(9);
  for (double max_norm : {0.5, 1e6}) {  // clipped, and a factor of exactly 1
    for (bool nan : {false, true}) {
      DYNAMIC_SECTION("max_norm " << max_norm << (nan ? " with a NaN gradient" : "")) {
        ParamGroups groups;
        std::vector<at::Tensor> ref, grads;
        // Small and large gradients (past the sum's 2^16-value blocks), fp32 and bf16.
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
        for (const auto& q : ref) grads.push_back(q.grad().clone());
        const double libtorch = torch::nn::utils::clip_grad_norm_(ref, max_norm);
        const GradClip clip = dp.grad_clip(groups, max_norm);
        CHECK_FALSE(no_grad.grad().defined());
        if (nan) {
          CHECK(std::isnan(clip.norm));
          CHECK(clip.scale == 1.0);  // the caller skips a step whose norm is not finite
        } else {
          const double want = std::sqrt(float64_sum_of_squares(grads));
          CHECK(std::abs(clip.norm - want) <= want * 1e-13);
          // LibTorch's norm, within the drift of its one fp32 running sum per gradient (6e-5 here: its
          // 280000-value sum is 1.2e-4 off the float64 one)
          CHECK(std::abs(clip.norm - libtorch) <= want * 2e-4);
          const double factor = static_cast<float>(max_norm / (clip.norm + 1e-6));
          CHECK(clip.scale == (factor < 1 ? factor : 1.0));
          // Applied as the optimizer step applies it: each gradient times the fp32 factor, as clip_grad_norm_
          // multiplies.
          scale_gradients(groups.all(), clip.scale);
          std::vector<at::Tensor> with_grad;
          for (const auto& p : groups.all())
            if (p.grad().defined()) with_grad.push_back(p);
          REQUIRE(with_grad.size() == grads.size());
          for (size_t i = 0; i < grads.size(); ++i) {
            INFO("parameter " << i);
            CHECK(at::equal(with_grad[i].grad(), grads[i].mul(at::scalar_tensor(clip.scale, at::kFloat))));
          }
          if (max_norm < 1) {
            std::vector<at::Tensor> clipped;
            for (const auto& p : with_grad) clipped.push_back(p.grad());
            // max_norm, up to the bf16 gradient's rounding of its clipped values (2^-9 relative each)
            CHECK(std::abs(std::sqrt(float64_sum_of_squares(clipped)) - max_norm) < max_norm * 2e-3);
          }
        }
      }
    }
  }
}
