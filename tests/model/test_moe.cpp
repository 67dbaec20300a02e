// Mixture-of-experts layers against direct computations written out token
// by token (spec section 2.12): routing, dispatch, capacity, aux and z
// losses, the sigmoid router's bias balancing, packed experts, the
// one-expert case, state-dict names, and the aux loss reaching the router
// under activation checkpointing.
#include <cmath>

#include "core/model/vlm.h"
#include "core/training/step.h"
#include "forge/decoder.h"
#include "forge/moe.h"
#include "tests/unit/test_helpers.h"

using namespace forge;

namespace {

nn::MoEOptions small_options(const std::string& router = "softmax_topk", int64_t experts = 4, int64_t k = 2) {
  nn::MoEOptions o;
  o.dim = 12;
  o.hidden = 20;
  o.num_experts = experts;
  o.top_k = k;
  o.router = router;
  return o;
}

at::Tensor randn(std::vector<int64_t> shape, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn(shape);
}

// Expert e applied to one row, from the stacked (E, in, out) weights.
at::Tensor expert_row(const std::vector<at::Tensor>& w, int64_t e, const at::Tensor& x, const std::string& act) {
  at::Tensor up = x.matmul(w[0][e]);  // w: up, down, gate
  at::Tensor h;
  if (act == "silu")
    h = at::silu(x.matmul(w[2][e])) * up;
  else if (act == "gelu")
    h = at::gelu(up);
  else
    h = at::relu(up);
  return h.matmul(w[1][e]);
}

// The layer's output computed token by token: every token's top-k experts
// weighted by the router's renormalised weights (capacity already applied).
at::Tensor direct_output(nn::MoEImpl& moe, const at::Tensor& x, const at::Tensor& weights, const at::Tensor& indices) {
  torch::NoGradGuard g;
  const int64_t n = x.size(0) * x.size(1), d = x.size(2);
  at::Tensor xf = x.reshape({n, d});
  auto w = moe.stacked_weights();
  at::Tensor out = torch::zeros({n, d});
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t j = 0; j < indices.size(1); ++j) {
      const int64_t e = indices[t][j].item<int64_t>();
      out[t] += weights[t][j].item<double>() * expert_row(w, e, xf[t], moe.options.activation);
    }
    if (moe.shared_expert) out[t] += moe.shared_expert(xf[t].unsqueeze(0))[0];
  }
  return out.reshape(x.sizes());
}

// The reference's capacity loop: per slot, per expert, tokens past the capacity in token order get weight 0.
at::Tensor capacity_loop(at::Tensor weights, const at::Tensor& indices, int64_t experts, double cf) {
  const int64_t n = indices.size(0), k = indices.size(1);
  const int64_t capacity = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(static_cast<double>(n * k) / experts * cf)));
  weights = weights.clone();
  for (int64_t slot = 0; slot < k; ++slot)
    for (int64_t e = 0; e < experts; ++e) {
      int64_t seen = 0;
      for (int64_t t = 0; t < n; ++t)
        if (indices[t][slot].item<int64_t>() == e && ++seen > capacity) weights[t][slot] = 0.0;
    }
  return weights;
}

}  // namespace

TEST_CASE("softmax top-k routing, dispatch, aux and z losses match a token-by-token computation", "[moe]") {
  for (const std::string act : {"silu", "gelu"}) {
    for (bool shared : {false, true}) {
      INFO(act << ", shared expert " << shared);
      torch::manual_seed(3);
      auto o = small_options();
      o.activation = act;
      o.shared_expert = shared;
      nn::MoE moe(o);
      moe->eval();
      at::Tensor x = randn({2, 7, 12}, 5);
      at::Tensor y = moe(x);

      // Routing by hand.
      at::Tensor xf = x.reshape({14, 12});
      at::Tensor logits = xf.matmul(moe->router->gate->weight.t());
      at::Tensor probs = logits.softmax(-1);
      auto [top, idx] = probs.topk(2, -1);
      at::Tensor w = top / top.sum(-1, true);
      const auto& r = moe->last_routing();
      CHECK(at::equal(r.indices, idx));
      CHECK(at::allclose(r.weights, w, 1e-6, 1e-7));
      CHECK(at::allclose(y, direct_output(*moe, x, w, idx), 1e-5, 1e-6));

      // aux = E * sum_e f_e * P_e, f over (token, slot) pairs; z = mean(logsumexp^2).
      double aux = 0;
      for (int64_t e = 0; e < 4; ++e) {
        const double f = idx.eq(e).sum().item<double>() / (14.0 * 2);
        aux += f * probs.select(1, e).mean().item<double>();
      }
      CHECK(r.aux_loss.item<double>() == Approx(4 * aux).epsilon(1e-6));
      double z = 0;
      for (int64_t t = 0; t < 14; ++t) z += std::pow(std::log(logits[t].exp().sum().item<double>()), 2);
      CHECK(r.z_loss.item<double>() == Approx(z / 14).epsilon(1e-5));
      CHECK(r.counts.sum().item<double>() == 28);
    }
  }
}

TEST_CASE("capacity: per slot, each expert keeps its first tokens in token order", "[moe]") {
  torch::manual_seed(11);
  for (double cf : {0.5, 1.0, 1.25}) {
    at::Tensor indices = torch::randint(0, 4, {23, 2}, torch::kLong);
    at::Tensor weights = torch::rand({23, 2});
    at::Tensor got = nn::apply_capacity(weights, indices, 4, cf);
    CHECK(at::equal(got, capacity_loop(weights, indices, 4, cf)));
  }
  // In the layer: dropped (token, slot) pairs contribute nothing.
  torch::manual_seed(4);
  auto o = small_options();
  o.capacity_factor = 0.5;
  nn::MoE moe(o);
  moe->eval();
  at::Tensor x = randn({1, 16, 12}, 9);
  at::Tensor y = moe(x);
  const auto& r = moe->last_routing();
  CHECK(r.weights.eq(0).sum().item<int64_t>() > 0);
  CHECK(at::allclose(y, direct_output(*moe, x, r.weights, r.indices), 1e-5, 1e-6));
}

TEST_CASE("sigmoid top-k: biased scores, sequence aux loss, and the bias moved toward uniform use", "[moe]") {
  torch::manual_seed(8);
  auto o = small_options("sigmoid_topk");
  o.sequence_aux_loss_weight = 0.1;
  o.bias_schedule = "cosine_decay";
  nn::MoE moe(o);
  auto* router = dynamic_cast<nn::SigmoidTopKRouterImpl*>(moe->router.get());
  REQUIRE(router);
  {
    torch::NoGradGuard g;
    router->expert_bias.copy_(torch::tensor({0.3, -0.2, 0.0, 0.1}));
  }
  moe->train();
  at::Tensor x = randn({2, 9, 12}, 2);
  const MicroBatch mb{5, 20, 0.5};
  moe->begin_micro_batch(mb);
  at::Tensor y = moe(x);

  at::Tensor xf = x.reshape({18, 12});
  at::Tensor logits = xf.matmul(router->gate->weight.t());
  at::Tensor scores = (logits + router->expert_bias).sigmoid();
  auto [top, idx] = scores.topk(2, -1);
  const auto& r = moe->last_routing();
  CHECK(at::equal(r.indices, idx));
  CHECK(at::allclose(r.weights, top / top.sum(-1, true), 1e-6, 1e-7));
  at::Tensor counts = at::bincount(idx.reshape(-1), {}, 4).to(torch::kFloat);
  at::Tensor f = counts / (36 + 1e-8);
  const double seq = 0.1 * 4 * (f * scores.mean(0)).sum().item<double>();
  CHECK(r.aux_loss.item<double>() == Approx(seq).epsilon(1e-6));

  // The bias moves once per step, after the optimizer, from the step's utilisation.
  at::Tensor bias0 = router->expert_bias.detach().clone(), ema0 = router->expert_ema.clone();
  moe(x);  // a recomputation in the same micro-batch records nothing more
  moe->end_step(true);
  const double rate = 0.001 * 0.5 * (1 + std::cos(M_PI * 5.0 / 20.0));
  at::Tensor ema = ema0 + 0.01 * (f - ema0);
  CHECK(router->bias_rate() == Approx(rate));
  CHECK(at::allclose(router->expert_ema, ema, 1e-6, 1e-8));
  CHECK(at::allclose(router->expert_bias.detach(), bias0 + rate * (0.25 - ema), 1e-6, 1e-8));
  // A skipped step moves nothing.
  moe->begin_micro_batch(mb);
  moe(x);
  at::Tensor bias1 = router->expert_bias.detach().clone();
  moe->end_step(false);
  CHECK(at::equal(router->expert_bias.detach(), bias1));
}

TEST_CASE("top-1 of one expert is the dense MLP, and packed experts equal unpacked ones", "[moe]") {
  torch::manual_seed(1);
  auto o = small_options("softmax_topk", 1, 1);
  nn::MoE moe(o);
  nn::Mlp dense(12, 20, "silu");
  {
    torch::NoGradGuard g;
    auto* e = moe->experts[0]->as<nn::MlpImpl>();
    dense->gate_proj->weight.copy_(e->gate_proj->weight);
    dense->up_proj->weight.copy_(e->up_proj->weight);
    dense->down_proj->weight.copy_(e->down_proj->weight);
  }
  at::Tensor x = randn({3, 5, 12}, 4).requires_grad_(true);
  at::Tensor x2 = x.detach().clone().requires_grad_(true);
  at::Tensor y = moe(x), yd = dense(x2);
  CHECK(at::allclose(y, yd, 1e-6, 1e-7));
  (y * y).sum().backward();
  (yd * yd).sum().backward();
  CHECK(at::allclose(x.grad(), x2.grad(), 1e-5, 1e-7));
  CHECK(at::allclose(moe->experts[0]->as<nn::MlpImpl>()->up_proj->weight.grad(), dense->up_proj->weight.grad(),
                     1e-5, 1e-7));

  for (const std::string act : {"silu", "relu"}) {
    INFO(act);
    auto po = small_options();
    po.activation = act;
    torch::manual_seed(6);
    nn::MoE unpacked(po);
    po.packed = true;
    torch::manual_seed(6);  // the same draws: packed tensors are stacked from the same built experts
    nn::MoE packed(po);
    auto wu = unpacked->stacked_weights(), wp = packed->stacked_weights();
    CHECK(at::equal(wu[0], wp[0]));
    CHECK(at::equal(wu[1], wp[1]));
    CHECK(wp[0].sizes() == std::vector<int64_t>{4, 12, 20});
    CHECK(wp[1].sizes() == std::vector<int64_t>{4, 20, 12});
    CHECK(at::equal(unpacked(x.detach()), packed(x.detach())));
  }
}

TEST_CASE("gradient_scale scales each expert's rows by its share of the load in training only", "[moe]") {
  torch::manual_seed(2);
  auto o = small_options();
  o.gradient_scale = true;
  nn::MoE moe(o);
  at::Tensor x = randn({2, 6, 12}, 3);
  moe->eval();
  at::Tensor plain = moe(x);
  moe->train();
  at::Tensor y = moe(x);
  const auto& r = moe->last_routing();
  at::Tensor counts = at::bincount(r.indices.reshape(-1), {}, 4).to(torch::kDouble);
  at::Tensor scale = (24.0 / 4) / counts.clamp_min(1);
  at::Tensor w = r.weights.clone();
  for (int64_t t = 0; t < 12; ++t)
    for (int64_t j = 0; j < 2; ++j) w[t][j] *= scale[r.indices[t][j].item<int64_t>()].item<double>();
  CHECK(at::allclose(y, direct_output(*moe, x, w, r.indices), 1e-5, 1e-6));
  CHECK(at::allclose(plain, direct_output(*moe, x, r.weights, r.indices), 1e-5, 1e-6));
}

TEST_CASE("expert hidden size follows the reference's rounding", "[moe]") {
  CHECK(nn::expert_hidden_size(768, 1.0) == 768);
  CHECK(nn::expert_hidden_size(768, 0.5) == 384);
  CHECK(nn::expert_hidden_size(264, 1.0) == 256);  // 16.5 rounds to even
  CHECK(nn::expert_hidden_size(40, 1.0) == 32);    // 2.5 rounds to even
  CHECK(nn::expert_hidden_size(56, 1.0) == 64);    // 3.5 rounds to even
  CHECK(nn::expert_hidden_size(10, 1.0) == 16);    // at least 16
  CHECK(nn::expert_hidden_size(100, 0.3) == 32);   // trunc(30) / 16 = 1.875
}

TEST_CASE("MoE decoder layers: placement, state-dict names, and the aux loss in backward", "[moe]") {
  ModelConfig m;
  m.dim = 16;
  m.n_layers = 4;
  m.n_heads = 2;
  m.vocab_size = 50;
  m.max_seq_len = 32;
  m.num_experts = 3;
  m.moe_top_k = 2;
  m.moe_frequency = 2;
  m.moe_shared_experts = 2;  // exactly one shared expert
  m.moe_router = "sigmoid_topk";
  torch::manual_seed(0);
  Decoder dec(m, nullptr);
  std::set<std::string> names;
  for (const auto& p : dec->named_parameters(true)) names.insert(p.key());
  for (const auto& b : dec->named_buffers(true)) names.insert(b.key());
  CHECK(names.count("layers.0.mlp.gate_proj.weight"));  // layers 0 and 2 dense
  CHECK(names.count("layers.2.mlp.down_proj.weight"));
  for (const char* l : {"layers.1.", "layers.3."}) {
    const std::string L = l;
    CHECK(names.count(L + "mlp.router.gate.weight"));
    CHECK(names.count(L + "mlp.router.expert_bias"));
    CHECK(names.count(L + "mlp.router.expert_ema"));
    CHECK(names.count(L + "mlp.experts.2.gate_proj.weight"));
    CHECK(names.count(L + "mlp.shared_expert.down_proj.weight"));
    CHECK_FALSE(names.count(L + "mlp.shared_expert.1.down_proj.weight"));
  }
  CHECK(step_participants(*dec).size() == 2);

  // d(loss + w * aux)/d(gate) arrives with and without activation checkpointing, equal.
  m.moe_router = "softmax_topk";
  m.moe_aux_loss_weight = 0.5;
  m.moe_router_z_loss_weight = 0.01;
  auto grads = [&](int64_t ac) {
    torch::manual_seed(0);
    Decoder d(m, nullptr);
    d->train();
    d->set_activation_checkpointing(ac);
    for (auto& [name, p] : step_participants(*d)) p->begin_micro_batch(MicroBatch{0, 1, 0.5});
    at::Tensor tokens = torch::randint(0, 50, {2, 9}, torch::kLong);
    at::Tensor logits = d(tokens);
    (0.5 * logits.pow(2).mean()).backward();
    std::map<std::string, at::Tensor> g;
    for (const auto& p : d->named_parameters(true))
      if (p.value().grad().defined()) g[p.key()] = p.value().grad().clone();
    return g;
  };
  auto plain = grads(0), checkpointed = grads(1);
  CHECK(plain.count("layers.1.mlp.router.gate.weight"));
  CHECK(plain.size() == checkpointed.size());
  for (const auto& [k, g] : plain) {
    INFO(k);
    CHECK(at::allclose(g, checkpointed.at(k), 1e-5, 1e-7));
  }
  // And the router's gradient includes the aux terms: without them it differs by their gradient.
  torch::manual_seed(0);
  Decoder d(m, nullptr);
  d->train();
  for (auto& [name, p] : step_participants(*d)) p->begin_micro_batch(MicroBatch{0, 1, 0.5});
  auto* block = dynamic_cast<TransformerBlockImpl*>(d->layer_list()[1].get());
  REQUIRE(block);
  REQUIRE(block->moe);
  at::Tensor x = randn({2, 9, 16}, 12);
  at::Tensor y = block->moe(x);
  // Objective with the aux attached: y.sum() * 0.5 (loss_scale) -> gate gets 0.5 * (d y.sum + 0.5 daux + 0.01 dz).
  (0.5 * y.sum()).backward();
  at::Tensor with_aux = block->moe->router->gate->weight.grad().clone();
  block->moe->router->gate->weight.mutable_grad().zero_();
  block->moe->eval();  // eval: no aux attached; compute the terms by hand
  at::Tensor y2 = block->moe(x);
  at::Tensor xf = x.reshape({18, 16});
  at::Tensor logits = xf.matmul(block->moe->router->gate->weight.t());
  at::Tensor probs = logits.softmax(-1);
  auto [top, idx] = probs.topk(2, -1);
  at::Tensor f = at::bincount(idx.reshape(-1), {}, 3).to(torch::kFloat) / 36.0;
  at::Tensor aux = 3 * (f * probs.mean(0)).sum();
  at::Tensor z = logits.logsumexp(-1).pow(2).mean();
  (0.5 * (y2.sum() + 0.5 * aux + 0.01 * z)).backward();
  CHECK(at::allclose(with_aux, block->moe->router->gate->weight.grad(), 1e-5, 1e-7));
}

TEST_CASE("MoE decoders build and train with every adapter, under freezing", "[moe][model]") {
  for (const char* arch : {"joint_decoder", "cross_attention"}) {
    for (const char* adapter : {"mlp_2layer", "linear", "avgpool", "attentional_pool"}) {
      DYNAMIC_SECTION(arch << " + " << adapter) {
        LoadOptions o;
        o.overrides = {"--model.num_experts=3", "--model.moe_top_k=2"};
        auto cfg = load_config_text(forge::test::tiny_vlm_toml(arch, adapter), "t.toml", forge::test::builtin_registry(), o);
        VLM m = build_vlm(cfg.job, forge::test::builtin_registry());
        apply_freeze(*m, {FreezeSpec{"adapter", true}}, cfg.job.vlm->resolved_module_patterns());
        torch::manual_seed(3);
        at::Tensor ids = torch::randint(0, 64, {2, 10}, torch::kLong);
        auto out = m->forward(torch::rand({2, 3, 8, 8}), ids, ids);
        at::cross_entropy_loss(out.logits.flatten(0, 1), out.targets.flatten(), {}, at::Reduction::Mean, -100)
            .backward();
        for (auto& p : m->named_parameters(true)) {
          INFO(p.key());
          const bool adapter_param = p.key().rfind("adapter.", 0) == 0;
          CHECK(p.value().grad().defined() == !adapter_param);
          if (p.key() == "transformer.layers.1.mlp.router.gate.weight")
            CHECK(p.value().grad().abs().sum().item<double>() > 0);
        }
      }
    }
  }
}
