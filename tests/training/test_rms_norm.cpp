// RMSNorm's one-pass forward (core/model/rms_norm_cpu.h) against ATen's ops,
// bit for bit: widths around its vector and group steps, lone and many rows,
// fp32 and bf16 inputs and weights, values of very different scales, on 1 to
// 3 threads. ctest also runs it under ATen's AVX2 kernels (8 lanes).
#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "core/model/fused_cpu.h"
#include "core/model/rms_norm_cpu.h"
#include "tests/unit/threads.h"

using namespace forge;
using forge::test::Threads;

namespace {

// forge's RMSNorm as ATen's ops compute it (HF transformers' LlamaRMSNorm).
at::Tensor aten_rms_norm(const at::Tensor& x, const at::Tensor& w, double eps, at::Tensor* rstd) {
  const at::Tensor xf = x.to(at::kFloat);
  *rstd = at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return (xf * *rstd * w.to(at::kFloat)).to(x.scalar_type());
}

}  // namespace

TEST_CASE("the one-pass RMSNorm forward is ATen's ops bit for bit", "[fused][rmsnorm]") {
  at::manual_seed(43);
  const std::string cap = at::get_cpu_capability();
  const bool applies = cap == "AVX512" || cap == "AVX2";
  INFO("ATen's kernels: " << cap);
  if (!applies) WARN("ATen runs neither AVX2 nor AVX-512 kernels: the pass stands aside, and these check ATen's ops");
  for (int threads : {1, 2, 3}) {
    Threads t(threads);
    for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
      // (rows, width): widths around ATen's 8-lane vectors and groups of four of them, head widths (64, 128),
      // model widths (512 x 2048 is the small recipe, 1536, 4096), rows through the cascade's levels of 16, 256
      // and 4096 groups (16640 values: 520 groups; 70001: 2187; 140000: 4375), and one lone long row.
      for (auto [rows, n] : std::vector<std::pair<int64_t, int64_t>>{
               {3, 16}, {5, 17}, {4, 31}, {4, 63}, {7, 64}, {7, 65}, {9, 100}, {33, 128}, {2048, 512}, {45, 1000},
               {6, 1536}, {5, 4096}, {3, 16640}, {1, 20000}, {2, 70001}, {2, 140000}}) {
        DYNAMIC_SECTION(threads << " threads " << c10::toString(dt) << " " << rows << " x " << n) {
          // Rows of very different scales, so that the sums' rounding differs with their order.
          at::Tensor x = (at::randn({rows, n}) * at::exp(at::randn({rows, 1}) * 4)).to(dt);
          for (at::ScalarType wt : {at::kFloat, at::kBFloat16}) {
            const at::Tensor w = (at::randn({n}) + 1).to(wt);
            for (double eps : {1e-6, 1e-5}) {
              at::Tensor want_rstd, got_rstd;
              const at::Tensor want = aten_rms_norm(x, w, eps, &want_rstd);
              const at::Tensor got = fused::rms_norm_exact(x, w, eps, &got_rstd);
              INFO("weight " << c10::toString(wt) << " eps " << eps);
              REQUIRE(got.defined() == applies);
              if (!applies) continue;
              CHECK(got.scalar_type() == dt);
              CHECK(got.sizes() == x.sizes());
              CHECK(at::equal(got, want));
              CHECK(at::equal(got_rstd, want_rstd));
              // And through forge's RMSNorm, with and without autograd.
              CHECK(at::equal(fused::rms_norm(x, w, eps), want));
              const at::Tensor xg = x.detach().requires_grad_(true);
              CHECK(at::equal(fused::rms_norm(xg, w, eps).detach(), want));
            }
          }
        }
      }
    }
  }
}

TEST_CASE("the one-pass RMSNorm forward stands aside where it does not follow ATen", "[fused][rmsnorm]") {
  const at::Tensor w = at::ones({32});
  CHECK_FALSE(fused::rms_norm_exact(at::randn({4, 64}).t(), at::ones({4}), 1e-6, nullptr).defined());  // strided
  CHECK_FALSE(fused::rms_norm_exact(at::randn({4, 32}).to(at::kHalf), w, 1e-6, nullptr).defined());
  CHECK_FALSE(fused::rms_norm_exact(at::randn({4, 32}, at::kDouble), w, 1e-6, nullptr).defined());
  CHECK_FALSE(fused::rms_norm_exact(at::randn({4, 7}), at::ones({7}), 1e-6, nullptr).defined());  // under a vector
  CHECK_FALSE(fused::rms_norm_exact(at::randn({4, 32}), at::ones({31}), 1e-6, nullptr).defined());
  CHECK_FALSE(fused::rms_norm_exact(at::randn({4, 32}), at::ones({32}, at::kDouble), 1e-6, nullptr).defined());
  {
    Threads two(2);  // a lone row past ATen's grain, which ATen would sum over both threads
    CHECK_FALSE(fused::rms_norm_exact(at::randn({1, 40000}), at::ones({40000}), 1e-6, nullptr).defined());
  }
  // forge's RMSNorm then runs ATen's ops: the same values.
  const at::Tensor x = at::randn({4, 7});
  at::Tensor r;
  CHECK(at::equal(fused::rms_norm(x, at::ones({7}), 1e-6), aten_rms_norm(x, at::ones({7}), 1e-6, &r)));
}
