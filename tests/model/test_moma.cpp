// arch/moma (Mixture of Modality-Aware Experts, spec section 2.11): the
// expert-choice feed-forward against a computation written out token by
// token, padding, Gumbel noise (reproducible, replayed under activation
// checkpointing), the reference's state-dict names and config rules, and the
// refusal to generate.
#include <cmath>

#include "core/model/vlm.h"
#include "core/util/strings.h"
#include "forge/decoder.h"
#include "tests/unit/test_helpers.h"

using namespace forge;
using forge::test::builtin_registry;
using forge::test::find_diag;
using forge::test::tiny_vlm_toml;

namespace {

VLM build_moma(std::vector<std::string> overrides = {}) {
  LoadOptions o;
  o.overrides = std::move(overrides);
  auto cfg = load_config_text(tiny_vlm_toml("moma", "linear"), "test.toml", builtin_registry(), o);
  return build_vlm(cfg.job, builtin_registry());
}

torch::nn::Module& module_at(torch::nn::Module& root, const std::string& path) {
  for (const auto& item : root.named_modules())
    if (item.key() == path) return *item.value();
  FAIL("no module " << path);
  throw std::logic_error("unreachable");
}

// One expert's MLP (SwiGLU) on one row.
at::Tensor expert_row(torch::nn::Module& expert, const at::Tensor& x) {
  auto& mlp = *expert.as<nn::MlpImpl>();
  return mlp.down_proj(at::silu(mlp.gate_proj(x)) * mlp.up_proj(x));
}

// The MoMa feed-forward of `layer` on normed rows `xn` (n, D), written out:
// for each modality, the tokens of that modality that are real compete; each
// expert scores every token with sigmoid(gate . x) and takes its k best
// (k = min(n, max(1, ceil(capacity * n)))); a token's output is the sum of
// score * expert(x) over the experts that took it.
at::Tensor direct_ffn(torch::nn::Module& layer, const at::Tensor& xn, const at::Tensor& ids, const at::Tensor& real,
                      const std::map<std::string, double>& capacity) {
  torch::NoGradGuard g;
  at::Tensor out = torch::zeros_like(xn);
  const char* names[] = {"image", "text"};
  for (int64_t m = 0; m < 2; ++m) {
    std::vector<int64_t> rows;
    for (int64_t t = 0; t < xn.size(0); ++t)
      if (ids[t].item<int64_t>() == m && real[t].item<bool>()) rows.push_back(t);
    if (rows.empty()) continue;
    auto& gate = *module_at(layer, fmt::format("mlp.experts.{}.router.gate", names[m])).as<torch::nn::LinearImpl>();
    auto& experts = module_at(layer, fmt::format("mlp.experts.{}.experts", names[m]));
    const int64_t E = gate.weight.size(0), n = static_cast<int64_t>(rows.size());
    const int64_t k = std::min<int64_t>(n, std::max<int64_t>(1, static_cast<int64_t>(std::ceil(capacity.at(names[m]) * n))));
    for (int64_t e = 0; e < E; ++e) {
      std::vector<std::pair<double, int64_t>> scored;
      for (int64_t r : rows) {
        const double logit = at::dot(gate.weight[e], xn[r]).item<double>();
        scored.emplace_back(1.0 / (1.0 + std::exp(-logit)), r);
      }
      std::sort(scored.begin(), scored.end(), [](auto& a, auto& b) { return a.first > b.first; });
      auto& expert = *experts.children()[e];
      for (int64_t j = 0; j < k; ++j) out[scored[j].second] += scored[j].first * expert_row(expert, xn[scored[j].second]);
    }
  }
  return out;
}

// A one-layer MoMa decoder whose attention adds nothing (o_proj = 0), so the
// layer's output is x + ffn(mlp_norm(x)); returns ffn(mlp_norm(x)).
struct OneLayer {
  VLM model{nullptr};
  torch::nn::Module* layer;
  explicit OneLayer(std::vector<std::string> overrides) {
    overrides.push_back("--model.n_layers=1");
    model = build_moma(overrides);
    torch::NoGradGuard g;
    torch::manual_seed(4);
    for (auto& p : model->transformer->parameters()) p.add_(torch::randn_like(p) * 0.1);
    layer = model->transformer->layers["0"].get();
    module_at(*layer, "attention.o_proj").as<torch::nn::LinearImpl>()->weight.zero_();
    model->transformer->set_capture({0});
  }
  at::Tensor ffn(const at::Tensor& x, const at::Tensor& ids, const at::Tensor& real = at::Tensor()) {
    ModalityContext::Fields f;
    f.inputs_embeds = x;
    f.modality_ids = ids;
    f.key_padding_mask = real;
    model->transformer->forward(at::Tensor(), ModalityContext(f));
    return model->transformer->captured().at(0) - x;
  }
  at::Tensor normed(const at::Tensor& x) {
    return module_at(*layer, "mlp_norm").as<nn::NormImpl>()->forward(x);
  }
};

}  // namespace

TEST_CASE("MoMa's expert choice matches a token-by-token computation", "[model][moma]") {
  torch::manual_seed(7);
  const int64_t B = 2, S = 10, D = 32;
  at::Tensor x = torch::randn({B, S, D});
  // Interleaved modalities: routing follows the ids, not positions.
  at::Tensor ids = torch::randint(0, 2, {B, S}, torch::kLong);
  at::Tensor all = torch::ones({B * S}, torch::kBool);
  for (double cf : {0.0, 0.5, 2.0}) {
    DYNAMIC_SECTION("capacity factor " << cf) {
      OneLayer l({"--vlm.moma_capacity_factor=" + std::to_string(cf), "--vlm.moma_experts_per_modality.image=3"});
      l.model->eval();
      at::Tensor got = l.ffn(x, ids);
      std::map<std::string, double> cap{{"image", cf > 0 ? cf : 1.0 / 3}, {"text", cf > 0 ? cf : 1.0 / 4}};
      at::Tensor want = direct_ffn(*l.layer, l.normed(x).reshape({B * S, D}), ids.reshape(-1), all, cap);
      CHECK(at::allclose(got.reshape({B * S, D}), want, 1e-5, 1e-5));
      // With factor 2 every expert takes every token; with 1/E some tokens get none.
      CHECK(got.abs().sum().item<double>() > 0);
    }
  }
}

TEST_CASE("MoMa: padded positions take no expert and do not compete", "[model][moma]") {
  torch::manual_seed(8);
  const int64_t B = 2, S = 9, D = 32;
  at::Tensor x = torch::randn({B, S, D});
  at::Tensor ids = torch::cat({torch::zeros({B, 4}, torch::kLong), torch::ones({B, 5}, torch::kLong)}, 1);
  at::Tensor real = torch::ones({B, S}, torch::kBool);
  real[0].narrow(0, 7, 2).fill_(false);
  real[1].narrow(0, 2, 2).fill_(false);  // padded image positions too
  OneLayer l({"--vlm.moma_capacity_factor=0.5"});
  l.model->eval();
  at::Tensor got = l.ffn(x, ids, real).reshape({B * S, D});
  at::Tensor want = direct_ffn(*l.layer, l.normed(x).reshape({B * S, D}), ids.reshape(-1), real.reshape(-1),
                               {{"image", 0.5}, {"text", 0.5}});
  CHECK(at::allclose(got, want, 1e-5, 1e-5));
  at::Tensor pad = ~real.reshape(-1);
  CHECK(got.index({pad}).abs().max().item<double>() == 0);
}

TEST_CASE("MoMa: Gumbel noise in training only, reproducible from the seed, replayed under checkpointing",
          "[model][moma]") {
  torch::manual_seed(9);
  at::Tensor x = torch::randn({2, 12, 32});
  at::Tensor ids = torch::cat({torch::zeros({2, 6}, torch::kLong), torch::ones({2, 6}, torch::kLong)}, 1);
  OneLayer noisy({});
  noisy.model->eval();
  at::Tensor clean = noisy.ffn(x, ids);
  noisy.model->train();
  torch::manual_seed(1);
  at::Tensor a = noisy.ffn(x, ids);
  torch::manual_seed(1);
  at::Tensor b = noisy.ffn(x, ids);
  CHECK(at::equal(a, b));
  CHECK_FALSE(at::allclose(a, clean));

  OneLayer quiet({"--vlm.moma_gumbel_noise=false"});
  quiet.model->train();
  at::Tensor t = quiet.ffn(x, ids);
  quiet.model->eval();
  CHECK(at::equal(t, quiet.ffn(x, ids)));

  // Activation checkpointing recomputes the block in backward: the noise is
  // drawn again from the same generator state, so gradients are unchanged.
  auto grads = [&](int64_t every) {
    VLM m = build_moma();
    m->train();
    m->transformer->set_activation_checkpointing(every);
    torch::manual_seed(2);
    at::Tensor px = torch::rand({2, 3, 8, 8});
    at::Tensor in = torch::randint(0, 64, {2, 10}, torch::kLong);
    auto out = m->forward(px, in, in);
    at::cross_entropy_loss(out.logits.flatten(0, 1), out.targets.flatten(), {}, at::Reduction::Mean, -100).backward();
    std::map<std::string, at::Tensor> g;
    for (auto& p : m->named_parameters(true))
      if (p.value().grad().defined()) g[p.key()] = p.value().grad().clone();
    return g;
  };
  auto plain = grads(0), recomputed = grads(1);
  REQUIRE(plain.size() == recomputed.size());
  CHECK(plain.count("transformer.layers.1.mlp.experts.text.router.gate.weight"));
  CHECK(plain.count("transformer.layers.0.mlp.experts.image.experts.3.down_proj.weight"));
  for (auto& [name, g] : plain) {
    INFO(name);
    CHECK(at::allclose(g, recomputed.at(name), 1e-6, 1e-7));
  }
}

TEST_CASE("MoMa: the reference's state-dict names, freeze alias and config rules", "[model][moma][config]") {
  VLM m = build_moma({"--vlm.moma_experts_per_modality.text=2"});
  std::set<std::string> names;
  for (auto& p : m->named_parameters(true)) names.insert(p.key());
  for (const char* n : {"transformer.layers.0.attention_norm.weight", "transformer.layers.1.attention.q_proj.weight",
                        "transformer.layers.0.mlp_norm.weight", "transformer.layers.0.mlp.experts.image.router.gate.weight",
                        "transformer.layers.1.mlp.experts.image.experts.3.gate_proj.weight",
                        "transformer.layers.1.mlp.experts.text.experts.1.down_proj.weight", "transformer.norm.weight"})
    CHECK(names.count(n));
  CHECK_FALSE(names.count("transformer.layers.1.mlp.experts.text.experts.2.up_proj.weight"));
  for (const auto& n : names) CHECK_FALSE(util::starts_with(n, "transformer.layers.0.mlp.gate_proj"));
  // Expert hidden size: the reference's rule over the FFN size (dim 32 -> 256, times the multiplier).
  auto& e0 = module_at(*m->transformer->layers["0"], "mlp.experts.text.experts.0");
  CHECK(e0.as<nn::MlpImpl>()->up_proj->weight.size(0) == nn::expert_hidden_size(m->transformer->config().ffn_hidden(), 1.0));

  auto cfg = load_config_text(tiny_vlm_toml("moma"), "t.toml", builtin_registry());
  auto pats = cfg.job.vlm->resolved_module_patterns();
  REQUIRE(pats.count("moma"));
  apply_freeze(*m, {FreezeSpec{"transformer", true}, FreezeSpec{"moma", false}}, pats);
  for (auto& p : m->named_parameters(true)) {
    INFO(p.key());
    CHECK(p.value().requires_grad() ==
          (util::starts_with(p.key(), "transformer.layers.") || util::starts_with(p.key(), "adapter.")));
  }

  auto toml = [](const std::string& extra) {
    auto t = tiny_vlm_toml("moma");
    return t.replace(t.find("[train]"), 7, extra + "[train]");
  };
  // Entries not given keep their default; an entry for no modality is an error.
  auto one = load_config_text(toml("[vlm.moma_experts_per_modality]\nimage = 2\n"), "t.toml", builtin_registry());
  CHECK(to_toml(one.job).find("moma_experts_per_modality = { image = 2, text = 4 }") != std::string::npos);
  auto d = forge::test::config_errors(toml("[vlm.moma_experts_per_modality]\nimage = 2\naudio = 1\n"));
  const auto* e = find_diag(d, "vlm.moma_experts_per_modality");
  REQUIRE(e);
  CHECK_THAT(e->message, Catch::Contains("has entries [audio, image, text]") && Catch::Contains("[image, text]"));
  d = forge::test::config_errors(toml("[vlm.moma_experts_per_modality]\nimage = 0\ntext = 2\n"));
  e = find_diag(d, "vlm.moma_experts_per_modality.image");
  REQUIRE(e);
  CHECK(e->line > 0);
  CHECK_THAT(e->message, Catch::Contains("got 0"));
  d = forge::test::config_errors(toml("[vlm.moma_experts_per_modality]\nimage = \"two\"\ntext = 2\n"));
  REQUIRE(find_diag(d, "vlm.moma_experts_per_modality.image"));
  LoadOptions o;
  o.overrides = {"--model.num_experts=4"};
  d = forge::test::config_errors(tiny_vlm_toml("moma"), o);
  e = find_diag(d, "vlm.arch");
  REQUIRE(e);
  CHECK_THAT(e->message, Catch::Contains("num_experts = 4") && Catch::Contains("moma_experts_per_modality"));
  // The reference's MoMa debug config validates once its Hugging Face dataset is neutralised.
  o.overrides = {"--data.hf_dataset_name="};
  auto ref = load_config(FORGE_SOURCE_DIR "/configs/reference/vlm_debug_moma.toml", builtin_registry(), o);
  CHECK(ref.job.vlm->arch == "moma");
}

TEST_CASE("MoMa: generation is refused with the reason, and the logits are aligned as joint_decoder's", "[model][moma]") {
  VLM m = build_moma();
  m->eval();
  at::Tensor px = torch::rand({2, 3, 8, 8});
  at::Tensor in = torch::randint(0, 64, {2, 10}, torch::kLong);
  GenerateOptions o;
  o.max_new_tokens = 3;
  for (bool cache : {true, false}) {
    o.use_cache = cache;
    CHECK_THROWS_WITH(generate(*m, px, in.narrow(1, 0, 2), o),
                      Catch::Contains("expert choice") && Catch::Contains("forge eval"));
  }
  torch::NoGradGuard g;
  auto out = m->forward(px, in, in);
  const int64_t N = m->residual_image_tokens();
  CHECK(N == m->visual_tokens());
  at::Tensor full = m->transformer->forward(in, m->compose(px, in));
  CHECK(at::equal(out.logits, full.narrow(1, N - 1, 10)));
  // Expert choice is not causal: a later token can change an earlier position's experts.
  bool changed = false;
  for (int64_t v = 0; v < 64 && !changed; ++v) {
    auto other = in.clone();
    other.select(1, 9).fill_(v);
    changed = !at::equal(m->forward(px, other, in).logits.narrow(1, 0, 9), out.logits.narrow(1, 0, 9));
  }
  CHECK(changed);
}
