// The bf16 -> fp32 products on CPUs (core/util/cpu_gemm.h) and the linear
// layers under CPU bf16 autocast that take their weight gradients from them
// (core/model/linear_cpu.h), against fp64 products of the same bf16 operands.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/nn/modules/linear.h>

#include <cstdlib>
#include <string>

#include "core/config/loader.h"
#include "core/model/linear_cpu.h"
#include "core/model/vlm.h"
#include "core/training/precision.h"
#include "core/util/cpu_gemm.h"
#include "forge/nn.h"
#include "tests/unit/autograd_helpers.h"
#include "tests/unit/tensor_compare.h"
#include "tests/unit/test_helpers.h"

using namespace forge;
using forge::test::rel_err;

namespace {

// The product of two bf16 tensors in fp64: the exact value an fp32-accumulating GEMM approximates.
at::Tensor mm64(const at::Tensor& a, const at::Tensor& b) { return at::mm(a.to(at::kDouble), b.to(at::kDouble)); }

Precision bf16_precision() {
  Precision p;
  p.bf16 = true;
  return p;
}

bool graph_has(const at::Tensor& t, const std::string& name) { return test::graph_nodes(t).count(name) > 0; }

// MKL's product runs on AMX CPUs only, unless FORGE_CPU_BF16_GEMM=mkl: elsewhere the tests that need it say so.
bool mkl_product_on() {
  if (cpu_gemm::available()) return true;
  WARN("skipped: MKL's bf16 -> fp32 product is off on this CPU (no AMX; FORGE_CPU_BF16_GEMM=mkl turns it on)");
  return false;
}

const char* kLinearNode = "torch::autograd::CppNode<forge::fused::(anonymous namespace)::LinearBf16>";

}  // namespace

TEST_CASE("the CPU bf16 -> fp32 product is fp64's product of the bf16 operands to fp32 accuracy", "[fused][gemm]") {
#if defined(__x86_64__)
  const char* off = std::getenv("FORGE_CPU_BF16_GEMM");
  // Every x86-64 torch wheel bundles MKL; forge takes it on AMX CPUs.
  if (cpu_bf16_isa() == "AMX" && (!off || std::string(off) != "aten")) REQUIRE(cpu_gemm::available());
#endif
  if (!mkl_product_on()) return;
  at::manual_seed(3);
  const int64_t m = 37, n = 29, k = 53;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      DYNAMIC_SECTION("a " << (ta ? "transposed" : "as is") << ", b " << (tb ? "transposed" : "as is")) {
        // Transposed operands are views of row-major (k, m) and (n, k) matrices, as a backward hands them over.
        const at::Tensor a = ta ? at::randn({k, m}).to(at::kBFloat16).t() : at::randn({m, k}).to(at::kBFloat16);
        const at::Tensor b = tb ? at::randn({n, k}).to(at::kBFloat16).t() : at::randn({k, n}).to(at::kBFloat16);
        const at::Tensor want = mm64(a, b);
        const at::Tensor c = cpu_gemm::mm_bf16_f32(a, b);
        CHECK(c.scalar_type() == at::kFloat);
        CHECK(rel_err(c, want) < 1e-6);
        // Accumulating adds to what the output holds, here into every other row of a wider buffer.
        const at::Tensor base = at::randn({2 * m, n + 3});
        const at::Tensor into = base.clone();
        const at::Tensor rows = into.narrow(1, 1, n).slice(0, 0, 2 * m, 2);
        cpu_gemm::mm_bf16_f32(a, b, rows, true);
        CHECK(rel_err(rows, want + base.narrow(1, 1, n).slice(0, 0, 2 * m, 2).to(at::kDouble)) < 1e-6);
        CHECK(at::equal(into.narrow(1, 0, 1), base.narrow(1, 0, 1)));  // the rest is untouched
        CHECK(at::equal(into.slice(0, 1, 2 * m, 2), base.slice(0, 1, 2 * m, 2)));
      }
    }
  }
  SECTION("a strided operand is copied first; an empty reduction gives zeros or leaves the sum") {
    const at::Tensor a = at::randn({m, 2 * k}).to(at::kBFloat16).slice(1, 0, 2 * k, 2);
    const at::Tensor b = at::randn({k, n}).to(at::kBFloat16);
    CHECK(rel_err(cpu_gemm::mm_bf16_f32(a, b), mm64(a, b)) < 1e-6);
    at::Tensor c = at::ones({m, n});
    cpu_gemm::mm_bf16_f32(at::empty({m, 0}, at::kBFloat16), at::empty({0, n}, at::kBFloat16), c, true);
    CHECK(at::equal(c, at::ones({m, n})));
    cpu_gemm::mm_bf16_f32(at::empty({m, 0}, at::kBFloat16), at::empty({0, n}, at::kBFloat16), c, false);
    CHECK(at::equal(c, at::zeros({m, n})));
  }
  SECTION("shapes and dtypes it cannot take are named") {
    const at::Tensor a = at::randn({4, 5}).to(at::kBFloat16);
    CHECK_THROWS_WITH(cpu_gemm::mm_bf16_f32(a, a), Catch::Contains("(4, 5) by (4, 5)"));
    CHECK_THROWS_WITH(cpu_gemm::mm_bf16_f32(a.to(at::kFloat), a.t()), Catch::Contains("bf16 CPU inputs"));
    at::Tensor c16 = at::empty({4, 4}, at::kBFloat16);
    CHECK_THROWS_WITH(cpu_gemm::mm_bf16_f32(a, a.t(), c16, false), Catch::Contains("fp32 CPU output"));
    const at::Tensor overlapping = at::zeros({4}).unsqueeze(1).expand({4, 4});  // rows that share memory
    CHECK_THROWS_WITH(cpu_gemm::mm_bf16_f32(a, a.t(), overlapping, false), Catch::Contains("do not overlap"));
    CHECK_THROWS_WITH(cpu_gemm::mm_bf16_f32(a.flatten(), a), Catch::Contains("two CPU matrices"));
  }
}

TEST_CASE("linears under CPU bf16 autocast: at::linear's forward, fp32 weight gradients", "[fused][gemm]") {
  if (!mkl_product_on()) return;
  at::manual_seed(5);
  const Precision bf16 = bf16_precision();
  for (int64_t width : {24, 2100}) {  // 2100 >= 2048: x's gradient comes from the fp32-out product too
    for (bool bias : {false, true}) {
      DYNAMIC_SECTION("width " << width << " bias " << bias) {
        torch::nn::Linear a(torch::nn::LinearOptions(40, width).bias(bias));
        torch::nn::Linear b(torch::nn::LinearOptions(40, 16).bias(bias));
        const at::Tensor x0 = at::randn({3, 7, 40});
        const at::Tensor gy = at::randn({3, 7, width + 16}).to(at::kBFloat16);
        at::Tensor x = x0.clone().requires_grad_(true);
        at::Tensor y, ref;
        {
          AutocastScope scope(bf16);
          REQUIRE(fused::linear_bf16_applies(x, {a.get(), b.get()}));
          y = fused::linear_bf16(x, {a.get(), b.get()});
          ref = at::cat({at::linear(x0, a->weight.detach(), bias ? a->bias.detach() : at::Tensor()),
                         at::linear(x0, b->weight.detach(), bias ? b->bias.detach() : at::Tensor())},
                        -1);
          // One linear alone is at::linear under autocast, bit for bit.
          const at::Tensor one = fused::linear_bf16(x0, {a.get()});
          CHECK(at::equal(one, at::linear(x0, a->weight.detach(), bias ? a->bias.detach() : at::Tensor())));
        }
        CHECK(y.scalar_type() == at::kBFloat16);
        CHECK(y.sizes() == at::IntArrayRef({3, 7, width + 16}));
        CHECK(graph_has(y, kLinearNode));
        CHECK(rel_err(y, ref) < 1e-2);
        y.backward(gy);
        // The gradients against fp64 products of the very bf16 operands the GEMMs read.
        const at::Tensor xb = x0.reshape({-1, 40}).to(at::kBFloat16), dy = gy.reshape({-1, width + 16});
        const at::Tensor w = at::cat({a->weight, b->weight}).detach().to(at::kBFloat16);
        const at::Tensor dw = mm64(dy.t(), xb);
        REQUIRE(a->weight.grad().scalar_type() == at::kFloat);
        CHECK(rel_err(a->weight.grad(), dw.narrow(0, 0, width)) < 1e-6);  // fp32 accuracy, no bf16 rounding
        CHECK(rel_err(b->weight.grad(), dw.narrow(0, width, 16)) < 1e-6);
        if (bias) {
          const at::Tensor db = dy.to(at::kDouble).sum(0);
          CHECK(rel_err(a->bias.grad(), db.narrow(0, 0, width)) < 1e-6);
          CHECK(rel_err(b->bias.grad(), db.narrow(0, width, 16)) < 1e-6);
        }
        REQUIRE(x.grad().scalar_type() == at::kFloat);
        CHECK(rel_err(x.grad(), mm64(dy, w).view({3, 7, 40})) < (width >= 2048 ? 1e-6 : 1e-2));
      }
    }
  }
  SECTION("a pack of linears with and without biases, one frozen, over two backwards that accumulate") {
    torch::nn::Linear a(torch::nn::LinearOptions(12, 6).bias(true));
    torch::nn::Linear b(torch::nn::LinearOptions(12, 5).bias(false));
    torch::nn::Linear c(torch::nn::LinearOptions(12, 7).bias(true));
    b->weight.set_requires_grad(false);
    const at::Tensor x0 = at::randn({4, 12}), gy = at::randn({4, 18}).to(at::kBFloat16);
    at::Tensor x = x0.clone().requires_grad_(true);
    for (int pass = 0; pass < 2; ++pass) {
      AutocastScope scope(bf16);
      REQUIRE(fused::linear_bf16_applies(x, {a.get(), b.get(), c.get()}));
      at::Tensor y = fused::linear_bf16(x, {a.get(), b.get(), c.get()});
      const at::Tensor ref = at::cat({at::linear(x0, a->weight.detach(), a->bias.detach()),
                                      at::linear(x0, b->weight.detach()),
                                      at::linear(x0, c->weight.detach(), c->bias.detach())},
                                     -1);
      CHECK(rel_err(y, ref) < 1e-2);
      y.backward(gy);
    }
    const at::Tensor xb = x0.to(at::kBFloat16);
    const at::Tensor dw = mm64(gy.t(), xb) * 2, db = gy.to(at::kDouble).sum(0) * 2;  // two passes, summed
    CHECK(rel_err(a->weight.grad(), dw.narrow(0, 0, 6)) < 1e-6);
    CHECK_FALSE(b->weight.grad().defined());  // frozen: no gradient made
    CHECK(rel_err(c->weight.grad(), dw.narrow(0, 11, 7)) < 1e-6);
    CHECK(rel_err(a->bias.grad(), db.narrow(0, 0, 6)) < 1e-6);
    CHECK(rel_err(c->bias.grad(), db.narrow(0, 11, 7)) < 1e-6);
    const at::Tensor w = at::cat({a->weight, b->weight, c->weight}).detach().to(at::kBFloat16);
    CHECK(rel_err(x.grad(), mm64(gy, w) * 2) < 1e-2);
  }
  SECTION("a bf16 input, one row, no rows; no double backward") {
    torch::nn::Linear l(torch::nn::LinearOptions(10, 3));
    AutocastScope scope(bf16);
    const at::Tensor xb = at::randn({2, 5, 10}).to(at::kBFloat16).requires_grad_(true);
    at::Tensor y = fused::linear_bf16(xb, {l.get()});
    CHECK(at::equal(y, at::linear(xb.detach(), l->weight.detach(), l->bias.detach())));
    y.sum().backward();
    CHECK(xb.grad().scalar_type() == at::kBFloat16);
    const at::Tensor one = at::randn({10}).requires_grad_(true);
    const at::Tensor y1 = fused::linear_bf16(one, {l.get()});
    CHECK(y1.sizes() == at::IntArrayRef({3}));
    y1.to(at::kFloat).sum().backward();
    CHECK(one.grad().sizes() == one.sizes());
    l->zero_grad();
    const at::Tensor none = at::randn({0, 10}).requires_grad_(true);
    fused::linear_bf16(none, {l.get()}).to(at::kFloat).sum().backward();
    CHECK(at::equal(l->weight.grad(), at::zeros_like(l->weight)));  // no rows: zero gradients, not garbage
    const at::Tensor x2 = at::randn({3, 10}).requires_grad_(true);
    const at::Tensor y2 = fused::linear_bf16(x2, {l.get()}).to(at::kFloat).pow(2).sum();
    CHECK_THROWS_WITH(torch::autograd::grad({y2}, {x2}, {}, true, /*create_graph=*/true),
                      Catch::Contains("not differentiable"));
  }
  SECTION("strided inputs and gradients (a modality's rows of the residual stream) give their copies' results") {
    torch::nn::Linear l(torch::nn::LinearOptions(16, 24));
    const at::Tensor h = at::randn({3, 9, 16});
    const at::Tensor gy = at::randn({5, 3, 24}).transpose(0, 1).to(at::kBFloat16);  // (3, 5, 24), not contiguous
    REQUIRE_FALSE(gy.is_contiguous());
    at::Tensor hs = h.clone().requires_grad_(true);
    at::Tensor xc = h.narrow(1, 4, 5).contiguous().requires_grad_(true);
    AutocastScope scope(bf16);
    const at::Tensor ys = fused::linear_bf16(hs.narrow(1, 4, 5), {l.get()});
    CHECK(at::equal(ys, at::linear(h.narrow(1, 4, 5), l->weight.detach(), l->bias.detach())));
    ys.backward(gy);
    const at::Tensor dw = l->weight.grad().clone(), db = l->bias.grad().clone();
    l->zero_grad();
    fused::linear_bf16(xc, {l.get()}).backward(gy.contiguous());
    CHECK(at::equal(dw, l->weight.grad()));
    CHECK(at::equal(db, l->bias.grad()));
    CHECK(at::equal(hs.grad().narrow(1, 4, 5), xc.grad()));
    CHECK(at::equal(hs.grad().narrow(1, 0, 4), at::zeros({3, 4, 16})));
  }
  SECTION("nn::packed_linear of one linear is the linear itself, without autocast or without a backward") {
    torch::nn::Linear l(torch::nn::LinearOptions(10, 3));
    const at::Tensor x = at::randn({4, 10});
    CHECK(at::equal(nn::packed_linear(x, {l.get()}), l(x)));  // fp32: the HF parity path, bit for bit
    AutocastScope scope(bf16);
    at::NoGradGuard no_grad;
    CHECK(at::equal(nn::packed_linear(x, {l.get()}), l(x)));
  }
  SECTION("nn::projections is each linear's output: one by one in fp32, the packed product's parts under autocast") {
    torch::nn::Linear a(torch::nn::LinearOptions(12, 6)), b(torch::nn::LinearOptions(12, 2).bias(false)),
        c(torch::nn::LinearOptions(12, 2));
    const at::Tensor x = at::randn({3, 5, 12});
    const auto fp32 = nn::projections(x, {a.get(), b.get(), c.get()});
    REQUIRE(fp32.size() == 3);
    CHECK(at::equal(fp32[0], a(x)));  // the HF parity path, bit for bit
    CHECK(at::equal(fp32[1], b(x)));
    CHECK(at::equal(fp32[2], c(x)));
    AutocastScope scope(bf16);
    REQUIRE(nn::packs_projections(x));
    const auto packed = nn::projections(x, {a.get(), b.get(), c.get()});
    const at::Tensor whole = nn::packed_linear(x, {a.get(), b.get(), c.get()});
    REQUIRE(packed.size() == 3);
    CHECK(packed[0].sizes().vec() == std::vector<int64_t>{3, 5, 6});
    CHECK(at::equal(packed[0], whole.narrow(-1, 0, 6)));
    CHECK(at::equal(packed[1], whole.narrow(-1, 6, 2)));
    CHECK(at::equal(packed[2], whole.narrow(-1, 8, 2)));
    // Already in the autocast dtype nothing is packed: each is its linear over the bf16 casts of its parameters.
    const at::Tensor xb = x.to(at::kBFloat16);
    REQUIRE_FALSE(nn::packs_projections(xb));
    const auto single = nn::projections(xb, {a.get(), c.get()});
    REQUIRE(single.size() == 2);
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    for (size_t i = 0; i < 2; ++i) {
      const torch::nn::LinearImpl& l = i == 0 ? *a : *c;
      CHECK(at::equal(single[i], at::linear(xb, l.weight.to(at::kBFloat16), l.bias.to(at::kBFloat16))));
    }
  }
  SECTION("it takes fp32 weights under CPU bf16 autocast only; the decoder's layers run through it") {
    torch::nn::Linear l(torch::nn::LinearOptions(8, 4));
    const at::Tensor x = at::randn({2, 8});
    CHECK_FALSE(fused::linear_bf16_applies(x, {l.get()}));  // no autocast
    AutocastScope scope(bf16);
    CHECK(fused::linear_bf16_applies(x, {l.get()}));
    CHECK(fused::linear_bf16_applies(x.to(at::kBFloat16), {l.get()}));
    CHECK_FALSE(fused::linear_bf16_applies(at::randn({2, 9}), {l.get()}));
    {
      at::NoGradGuard no_grad;  // evaluation and generation keep autocast's cached weight casts
      CHECK_FALSE(fused::linear_bf16_applies(x, {l.get()}));
    }
    l->weight.set_requires_grad(false);
    l->bias.set_requires_grad(false);
    CHECK_FALSE(fused::linear_bf16_applies(x, {l.get()}));  // frozen, and x needs no gradient
    CHECK(fused::linear_bf16_applies(x.clone().requires_grad_(true), {l.get()}));
    l->to(at::kBFloat16);
    CHECK_FALSE(fused::linear_bf16_applies(x, {l.get()}));
    nn::Mlp mlp(8, 16, "silu", false);
    const at::Tensor out = mlp(x.requires_grad_(true));
    CHECK(graph_has(out, kLinearNode));
    out.to(at::kFloat).sum().backward();
    for (const auto& p : mlp->parameters()) CHECK(p.grad().scalar_type() == at::kFloat);
  }
}

TEST_CASE("under CPU bf16 autocast every trained linear of the decoder, the arch's blocks and the adapter runs "
          "through linear_bf16 (fp32 weight gradients)", "[fused][gemm]") {
  if (!mkl_product_on()) return;
  for (const std::string arch : {"joint_decoder", "cross_attention", "mot"}) {
    for (const std::string adapter : {"mlp_2layer", "linear"}) {
      DYNAMIC_SECTION(arch << " with the " << adapter << " adapter") {
        const LoadedConfig cfg =
            load_config_text(test::tiny_vlm_toml(arch, adapter), "t.toml", test::builtin_registry());
        VLM model = build_vlm(cfg.job, test::builtin_registry());
        model->train();
        at::manual_seed(2);
        const at::Tensor px = at::rand({2, 3, 16, 16}), ids = at::randint(0, 64, {2, 12});
        at::Tensor hidden;
        {
          AutocastScope scope(bf16_precision());
          hidden = model->forward_hidden(px, ids, ids, at::Tensor()).hidden;
        }
        const auto reached = test::leaves_under(hidden, kLinearNode);
        const auto* head = model->output_weight().unsafeGetTensorImpl();  // the loss's own fp32 products
        int64_t linears = 0;
        for (const auto& item : model->named_modules()) {
          const auto* l = dynamic_cast<const torch::nn::LinearImpl*>(item.value().get());
          if (!l || !l->weight.requires_grad() || l->weight.unsafeGetTensorImpl() == head) continue;
          ++linears;
          INFO(item.key());
          CHECK(reached.count(l->weight.unsafeGetTensorImpl()) == 1);
        }
        CHECK(linears >= 2 * 4 + 1);  // 2 layers of q, k, v, o (and more), and the adapter
      }
    }
  }
}
