// forge's fast paths and their numerics: bf16 on CPUs (D5: bf16 compute over
// fp32 masters) against fp32, the fused AdamW against LibTorch's, the CPU
// loops (RMSNorm, SwiGLU, RoPE, attention's backward, the loss) against ATen
// and fp64, the packed projections under autocast, and
// forge bench's smoke run (CI runs the harness on the tiny shape; no timing
// is asserted).
#include <catch2/catch.hpp>

#include <cmath>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/config/loader.h"
#include "core/model/attention_cpu.h"
#include "core/util/cpu_gemm.h"
#include "core/model/fused_cpu.h"
#include "core/model/vlm.h"
#include "core/training/loss.h"
#include "core/training/optim.h"
#include "core/training/precision.h"
#include "core/util/cpu_vec.h"
#include "core/util/row_max.h"
#include "tests/unit/autograd_helpers.h"
#include "tests/unit/tensor_compare.h"
#include "tests/unit/test_helpers.h"
#include "tests/unit/threads.h"

using namespace forge;
using forge::test::builtin_registry;
using forge::test::TempDir;
using forge::test::rel_err;

namespace {

struct Pass {
  at::Tensor logits;
  double loss = 0;
  at::Tensor grad;  // every parameter's gradient, flattened and joined
};

Pass forward_backward(VLMImpl& model, const at::Tensor& px, const at::Tensor& ids, const Precision& p) {
  model.zero_grad();
  Pass out;
  LossValue lv;
  {
    AutocastScope autocast(p);
    VLMOutput o = model.forward(px, ids, ids);
    out.logits = o.logits;
    lv = cross_entropy(o.logits, o.targets);
  }
  lv.loss.backward();
  out.loss = lv.loss.item<double>();
  std::vector<at::Tensor> gs;
  for (const auto& param : model.parameters())
    if (param.grad().defined()) gs.push_back(param.grad().flatten());
  out.grad = at::cat(gs);
  return out;
}

}  // namespace

TEST_CASE("mixed_precision = bf16 means bf16 compute on CUDA and on CPUs with bf16 matrix units", "[precision]") {
  const Precision cpu = resolve_precision("bf16", at::Device(at::kCPU));
  CHECK(cpu.bf16 == !cpu_bf16_isa().empty());
  CHECK_THAT(cpu.reason, Catch::Contains(cpu.bf16 ? cpu_bf16_isa() : "computing in fp32"));
  CHECK(resolve_precision("bf16", at::Device(at::kCUDA)).bf16);
  CHECK_FALSE(resolve_precision("fp32", at::Device(at::kCPU)).bf16);
  CHECK_FALSE(resolve_precision("fp32", at::Device(at::kCUDA)).bf16);
  CHECK(resolve_precision("fp32", at::Device(at::kCPU)).describe() == "fp32");
}

TEST_CASE("bf16 autocast on a CPU stays within bf16's error of fp32, for every arch, over fp32 masters",
          "[precision]") {
  Precision bf16;
  bf16.bf16 = true;  // whatever this CPU has: the numerics are the same, only slower without AMX
  for (const std::string arch : {"joint_decoder", "cross_attention", "mot"}) {
    DYNAMIC_SECTION(arch) {
      std::string toml = forge::test::tiny_vlm_toml(arch);
      toml.replace(toml.find("dim = 32"), 8, "dim = 64");
      LoadedConfig cfg = load_config_text(toml, "t.toml", builtin_registry());
      VLM model = build_vlm(cfg.job, builtin_registry());
      model->train();
      at::manual_seed(3);
      at::Tensor px = at::rand({4, 3, 16, 16});
      at::Tensor ids = at::randint(0, 64, {4, 12});
      const Pass ref = forward_backward(*model, px, ids, Precision{});
      const Pass low = forward_backward(*model, px, ids, bf16);
      CHECK(ref.logits.scalar_type() == at::kFloat);
      CHECK(low.logits.scalar_type() == at::kBFloat16);  // the bf16 path really ran
      for (const auto& p : model->parameters()) CHECK(p.scalar_type() == at::kFloat);  // masters stay fp32
      CHECK(low.grad.scalar_type() == at::kFloat);
      // bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2 %): a few of those, not more.
      CHECK(rel_err(low.logits, ref.logits) < 0.02);
      CHECK(std::abs(low.loss - ref.loss) / ref.loss < 0.005);
      CHECK(rel_err(low.grad, ref.grad) < 0.05);
      CHECK(rel_err(low.logits, ref.logits) > 0);  // and it is not fp32 in disguise
    }
  }
}

TEST_CASE("forge bench times the tiny shape for every arch and writes its result", "[precision][bench]") {
  TempDir d;
  for (const std::string arch : {"joint_decoder", "cross_attention", "mot"}) {
    const std::string out = d.str() + "/" + arch + ".json";
    auto r = forge::test::run(std::string(FORGE_BIN) + " bench " FORGE_SOURCE_DIR "/configs/bench/tiny.toml --steps 2 "
                              "--warmup 1 --out " + out + " --vlm.arch=" + arch + " --train.device=cpu");
    INFO(r.output);
    REQUIRE(r.code == 0);
    std::ifstream f(out);
    const auto j = nlohmann::json::parse(f);
    CHECK(j["arch"] == arch);
    CHECK(j["timed_steps"] == 2);
    CHECK(j["step_times_s"].size() == 2);
    CHECK(j["step_time_median_s"].get<double>() > 0);
    CHECK(j["step_time_p90_s"].get<double>() >= j["step_time_median_s"].get<double>());
    CHECK(j["flops_per_step"].get<double>() > 0);
    CHECK(j["gemm_flops_per_s"].get<double>() > 0);
    CHECK(j["mfu"].get<double>() > 0);
    CHECK(j["peak_memory_bytes"].get<double>() > 0);
    CHECK(j["precision"] == (cpu_bf16_isa().empty() ? "fp32" : "bf16"));
    CHECK(std::isfinite(j["last_loss"].get<double>()));
    CHECK(j["versions"]["torch"].get<std::string>().rfind("2.", 0) == 0);
    CHECK_THAT(r.output, Catch::Contains("MFU") && Catch::Contains("GEMM rate"));
  }
  auto data = forge::test::run(std::string(FORGE_BIN) + " bench --data-only " FORGE_SOURCE_DIR
                               "/configs/bench/tiny.toml --steps 3 --warmup 1 --out " + d.str() + "/data.json");
  INFO(data.output);
  REQUIRE(data.code == 0);
  std::ifstream f(d.str() + "/data.json");
  CHECK(nlohmann::json::parse(f)["samples_per_s"].get<double>() > 0);
  auto bad = forge::test::run(std::string(FORGE_BIN) + " bench " FORGE_SOURCE_DIR
                              "/configs/bench/tiny.toml --model.dim=-3");
  CHECK(bad.code == 2);
  CHECK_THAT(bad.output, Catch::Contains("model.dim"));
  for (const char* targets : {"0", "1.5", "abc"}) {  // --targets: a fraction in (0, 1]
    auto r = forge::test::run(std::string(FORGE_BIN) + " bench " FORGE_SOURCE_DIR "/configs/bench/tiny.toml --targets " +
                              targets);
    INFO(r.output);
    CHECK(r.code == 2);
    CHECK_THAT(r.output, Catch::Contains(fmt::format("--targets: got {}; give a fraction above 0 and at most 1", targets)));
  }
}

TEST_CASE("linear_cross_entropy is the output head then cross_entropy, without the logits", "[loss]") {
  at::manual_seed(5);
  const int64_t B = 3, T = 7, D = 16, V = 1000;  // one chunk
  for (double z : {0.0, 1e-3}) {
    for (const char* which : {"some ignored", "all ignored"}) {
      DYNAMIC_SECTION("z " << z << ", " << which) {
        at::Tensor h0 = at::randn({B, T, D}), w0 = at::randn({V, D}) * 0.3;
        at::Tensor tgt = at::randint(0, V, {B, T});
        if (std::string(which) == "all ignored")
          tgt.fill_(-100);
        else
          tgt.index_put_({0, at::indexing::Slice(0, 3)}, -100);
        at::Tensor h1 = h0.clone().requires_grad_(true), w1 = w0.clone().requires_grad_(true);
        at::Tensor h2 = h0.clone().requires_grad_(true), w2 = w0.clone().requires_grad_(true);
        LossValue ref = cross_entropy(at::linear(h1, w1), tgt, z);
        LossValue got = linear_cross_entropy(h2, w2, tgt, z);
        (ref.loss * 0.5).backward();  // a scaled loss (grad accumulation) scales the gradients
        (got.loss * 0.5).backward();
        CHECK(got.tokens == ref.tokens);
        CHECK(got.loss.item<double>() == Approx(ref.loss.item<double>()).epsilon(1e-6).margin(1e-7));
        CHECK(at::allclose(h2.grad(), h1.grad(), 1e-4, 1e-7));
        CHECK(at::allclose(w2.grad(), w1.grad(), 1e-4, 1e-7));
        if (got.tokens == 0) {  // D10: zero loss and zero gradients, with a graph
          CHECK(got.loss.item<double>() == 0.0);
          CHECK(h2.grad().abs().max().item<double>() == 0.0);
        }
      }
    }
  }
  SECTION("an ignored row's inf and NaN logits reach neither the loss nor the gradients; a bad target is named") {
    at::Tensor w = at::randn({50, D}).requires_grad_(true);
    at::Tensor h0 = at::randn({1, 4, D});
    h0.index_put_({0, 1}, 3e38);  // row 1: finite features whose logits overflow to inf and NaN
    h0.index_put_({0, 1, 0}, -3e38);
    at::Tensor tgt = at::tensor({3, -100, 7, 49}, at::kLong).view({1, 4});
    at::Tensor h = h0.clone().requires_grad_(true);
    LossValue got = linear_cross_entropy(h, w, tgt);
    got.loss.backward();
    CHECK(got.tokens == 3);
    CHECK(std::isfinite(got.loss.item<double>()));
    CHECK(h.grad()[0][1].abs().max().item<double>() == 0.0);
    CHECK_FALSE(at::isfinite(at::linear(h0[0][1], w.detach())).all().item<bool>());  // the row's logits really overflow
    CHECK(at::isfinite(w.grad()).all().item<bool>());
    at::Tensor keep = at::tensor({0, 2, 3}, at::kLong);  // the same loss over the valid rows alone
    at::Tensor h2 = h0.index_select(1, keep).clone().requires_grad_(true);
    LossValue ref = cross_entropy(at::linear(h2, w.detach()), tgt.index_select(1, keep));
    CHECK(got.loss.item<double>() == Approx(ref.loss.item<double>()).epsilon(1e-6));
    at::Tensor bad = at::tensor({3, 50, 7, 1}, at::kLong).view({1, 4});
    CHECK_THROWS_WITH(linear_cross_entropy(h0, w, bad), Catch::Contains("target token id 50 is outside the vocabulary of 50"));
  }
  SECTION("ignored rows skip the head: scattered over chunks, with the caller's count checked") {
    const int64_t Vbig = 40000;  // fp32: 1677 rows per chunk, so the about 1890 counted rows still take 2
    at::Tensor h0 = at::randn({2, 1500, D}), w0 = at::randn({Vbig, D}) * 0.3;
    at::Tensor tgt = at::randint(0, Vbig, {2, 1500});
    at::Tensor ignored = at::rand({2, 1500}) < 0.3;
    ignored.index_put_({0, at::indexing::Slice(0, 100)}, true);  // a prompt-like run, and a padding-like tail
    ignored.index_put_({1, at::indexing::Slice(1300, 1500)}, true);
    tgt.masked_fill_(ignored, -100);
    const int64_t counted = tgt.ne(-100).sum().item<int64_t>();
    REQUIRE(counted > 1677);
    at::Tensor h1 = h0.clone().requires_grad_(true), w1 = w0.clone().requires_grad_(true);
    at::Tensor h2 = h0.clone().requires_grad_(true), w2 = w0.clone().requires_grad_(true);
    LossValue ref = cross_entropy(at::linear(h1, w1), tgt, 1e-3);
    LossValue got = linear_cross_entropy(h2, w2, tgt, 1e-3, counted);
    ref.loss.backward();
    got.loss.backward();
    CHECK(got.tokens == counted);
    CHECK(got.loss.item<double>() == Approx(ref.loss.item<double>()).epsilon(1e-6));
    CHECK(at::allclose(h2.grad(), h1.grad(), 1e-4, 1e-7));
    CHECK(at::allclose(w2.grad(), w1.grad(), 1e-4, 1e-7));
    CHECK(h2.grad().index({ignored}).abs().max().item<double>() == 0.0);
    CHECK(h2.grad().index({ignored.logical_not()}).abs().min().item<double>() > 0.0);
    CHECK_THROWS_WITH(linear_cross_entropy(h0, w0, tgt, 0.0, counted - 1),
                      Catch::Contains(fmt::format("valid_targets = {}, but {} of the 3000 targets are not -100",
                                                  counted - 1, counted)));
  }
  SECTION("the gradients are handed over once: as made for loss.backward(), and a second backward is refused") {
    at::Tensor h0 = at::randn({2, 5, D}), w0 = at::randn({V, D}) * 0.3;
    at::Tensor tgt = at::randint(0, V, {2, 5});
    at::Tensor h1 = h0.clone().requires_grad_(true), w1 = w0.clone().requires_grad_(true);
    at::Tensor h2 = h0.clone().requires_grad_(true), w2 = w0.clone().requires_grad_(true);
    LossValue ref = cross_entropy(at::linear(h1, w1), tgt);
    LossValue got = linear_cross_entropy(h2, w2, tgt);
    ref.loss.backward();
    got.loss.backward({}, /*retain_graph=*/true);
    CHECK(at::allclose(h2.grad(), h1.grad(), 1e-4, 1e-7));
    CHECK(at::allclose(w2.grad(), w1.grad(), 1e-4, 1e-7));
    CHECK_THROWS_WITH(got.loss.backward(), Catch::Contains("backward ran twice over one forward"));
  }
  SECTION("rows in many chunks, a frozen head, bf16 autocast") {
    const int64_t Vbig = 40000;  // fp32: 1677 rows per chunk (256 MB), 2 chunks for 2000 rows
    at::Tensor h0 = at::randn({2, 1000, D}), w0 = at::randn({Vbig, D}) * 0.3;
    at::Tensor tgt = at::randint(0, Vbig, {2, 1000});
    at::Tensor h1 = h0.clone().requires_grad_(true), h2 = h0.clone().requires_grad_(true);
    LossValue ref = cross_entropy(at::linear(h1, w0), tgt);
    LossValue got = linear_cross_entropy(h2, w0, tgt);
    ref.loss.backward();
    got.loss.backward();
    CHECK(got.loss.item<double>() == Approx(ref.loss.item<double>()).epsilon(1e-6));
    CHECK(at::allclose(h2.grad(), h1.grad(), 1e-4, 1e-7));
    Precision bf16;
    bf16.bf16 = true;
    at::Tensor h3 = h0.clone().requires_grad_(true), w3 = w0.clone().requires_grad_(true);
    LossValue low;
    {
      AutocastScope autocast(bf16);
      low = linear_cross_entropy(h3, w3, tgt);
    }
    low.loss.backward();
    CHECK(low.loss.item<double>() == Approx(ref.loss.item<double>()).epsilon(0.01));
    CHECK(h3.grad().scalar_type() == at::kFloat);
    CHECK(w3.grad().scalar_type() == at::kFloat);
    CHECK(rel_err(h3.grad(), h1.grad()) < 0.05);
  }
}

TEST_CASE("row_max is each row's exact maximum and keeps NaN in bf16 and fp32", "[loss]") {
  at::manual_seed(17);
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (at::ScalarType dt : {at::kBFloat16, at::kFloat}) {
    // Lengths around the 32-lane loop: a tail alone, one vector, a vector and a tail, a vocabulary-sized row.
    for (int64_t n : {1, 31, 32, 33, 1000, 32003}) {
      DYNAMIC_SECTION(c10::toString(dt) << " rows of " << n) {
        at::Tensor x = (at::randn({9, n}) * 40).to(dt);
        x[1].fill_(-inf);
        x[2] = -x[2].abs() - 1;  // all negative: the largest is the one of least magnitude
        x[3].fill_(-0.0);
        x[3][n - 1] = 0.0;  // +0 above -0
        x[4][n / 2] = nan;
        if (dt == at::kBFloat16)  // a NaN with its sign bit set (a float's conversion to bf16 would drop the sign)
          x.view(at::kShort)[5][n - 1] = static_cast<int16_t>(0xFFC1);
        else
          x[5][n - 1] = -nan;
        x[6][0] = inf;
        x[7].fill_(-0.0);
        x[8][n - 1] = x[8].abs().max() * 3;  // the maximum in the tail
        const at::Tensor got = cpu_rows::row_max(x);
        const at::Tensor want = x.to(at::kFloat).amax(1);
        REQUIRE(got.scalar_type() == at::kFloat);
        REQUIRE(got.sizes() == want.sizes());
        for (int64_t r = 0; r < 9; ++r) {
          INFO("row " << r);
          const float g = got[r].item<float>(), w = want[r].item<float>();
          if (r == 4 || r == 5) {
            CHECK(std::isnan(g));
          } else {
            CHECK(g == w);
            if (dt == at::kBFloat16) CHECK(std::signbit(g) == (r == 7 || w < 0));  // -0 only when all are -0
          }
        }
      }
    }
  }
  SECTION("an empty row is -inf; a 3-d or strided tensor is refused") {
    CHECK(cpu_rows::row_max(at::empty({2, 0}, at::kBFloat16)).eq(-inf).all().item<bool>());
    CHECK(cpu_rows::row_max(at::empty({2, 0})).eq(-inf).all().item<bool>());
    CHECK_THROWS_WITH(cpu_rows::row_max(at::zeros({2, 3, 4}, at::kBFloat16)), Catch::Contains("contiguous 2-d CPU"));
    CHECK_THROWS_WITH(cpu_rows::row_max(at::zeros({4, 6}, at::kBFloat16).t()), Catch::Contains("contiguous 2-d CPU"));
  }
}

TEST_CASE("the CPU loops' exp is within 2 ulp of std::exp and keeps NaN", "[fused]") {
  double worst = 0.0;
  for (float x = -87.0f; x <= 88.0f; x += 0.0137f)
    worst = std::max(worst, std::abs(cpu_vec::exp_approx(x) / std::exp(static_cast<double>(x)) - 1.0));
  CHECK(worst < 2.4e-7);  // 2 ulp of fp32
  CHECK(std::isnan(cpu_vec::exp_approx(std::nanf(""))));
  CHECK(cpu_vec::exp_approx(-std::numeric_limits<float>::infinity()) < 2e-38f);
  CHECK(cpu_vec::exp_approx(-1000.0f) < 2e-38f);
  CHECK(cpu_vec::exp_approx(1000.0f) > 1e38f);
}

TEST_CASE("the fused RMSNorm and SwiGLU and RoPE keep ATen's forward bit for bit and give fp64's gradients", "[fused]") {
  at::manual_seed(11);
  for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
    // fp32: a few ulps of fp32 error accumulated over a row; bf16: its own rounding, 2^-9.
    const double tol = dt == at::kFloat ? 1e-5 : 1e-2;
    for (std::vector<int64_t> shape : {std::vector<int64_t>{3, 5, 37}, std::vector<int64_t>{2, 96, 512}}) {
      DYNAMIC_SECTION("RMSNorm " << c10::toString(dt) << " D " << shape.back()) {
        const at::Tensor x0 = at::randn(shape).to(dt), w0 = 1 + 0.1 * at::randn({shape.back()});
        const at::Tensor gy = at::randn(shape).to(dt);
        for (bool frozen : {false, true}) {
          at::Tensor x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(!frozen);
          at::Tensor y = fused::rms_norm(x, w, 1e-5);
          at::Tensor xf = x0.to(at::kFloat);  // the plain expression forge::nn::Norm computed before
          at::Tensor plain = (xf * at::rsqrt(xf.pow(2).mean(-1, true) + 1e-5) * w0).to(dt);
          CHECK(y.scalar_type() == dt);
          CHECK(at::equal(y, plain));
          y.backward(gy);
          at::Tensor xd = x0.to(at::kDouble).requires_grad_(true), wd = w0.to(at::kDouble).requires_grad_(true);
          (xd * at::rsqrt(xd.pow(2).mean(-1, true) + 1e-5) * wd).backward(gy.to(at::kDouble));
          CHECK(x.grad().scalar_type() == dt);
          CHECK(rel_err(x.grad(), xd.grad()) < tol);
          if (frozen) {
            CHECK_FALSE(w.grad().defined());
          } else {
            CHECK(w.grad().scalar_type() == at::kFloat);
            CHECK(rel_err(w.grad(), wd.grad()) < tol);
          }
        }
      }
      DYNAMIC_SECTION("SwiGLU " << c10::toString(dt) << " width " << shape.back()) {
        const at::Tensor g0 = 3 * at::randn(shape).to(dt), u0 = at::randn(shape).to(dt), gy = at::randn(shape).to(dt);
        at::Tensor g = g0.clone().requires_grad_(true), u = u0.clone().requires_grad_(true);
        at::Tensor y = fused::silu_mul(g, u);
        CHECK(at::equal(y, at::silu(g0) * u0));
        y.backward(gy);
        at::Tensor gd = g0.to(at::kDouble).requires_grad_(true), ud = u0.to(at::kDouble).requires_grad_(true);
        (at::silu(gd) * ud).backward(gy.to(at::kDouble));
        CHECK(g.grad().scalar_type() == dt);
        CHECK(rel_err(g.grad(), gd.grad()) < tol);
        CHECK(rel_err(u.grad(), ud.grad()) < tol);
      }
      DYNAMIC_SECTION("packed SwiGLU " << c10::toString(dt) << " width " << shape.back()) {
        // One (..., 2H) tensor, gate then up, as the packed gate|up GEMM gives it.
        std::vector<int64_t> packed = shape;
        packed.back() *= 2;
        const at::Tensor gu0 = at::cat({3 * at::randn(shape), at::randn(shape)}, -1).to(dt);
        const at::Tensor gy = at::randn(shape).to(dt);
        at::Tensor gu = gu0.clone().requires_grad_(true);
        at::Tensor y = fused::silu_mul_packed(gu);
        const int64_t H = shape.back();
        CHECK(at::equal(y, at::silu(gu0.narrow(-1, 0, H)) * gu0.narrow(-1, H, H)));
        y.backward(gy);
        at::Tensor gud = gu0.to(at::kDouble).requires_grad_(true);
        (at::silu(gud.narrow(-1, 0, H)) * gud.narrow(-1, H, H)).backward(gy.to(at::kDouble));
        CHECK(gu.grad().sizes() == gu0.sizes());
        CHECK(gu.grad().scalar_type() == dt);
        CHECK(rel_err(gu.grad(), gud.grad()) < tol);
      }
    }
  }
  for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
    DYNAMIC_SECTION("RoPE " << c10::toString(dt)) {
      const int64_t B = 2, S = 9, H = 3, D = 40;
      // q as attention makes it: a (B, H, S, D) view of a (B, S, H, D) projection.
      const at::Tensor x0 = at::randn({B, S, H, D}).to(dt).transpose(1, 2);
      const at::Tensor ang = at::rand({S, D / 2}) * 6;
      for (bool per_sample : {false, true}) {
        const at::Tensor cos = per_sample ? ang.cos().expand({B, 1, S, D / 2}).contiguous() : ang.cos();
        const at::Tensor sin = per_sample ? ang.sin().expand({B, 1, S, D / 2}).contiguous() : ang.sin();
        at::Tensor x = x0.detach().requires_grad_(true);
        at::Tensor y = fused::rope(x, cos, sin);
        const at::Tensor x1 = x0.narrow(-1, 0, D / 2), x2 = x0.narrow(-1, D / 2, D / 2);
        const at::Tensor plain = at::cat({x1 * cos - x2 * sin, x2 * cos + x1 * sin}, -1);
        CHECK(at::equal(y, plain));
        const at::Tensor gy = at::randn(y.sizes());
        y.backward(gy);
        at::Tensor xd = x0.to(at::kDouble).requires_grad_(true);
        const at::Tensor cd = cos.to(at::kDouble), sd = sin.to(at::kDouble);
        const at::Tensor xd1 = xd.narrow(-1, 0, D / 2), xd2 = xd.narrow(-1, D / 2, D / 2);
        at::cat({xd1 * cd - xd2 * sd, xd2 * cd + xd1 * sd}, -1).backward(gy.to(at::kDouble));
        CHECK(x.grad().scalar_type() == dt);
        CHECK(rel_err(x.grad(), xd.grad()) < (dt == at::kFloat ? 1e-6 : 1e-2));
        // Written in bf16 (as attention under autocast asks): the fp32 rotation rounded once, in x's layout, and
        // the gradient of the same upstream values.
        at::Tensor xb = x0.detach().requires_grad_(true), xr = x0.detach().requires_grad_(true);
        at::Tensor yb = fused::rope(xb, cos, sin, at::kBFloat16);
        CHECK(yb.scalar_type() == at::kBFloat16);
        CHECK(yb.strides() == x0.strides());
        CHECK(at::equal(yb, plain.to(at::kBFloat16)));
        const at::Tensor gyb = gy.to(at::kBFloat16);
        yb.backward(gyb);
        fused::rope(xr, cos, sin).backward(gyb.to(at::kFloat));
        CHECK(at::equal(xb.grad(), xr.grad()));
        Precision bf16;
        bf16.bf16 = true;
        AutocastScope scope(bf16);  // nn::apply_rope under autocast: its dtype, with and without autograd
        CHECK(at::equal(nn::apply_rope(x0.detach().requires_grad_(true), cos, sin), plain.to(at::kBFloat16)));
        at::NoGradGuard no_grad;
        CHECK(at::equal(nn::apply_rope(x0, cos, sin), plain.to(at::kBFloat16)));
      }
    }
  }
  SECTION("without autograd both are the plain expressions") {
    at::NoGradGuard no_grad;
    const at::Tensor x = at::randn({4, 8}), w = at::randn({8}).requires_grad_(true);
    CHECK_FALSE(fused::rms_norm(x, w, 1e-6).requires_grad());
    CHECK(at::equal(fused::silu_mul(x, x), at::silu(x) * x));
    CHECK(at::equal(fused::silu_mul_packed(x), at::silu(x.narrow(1, 0, 4)) * x.narrow(1, 4, 4)));
  }
  SECTION("a packed tensor needs an even last dim") {
    CHECK_THROWS_WITH(fused::silu_mul_packed(at::randn({2, 5})), Catch::Contains("(2, 5)"));
  }
}

using forge::test::graph_nodes;

TEST_CASE("the residual add of a bf16 branch is ATen's add with its gradients, and ATen's add elsewhere", "[fused]") {
  at::manual_seed(12);
  // An fp32 stream and a bf16 branch: one pass, no fp32 copy of the branch. Sizes past the pass's 2^15 grain
  // and odd ones (the vector loop's tail).
  for (std::vector<int64_t> shape : {std::vector<int64_t>{3, 5, 37}, std::vector<int64_t>{4, 96, 512}}) {
    for (int threads : {1, 2}) {
      DYNAMIC_SECTION("fp32 + bf16 " << shape.back() << " on " << threads << " threads") {
        forge::test::Threads t(threads);
        const at::Tensor h0 = at::randn(shape) * 100, b0 = at::randn(shape).to(at::kBFloat16);
        h0.view(-1)[1] = INFINITY;
        b0.view(-1)[2] = NAN;
        const at::Tensor want = h0 + b0;
        CHECK(at::equal(fused::residual_add(h0, b0).nan_to_num(0), want.nan_to_num(0)));
        CHECK(fused::residual_add(h0, b0).isnan().sum().item<int64_t>() == 1);
        at::Tensor h = h0.clone().requires_grad_(true), b = b0.clone().requires_grad_(true);
        at::Tensor hr = h0.clone().requires_grad_(true), br = b0.clone().requires_grad_(true);
        const at::Tensor g = at::randn(shape);
        const at::Tensor y = nn::residual_add(h, b);
        CHECK(y.scalar_type() == at::kFloat);
        REQUIRE(y.grad_fn());
        CHECK(y.grad_fn()->name().find("ResidualAdd") != std::string::npos);  // the one pass, not ATen's add
        y.backward(g);
        (hr + br).backward(g);
        CHECK(at::equal(h.grad(), hr.grad()));
        CHECK(b.grad().scalar_type() == at::kBFloat16);
        CHECK(at::equal(b.grad(), br.grad()));
        // Only one of them trained: no gradient for the other.
        at::Tensor h2 = h0.clone(), b2 = b0.clone().requires_grad_(true);
        nn::residual_add(h2, b2).backward(g);
        CHECK(at::equal(b2.grad(), br.grad()));
      }
    }
  }
  SECTION("other dtypes, broadcasts and layouts are ATen's add") {
    const at::Tensor h = at::randn({4, 8}), b = at::randn({4, 8}).to(at::kBFloat16);
    CHECK(at::equal(nn::residual_add(h, h), h + h));
    CHECK(at::equal(nn::residual_add(b, b), b + b));
    CHECK(nn::residual_add(b, h).scalar_type() == at::kFloat);
    CHECK(at::equal(nn::residual_add(h, b.narrow(0, 0, 1)), h + b.narrow(0, 0, 1)));  // broadcast
    CHECK(at::equal(nn::residual_add(h.t(), b.t()), h.t() + b.t()));                    // strided
  }
}

TEST_CASE("under autocast q, k, v and gate, up run as one GEMM each, as the separate projections would", "[fused]") {
  at::manual_seed(12);
  nn::AttentionOptions o;
  o.dim = 48;
  o.n_heads = 6;
  o.n_kv_heads = 2;
  o.head_dim = 8;
  Precision bf16;
  bf16.bf16 = true;
  for (bool bias : {false, true}) {
    for (bool qk_norm : {false, true}) {
      DYNAMIC_SECTION("bias " << bias << " qk_norm " << qk_norm) {
        o.qkv_bias = bias;
        o.qk_norm = qk_norm;
        nn::Attention attn(o);
        nn::Mlp mlp(o.dim, 80, "silu", bias);
        const nn::RotaryEmbedding rope(o.head_dim, 32, 10000.0);
        const int64_t S = 11;
        const at::Tensor x0 = at::randn({2, S, o.dim});
        nn::AttentionInputs in;
        std::tie(in.cos, in.sin) = rope.rows(at::arange(S), at::kFloat);
        // The separate projections, spelled out: what the layers compute without packing.
        auto separate = [&](const at::Tensor& x) {
          at::Tensor q = nn::apply_rope(attn->project_q(x), in.cos, in.sin);
          at::Tensor k = nn::apply_rope(attn->project_k(x), in.cos, in.sin);
          at::Tensor a = nn::causal_attention(q, k, attn->project_v(x), in, nullptr);
          a = attn->o_proj(a.transpose(1, 2).reshape({x.size(0), S, o.n_heads * o.head_dim}));
          return a + mlp->down_proj(fused::silu_mul(mlp->gate_proj(x), mlp->up_proj(x)));
        };
        struct Run {
          at::Tensor y;
          std::vector<at::Tensor> grads;  // x's, then every parameter's
          std::set<std::string> nodes;
        };
        auto run = [&](bool autocast, bool packed) {
          attn->zero_grad();
          mlp->zero_grad();
          at::Tensor x = x0.clone().requires_grad_(true);
          Run r;
          {
            AutocastScope scope(autocast ? bf16 : Precision{});
            r.y = packed ? attn(x, in) + mlp(x) : separate(x);
          }
          r.nodes = graph_nodes(r.y);
          r.y.to(at::kFloat).pow(2).sum().backward();
          r.grads = {x.grad()};
          for (const auto& p : attn->parameters()) r.grads.push_back(p.grad());
          for (const auto& p : mlp->parameters()) r.grads.push_back(p.grad());
          r.y = r.y.to(at::kFloat).detach();
          return r;
        };
        const Run fp32 = run(false, true), plain = run(false, false), sep = run(true, false), pack = run(true, true);
        // Without autocast nothing is packed: bit for bit the separate projections.
        CHECK(at::equal(fp32.y, plain.y));
        CHECK_FALSE(fp32.nodes.count("SplitWithSizesBackward0"));
        // Under autocast the packed GEMMs ran (their outputs are split), and agree with the separate ones.
        CHECK(pack.nodes.count("SplitWithSizesBackward0"));
        CHECK(pack.nodes.count("torch::autograd::CppNode<forge::fused::(anonymous namespace)::SiluMulPacked>"));
        CHECK(rel_err(pack.y, sep.y) < 1e-2);
        CHECK(rel_err(pack.y, fp32.y) < 2e-2);
        REQUIRE(pack.grads.size() == fp32.grads.size());
        for (size_t i = 0; i < fp32.grads.size(); ++i) {
          INFO("gradient " << i << " of " << fp32.grads.size());
          REQUIRE(pack.grads[i].defined());
          CHECK(pack.grads[i].scalar_type() == at::kFloat);
          CHECK(rel_err(pack.grads[i], sep.grads[i]) < 2e-2);
          CHECK(rel_err(pack.grads[i], fp32.grads[i]) < 2e-2);
        }
      }
    }
  }
}

// Run as it is (MKL's per-pair backward on CPUs with AMX) and under FORGE_CPU_BF16_GEMM=aten (ATen's batched
// products) by tests/CMakeLists.txt.
TEST_CASE("the CPU attention backward keeps the flash forward and gives fp64's gradients", "[fused][attention]") {
  at::manual_seed(13);
  struct Shape {
    int64_t B, H, Hkv, S, hd;
  };
  // Lengths within one causal block of 64 positions, across several with a remainder, whole blocks, one past a
  // block, and 2; head dims a multiple of the 16-lane loops and not.
  for (const Shape& sh : {Shape{2, 4, 2, 37, 16}, Shape{1, 6, 6, 130, 32}, Shape{3, 8, 1, 2, 8},
                          Shape{2, 8, 2, 150, 64}, Shape{1, 3, 1, 200, 40}, Shape{1, 2, 1, 128, 16},
                          Shape{1, 4, 2, 65, 24}}) {
    DYNAMIC_SECTION("B " << sh.B << " H " << sh.H << " Hkv " << sh.Hkv << " S " << sh.S << " hd " << sh.hd) {
      // q as attention makes it, a (B, H, S, hd) view of a (B, S, H, hd) projection.
      const at::Tensor q0 = at::randn({sh.B, sh.S, sh.H, sh.hd}).transpose(1, 2);
      const at::Tensor k0 = at::randn({sh.B, sh.S, sh.Hkv, sh.hd}).transpose(1, 2);
      const at::Tensor v0 = at::randn({sh.B, sh.S, sh.Hkv, sh.hd}).transpose(1, 2);
      const at::Tensor gy = at::randn({sh.B, sh.H, sh.S, sh.hd}).to(at::kBFloat16);
      auto leaf = [](const at::Tensor& t, at::ScalarType dt) { return t.to(dt).detach().requires_grad_(true); };
      at::Tensor q = leaf(q0, at::kBFloat16), k = leaf(k0, at::kBFloat16), v = leaf(v0, at::kBFloat16);
      REQUIRE(fused::causal_attention_fusable(q, k, v));
      at::Tensor y = fused::causal_attention(q, k, v);
      CHECK(at::equal(y, at::scaled_dot_product_attention(q.detach(), k.detach(), v.detach(), {}, 0.0, true,
                                                          std::nullopt, sh.H != sh.Hkv)));
      y.backward(gy);
      at::Tensor qd = leaf(q.detach(), at::kDouble), kd = leaf(k.detach(), at::kDouble),
                 vd = leaf(v.detach(), at::kDouble);
      at::scaled_dot_product_attention(qd, kd, vd, {}, 0.0, true, std::nullopt, sh.H != sh.Hkv)
          .backward(gy.to(at::kDouble));
      for (auto [got, want] : {std::pair{q.grad(), qd.grad()}, {k.grad(), kd.grad()}, {v.grad(), vd.grad()}}) {
        CHECK(got.scalar_type() == at::kBFloat16);
        CHECK(got.sizes() == want.sizes());
        CHECK(rel_err(got, want) < 1e-2);  // bf16's rounding of the scores, probabilities and dS
      }
      // Under CPU autocast fp32 inputs are cast as at::scaled_dot_product_attention's autocast would, and their
      // gradients come back in fp32.
      at::Tensor qf = leaf(q0, at::kFloat), kf = leaf(k0, at::kFloat), vf = leaf(v0, at::kFloat);
      Precision bf16;
      bf16.bf16 = true;
      {
        AutocastScope scope(bf16);
        REQUIRE(fused::causal_attention_fusable(qf, kf, vf));
        y = fused::causal_attention(qf, kf, vf);
      }
      CHECK(y.scalar_type() == at::kBFloat16);
      y.backward(gy);
      CHECK(qf.grad().scalar_type() == at::kFloat);
      CHECK(rel_err(qf.grad(), qd.grad()) < 2e-2);  // the inputs' own bf16 rounding too
      CHECK(rel_err(vf.grad(), vd.grad()) < 2e-2);
      // fp32 without autocast, where BLAS's sgemm is found: the flash forward's bits, gradients to fp32 accuracy.
      at::Tensor q32 = leaf(q.detach(), at::kFloat), k32 = leaf(k.detach(), at::kFloat),
                 v32 = leaf(v.detach(), at::kFloat);
      REQUIRE(fused::causal_attention_fusable(q32, k32, v32) == cpu_gemm::f32_available());
      if (cpu_gemm::f32_available()) {
        y = fused::causal_attention(q32, k32, v32);
        CHECK(at::equal(y, at::scaled_dot_product_attention(q32.detach(), k32.detach(), v32.detach(), {}, 0.0, true,
                                                            std::nullopt, sh.H != sh.Hkv)));
        y.backward(gy.to(at::kFloat));
        for (auto [got, want] : {std::pair{q32.grad(), qd.grad()}, {k32.grad(), kd.grad()}, {v32.grad(), vd.grad()}}) {
          CHECK(got.scalar_type() == at::kFloat);
          CHECK(rel_err(got, want) < 1e-5);
        }
      }
      // q, k and v in (B, H, S, hd) memory rather than the projections' (B, S, H, hd), and a gradient with a
      // stride along hd: the same gradients (up to the products' summation order, which may follow alignment).
      at::Tensor qc = leaf(q0.contiguous(), at::kBFloat16), kc = leaf(k0.contiguous(), at::kBFloat16),
                 vc = leaf(v0.contiguous(), at::kBFloat16);
      const at::Tensor gy_strided = at::stack({gy, gy}, -1).select(-1, 0);
      REQUIRE(gy_strided.stride(3) == 2);
      fused::causal_attention(qc, kc, vc).backward(gy_strided);
      CHECK(rel_err(qc.grad(), q.grad()) < 1e-3);
      CHECK(rel_err(kc.grad(), k.grad()) < 1e-3);
      CHECK(rel_err(vc.grad(), v.grad()) < 1e-3);
    }
  }
  SECTION("it takes only what it handles: bf16 or fp32 on a CPU, with autograd, up to 1024 or 512 positions") {
    auto t = [](int64_t H, int64_t S, at::ScalarType dt) {
      return at::randn({1, H, S, 8}).to(dt).requires_grad_(true);
    };
    CHECK(fused::causal_attention_fusable(t(4, 1024, at::kBFloat16), t(2, 1024, at::kBFloat16),
                                          t(2, 1024, at::kBFloat16)));
    CHECK_FALSE(fused::causal_attention_fusable(t(4, 1025, at::kBFloat16), t(2, 1025, at::kBFloat16),
                                                t(2, 1025, at::kBFloat16)));
    CHECK(fused::causal_attention_fusable(t(4, 512, at::kFloat), t(2, 512, at::kFloat), t(2, 512, at::kFloat)) ==
          cpu_gemm::f32_available());
    CHECK_FALSE(fused::causal_attention_fusable(t(4, 513, at::kFloat), t(2, 513, at::kFloat), t(2, 513, at::kFloat)));
    CHECK_FALSE(fused::causal_attention_fusable(t(4, 16, at::kFloat), t(2, 16, at::kBFloat16),
                                                t(2, 16, at::kBFloat16)));  // mixed dtypes
    CHECK_FALSE(fused::causal_attention_fusable(t(4, 16, at::kDouble), t(2, 16, at::kDouble), t(2, 16, at::kDouble)));
    CHECK_THROWS_WITH(fused::causal_attention(t(4, 16, at::kHalf), t(2, 16, at::kHalf), t(2, 16, at::kHalf)),
                      Catch::Contains("bf16 or fp32"));
    CHECK_FALSE(fused::causal_attention_fusable(t(3, 16, at::kBFloat16), t(2, 16, at::kBFloat16),
                                                t(2, 16, at::kBFloat16)));
    at::NoGradGuard no_grad;
    CHECK_FALSE(fused::causal_attention_fusable(t(4, 16, at::kBFloat16), t(2, 16, at::kBFloat16),
                                                t(2, 16, at::kBFloat16)));
  }
}

TEST_CASE("docs/performance.md: every command runs", "[docs][bench]") {
  // Its sh blocks, one command per line, with the build's forge and Python and a scratch folder for /tmp.
  TempDir d;
  std::vector<std::string> commands;
  for (std::string line : forge::test::doc_commands(FORGE_SOURCE_DIR "/docs/performance.md", d.str())) {
    if (line.rfind("python ", 0) == 0) line = std::string(FORGE_PYTHON) + line.substr(6);
    if (line.find("side_by_side.py") != std::string::npos) line += " --forge " + std::string(FORGE_BIN);
    commands.push_back(line);
  }
  REQUIRE(commands.size() == 7);
  for (const auto& c : commands) {
    INFO(c);
    auto r = forge::test::run("cd " FORGE_SOURCE_DIR " && " + c);
    INFO(r.output);
    CHECK(r.code == 0);
    if (c.find("profile_summary") != std::string::npos) CHECK_THAT(r.output, Catch::Contains("aten::mm"));
    if (c.find("side_by_side") != std::string::npos) CHECK_THAT(r.output, Catch::Contains("| joint_decoder | fp32 |"));
    if (c.find("--data-only") != std::string::npos) CHECK_THAT(r.output, Catch::Contains("samples/s"));
    if (c.find("--targets 0.25") != std::string::npos)  // tiny: 48 text positions, the first 12 targets
      CHECK_THAT(r.output, Catch::Contains("48 text positions, 12 of them targets"));
  }
  CHECK(std::filesystem::exists(d.path() / "tiny.json"));
  CHECK(std::filesystem::exists(d.path() / "tiny-trace.json"));
}
