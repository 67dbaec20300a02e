// SwiGLU's one-pass forward (core/model/silu_mul_cpu.h) against ATen's
// at::silu(gate) * up, bit for bit: widths around its vector steps, row
// counts whose thread splits fall mid-row, packed gate|up views, extreme
// values, on 1 to 4 threads.
#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <limits>

#include "core/model/fused_cpu.h"
#include "core/model/silu_mul_cpu.h"
#include "tests/unit/threads.h"

using namespace forge;
using forge::fused::silu_mul_exact;

using forge::test::Threads;

TEST_CASE("the one-pass SwiGLU forward is ATen's silu(gate) * up bit for bit", "[fused]") {
  at::manual_seed(41);
  const bool applies = fused::silu_mul_exact_available();
  if (!applies) WARN("no AVX-512 kernels in ATen or no Sleef here: the pass stands aside, and these check ATen's ops");
  for (int threads : {1, 2, 3, 4}) {
    Threads t(threads);
    for (at::ScalarType dt : {at::kBFloat16, at::kFloat}) {
      // (rows, width): widths around 16/32/64-value steps; 2048 x 1536 (the small recipe), 45 x 1000 and
      // 33 x 1999 (past ATen's grain, split mid-row).
      for (auto [rows, h] : std::vector<std::pair<int64_t, int64_t>>{
               {3, 1}, {5, 15}, {4, 31}, {4, 32}, {7, 63}, {7, 64}, {7, 65}, {9, 100}, {2048, 1536}, {45, 1000},
               {33, 1999}}) {
        DYNAMIC_SECTION(threads << " threads " << c10::toString(dt) << " " << rows << " x " << h) {
          // Values over silu's whole range: large of both signs, small, zeros.
          at::Tensor gu = (at::randn({rows, 2 * h}) * 4).to(dt);
          gu.view(-1).narrow(0, 0, std::min<int64_t>(6, gu.numel()))
              .copy_(at::tensor({0.0f, -0.0f, 90.0f, -90.0f, 1e-30f, -104.0f}).narrow(0, 0, std::min<int64_t>(6, gu.numel())));
          const at::Tensor g = gu.narrow(1, 0, h), u = gu.narrow(1, h, h);  // packed: rows of stride 2h
          const at::Tensor want = at::silu(g) * u;
          at::Tensor got = silu_mul_exact(g, u);
          CHECK(got.defined() == applies);
          if (got.defined()) CHECK(at::equal(got, want));
          const at::Tensor gc = g.contiguous(), uc = u.contiguous();  // separate, flat
          got = silu_mul_exact(gc, uc);
          CHECK(got.defined() == applies);
          if (got.defined()) CHECK(at::equal(got, at::silu(gc) * uc));
          CHECK(at::equal(fused::silu_mul_packed(gu), want));  // the op SwiGLU calls
        }
      }
    }
  }
  SECTION("it stands aside where it does not apply") {
    const at::Tensor a = at::randn({4, 8});
    CHECK_FALSE(silu_mul_exact(a.to(at::kDouble), a.to(at::kDouble)).defined());
    CHECK_FALSE(silu_mul_exact(a, a.to(at::kBFloat16)).defined());
    CHECK_FALSE(silu_mul_exact(a, at::randn({4, 9})).defined());
    CHECK_FALSE(silu_mul_exact(a.t(), a.t()).defined());               // columns, not rows
    CHECK_FALSE(silu_mul_exact(a, at::randn({4, 16}).narrow(1, 0, 8)).defined());  // flat gate, up in rows
  }
}
