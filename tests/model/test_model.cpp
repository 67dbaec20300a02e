// The model core and its arch/adapter plugins: shapes, identity at init,
// token counts, context invariants, D1 alignment, generation, gradients,
// state-dict round trip.
#include "core/checkpoint/state_dict.h"
#include "core/util/strings.h"
#include "core/model/vlm.h"
#include "tests/unit/test_helpers.h"

using namespace forge;
using forge::test::builtin_registry;
using forge::test::tiny_vlm_toml;

namespace {

// Causal archs (D1 checks, KV-cache generation); moma's expert choice is not
// causal (tests/model/test_moma.cpp) but builds and round-trips like the rest.
const char* kArchs[] = {"joint_decoder", "cross_attention", "mot"};
const char* kAllArchs[] = {"joint_decoder", "cross_attention", "mot", "moma"};
const char* kAdapters[] = {"mlp_2layer", "linear", "avgpool", "attentional_pool"};

LoadedConfig load(const std::string& text, const std::vector<std::string>& overrides = {}) {
  LoadOptions o;
  o.overrides = overrides;
  return load_config_text(text, "test.toml", builtin_registry(), o);
}

VLM build(const std::string& arch, const std::string& adapter, const std::vector<std::string>& overrides = {}) {
  auto cfg = load(tiny_vlm_toml(arch, adapter), overrides);
  return build_vlm(cfg.job, builtin_registry());
}

at::Tensor pixels(int64_t b, int64_t size = 8, uint64_t seed = 0) {
  torch::manual_seed(seed);
  return torch::rand({b, 3, size, size}) * 2 - 1;
}

at::Tensor ids(int64_t b, int64_t t, int64_t vocab = 64, uint64_t seed = 1) {
  torch::manual_seed(seed);
  return torch::randint(0, vocab, {b, t}, torch::kLong);
}

// A text-only decoder's config (n_kv_heads 0: as many as n_heads).
ModelConfig text_model(int64_t dim, int64_t layers, int64_t heads, int64_t kv_heads, int64_t vocab, int64_t max_seq) {
  ModelConfig m;
  m.dim = dim;
  m.n_layers = layers;
  m.n_heads = heads;
  if (kv_heads > 0) m.n_kv_heads = kv_heads;
  m.vocab_size = vocab;
  m.max_seq_len = max_seq;
  return m;
}

bool has_param(const torch::nn::Module& m, const std::string& name) {
  for (const auto& p : m.named_parameters(true))
    if (p.key() == name) return true;
  return false;
}

}  // namespace

TEST_CASE("every arch x adapter builds and produces aligned logits", "[model][shapes]") {
  for (const char* arch : kAllArchs) {
    for (const char* adapter : kAdapters) {
      DYNAMIC_SECTION(arch << " + " << adapter) {
        VLM m = build(arch, adapter);
        const bool pooled = std::string(adapter) == "avgpool" || std::string(adapter) == "attentional_pool";
        CHECK(m->visual_tokens() == (pooled ? 4 : 16));  // 16 stub tokens, window 2 -> 4
        const bool ca = std::string(arch) == "cross_attention";
        CHECK(m->residual_image_tokens() == (ca ? 0 : m->visual_tokens()));
        auto in = ids(2, 12);
        auto out = m->forward(pixels(2), in, in);
        const int64_t T = ca ? 11 : 12;
        CHECK(out.logits.sizes() == at::IntArrayRef({2, T, 64}));
        CHECK(out.targets.sizes() == at::IntArrayRef({2, T}));
        CHECK(out.logits.isfinite().all().item<bool>());
      }
    }
  }
}

TEST_CASE("state-dict names follow the reference catalogue", "[model]") {
  VLM jd = build("joint_decoder", "mlp_2layer");
  for (const char* n : {"adapter.proj1.weight", "adapter.proj2.bias", "transformer.token_embedding.embedding.weight",
                        "transformer.layers.0.attention_norm.weight", "transformer.layers.1.attention.k_proj.weight",
                        "transformer.layers.0.mlp.gate_proj.weight", "transformer.norm.weight",
                        "transformer.output_head.proj.weight"})
    CHECK(has_param(*jd, n));
  CHECK_FALSE(has_param(*jd, "transformer.cross_attention_layers.0.attn.q_proj.weight"));

  // CA: cadence 1 over 2 layers -> blocks 0 and 1.
  VLM ca = build("cross_attention", "attentional_pool");
  for (const char* n : {"transformer.cross_attention_layers.0.attn_norm.weight",
                        "transformer.cross_attention_layers.1.attn.v_proj.weight",
                        "transformer.cross_attention_layers.1.mlp.down_proj.weight", "adapter.q_proj.weight",
                        "adapter.out_proj.bias"})
    CHECK(has_param(*ca, n));
  CHECK_FALSE(has_param(*ca, "transformer.cross_attention_layers.2.attn.q_proj.weight"));

  // Cadence 2 over 2 layers: one block, after layer 1.
  VLM ca2 = build("cross_attention", "linear", {"--vlm.cross_attention_every_n_layers=2"});
  CHECK(has_param(*ca2, "transformer.cross_attention_layers.0.attn.o_proj.weight"));
  CHECK_FALSE(has_param(*ca2, "transformer.cross_attention_layers.1.attn.o_proj.weight"));

  VLM mot = build("mot", "avgpool");
  for (const char* n : {"transformer.layers.0.attn_norm.image.weight", "transformer.layers.0.attn.q_proj.text.weight",
                        "transformer.layers.1.attn.o_proj.image.weight", "transformer.layers.1.mlp_norm.text.weight",
                        "transformer.layers.0.mlp.image.down_proj.weight", "transformer.mot_norms.image.weight",
                        "transformer.mot_norms.text.weight", "transformer.norm.weight", "adapter.proj.weight"})
    CHECK(has_param(*mot, n));
}

TEST_CASE("MoT splits by position: image rows use image weights, text rows text weights", "[model][mot]") {
  VLM m = build("mot", "linear");
  {
    torch::NoGradGuard g;  // leave the zero-init identity so every weight matters
    torch::manual_seed(4);
    for (auto& p : m->parameters()) p.add_(torch::randn_like(p) * 0.05);
  }
  auto in = ids(1, 12);
  auto px = pixels(1);
  auto base = m->forward(px, in).logits;
  // Perturbing a text-only weight changes no image position but changes text logits;
  // since logits come only from text positions (and the last image position), check via hidden rows:
  ModalityContext ctx = m->compose(px, in);
  CHECK(ctx.modality_ids().sizes() == at::IntArrayRef({1, 28}));
  CHECK(ctx.modality_ids().narrow(1, 0, 16).eq(0).all().item<bool>());
  CHECK(ctx.modality_ids().narrow(1, 16, 12).eq(1).all().item<bool>());
  {
    torch::NoGradGuard g;
    for (auto& p : m->named_parameters(true))
      if (p.key() == "transformer.layers.0.attn.v_proj.image.weight") p.value().add_(1.0);
  }
  // The image's values now differ, and text attends to the image: text logits change.
  auto after = m->forward(px, in).logits;
  CHECK_FALSE(at::equal(base, after));
  // A text-only weight cannot change the image positions: the first logit (from the
  // last image position) only depends on image rows, so it stays.
  {
    torch::NoGradGuard g;
    for (auto& p : m->named_parameters(true))
      if (p.key() == "transformer.layers.1.mlp.text.up_proj.weight") p.value().add_(1.0);
  }
  auto text_changed = m->forward(px, in).logits;
  CHECK(at::equal(text_changed.select(1, 0), after.select(1, 0)));
  CHECK_FALSE(at::equal(text_changed.select(1, 5), after.select(1, 5)));
}

TEST_CASE("a fresh cross-attention block and a fresh MoT block are exact identities", "[model][init]") {
  torch::NoGradGuard g;
  torch::manual_seed(5);
  at::Tensor h = torch::randn({2, 7, 32});
  nn::RotaryEmbedding rope(8, 64, 10000.0);
  auto [cos, sin] = rope.rows(torch::arange(7), at::kFloat);
  SECTION("cross_attention") {
    VLM m = build("cross_attention", "linear");
    ModalityContext::Fields f;
    f.image_features = torch::randn({2, 16, 32});
    ModalityContext ctx(f);
    DecoderStep step{ctx, nn::AttentionInputs{cos, sin, 0, {}, {}}, nullptr, 0, 7};
    at::Tensor out = m->transformer->hooks().after_layer(0, h, step);  // cadence 1: a CA block runs
    CHECK(at::equal(out, h));
    // And then the image cannot change the logits of a fresh model.
    auto in = ids(2, 9);
    CHECK(at::equal(m->forward(pixels(2, 8, 1), in).logits, m->forward(pixels(2, 8, 2), in).logits));
  }
  SECTION("mot") {
    // 16 image positions then 7 text positions: both modalities' weights run.
    VLM m = build("mot", "linear");
    REQUIRE(m->residual_image_tokens() == 16);
    at::Tensor both = torch::randn({2, 23, 32});
    auto [cos23, sin23] = rope.rows(torch::arange(23), at::kFloat);
    ModalityContext ctx;
    DecoderStep step{ctx, nn::AttentionInputs{cos23, sin23, 0, {}, {}}, nullptr, 0, 23};
    for (const auto& layer : m->transformer->layer_list()) CHECK(at::equal(layer->forward(both, step, nullptr), both));
    // Not vacuous: once the text weights' output projections are non-zero, only the text rows change.
    {
      torch::manual_seed(6);
      for (auto& p : m->named_parameters(true))
        if (p.key().find(".text.") != std::string::npos && p.key().find("o_proj") != std::string::npos)
          p.value().add_(torch::randn_like(p.value()) * 0.1);
    }
    at::Tensor out = m->transformer->layer_list().front()->forward(both, step, nullptr);
    CHECK(at::equal(out.narrow(1, 0, 16), both.narrow(1, 0, 16)));
    CHECK_FALSE(at::equal(out.narrow(1, 16, 7), both.narrow(1, 16, 7)));
  }
}

TEST_CASE("adapter token counts", "[model][adapter]") {
  CHECK(pooled_token_count(196, 2) == 49);
  CHECK(pooled_token_count(729, 3) == 81);
  CHECK(pooled_token_count(729, 2) == 196);
  CHECK(pooled_token_count(16, 3) == 4);
  CHECK_THROWS_WITH(pooled_token_count(197, 2), Catch::Contains("197 encoder tokens do not form a square grid") &&
                                                    Catch::Contains("CLS"));
  CHECK_THROWS_AS(pooled_token_count(196, 0), UserError);

  // The modules agree with what they report, for 729 = 27 x 27 tokens.
  auto& reg = builtin_registry();
  BuildContext ctx{named_logger("test"), 0};
  for (const char* type : {"avgpool", "attentional_pool"}) {
    auto cfg = make_adapter_config(reg, type);
    cfg->pool_window = 2;
    cfg->pool_heads = 4;
    auto a = reg.adapter(type)->create(*cfg, 8, 16, ctx);
    CHECK(a->output_num_tokens(729) == 196);
    CHECK(reg.adapter(type)->output_num_tokens(*cfg, 729) == 196);
    CHECK(a->forward(torch::randn({2, 729, 8})).sizes() == at::IntArrayRef({2, 196, 16}));
  }
}

TEST_CASE("pooling averages ragged edge windows over their real cells only", "[model][adapter]") {
  torch::NoGradGuard g;
  auto& reg = builtin_registry();
  BuildContext ctx{named_logger("test"), 0};
  auto cfg = make_adapter_config(reg, "avgpool");
  cfg->pool_window = 2;
  auto a = reg.adapter("avgpool")->create(*cfg, 4, 5, ctx);
  at::Tensor x = torch::randn({1, 9, 4});  // 3 x 3 grid -> 2 x 2 windows
  at::Tensor W, b;
  for (auto& p : a->named_parameters(true)) {
    if (p.key() == "proj.weight") W = p.value();
    if (p.key() == "proj.bias") b = p.value();
  }
  auto grid = x.view({3, 3, 4});
  std::vector<at::Tensor> means = {
      (grid[0][0] + grid[0][1] + grid[1][0] + grid[1][1]) / 4, (grid[0][2] + grid[1][2]) / 2,
      (grid[2][0] + grid[2][1]) / 2, grid[2][2]};
  at::Tensor expected = at::linear(at::stack(means).unsqueeze(0), W, b);
  CHECK(at::allclose(a->forward(x), expected, 1e-5, 1e-6));

  // attentional_pool: the bottom-right window holds one real patch, so its
  // token is out_proj(o_proj(v_proj(that patch))).
  auto acfg = make_adapter_config(reg, "attentional_pool");
  acfg->pool_window = 2;
  acfg->pool_heads = 2;
  auto ap = reg.adapter("attentional_pool")->create(*acfg, 4, 5, ctx);
  std::map<std::string, at::Tensor> P;
  for (auto& p : ap->named_parameters(true)) P[p.key()] = p.value();
  at::Tensor v = at::linear(grid[2][2], P["v_proj.weight"], P["v_proj.bias"]);
  at::Tensor o = at::linear(at::linear(v, P["o_proj.weight"], P["o_proj.bias"]), P["out_proj.weight"], P["out_proj.bias"]);
  CHECK(at::allclose(ap->forward(x)[0][3], o, 1e-5, 1e-6));
}

TEST_CASE("ModalityContext invariants", "[model][context]") {
  auto t3 = torch::zeros({1, 2, 4});
  using F = ModalityContext::Fields;
  auto make = [](F f) { return ModalityContext(std::move(f)); };
  CHECK_THROWS_WITH(make(F{t3, t3}), Catch::Contains("at most one of inputs_embeds, prefix_embeds and image_features"));
  F mask_only;
  mask_only.image_mask = torch::ones({1, 2}, torch::kBool);
  CHECK_THROWS_WITH(make(mask_only), Catch::Contains("image_mask requires image_features"));
  F mod_only;
  mod_only.modality_ids = torch::zeros({1, 2}, torch::kLong);
  mod_only.image_features = t3;
  CHECK_THROWS_WITH(make(mod_only), Catch::Contains("modality_ids requires prefix_embeds or inputs_embeds"));
  F kpm;  // with token ids alone: a generation step whose cache holds a clip's padding frames
  kpm.key_padding_mask = torch::ones({1, 2}, torch::kBool);
  CHECK_NOTHROW(make(kpm));
  kpm.key_padding_mask = torch::ones({1, 2}, torch::kLong);
  CHECK_THROWS_WITH(make(kpm), Catch::Contains("key_padding_mask must be bool (B, S)"));
  F bad_ids;
  bad_ids.prefix_embeds = t3;
  bad_ids.modality_ids = torch::zeros({1, 2}, torch::kInt);
  CHECK_THROWS_WITH(make(bad_ids), Catch::Contains("modality_ids must be int64"));
  F bad_mask;
  bad_mask.image_features = t3;
  bad_mask.image_mask = torch::ones({1, 3}, torch::kBool);
  CHECK_THROWS_WITH(make(bad_mask), Catch::Contains("image_mask must be bool (B, N)"));
  F flat;
  flat.prefix_embeds = torch::zeros({2, 4});
  CHECK_THROWS_WITH(make(flat), Catch::Contains("prefix_embeds must be (B, N, D)"));
  F ok;
  ok.prefix_embeds = t3;
  ok.modality_ids = torch::zeros({1, 5}, torch::kLong);
  CHECK_NOTHROW(make(ok));
}

TEST_CASE("decoder argument checks", "[model][decoder]") {
  ModelConfig m = text_model(32, 1, 4, 0, 50, 16);
  Decoder d = build_text_decoder(m);
  auto tok = torch::zeros({1, 4}, torch::kLong);
  ModalityContext::Fields f;
  f.inputs_embeds = torch::zeros({1, 4, 32});
  CHECK_THROWS_WITH(d->forward(tok, ModalityContext(f)), Catch::Contains("exactly one of tokens and modality.inputs_embeds (got both)"));
  CHECK_THROWS_WITH(d->forward(at::Tensor()), Catch::Contains("(got neither)"));
  CHECK_THROWS_WITH(d->forward(torch::zeros({1, 17}, torch::kLong)), Catch::Contains("exceed model.max_seq_len = 16"));
  CHECK_THROWS_WITH(d->forward(torch::zeros({4}, torch::kLong)), Catch::Contains("tokens must be (B, T) int64"));
  KVCache cache = d->make_cache(1, 8, at::kFloat, at::kCPU);
  d->forward(tok, ModalityContext(), &cache);
  ModalityContext::Fields p;
  p.prefix_embeds = torch::zeros({1, 2, 32});
  CHECK_THROWS_WITH(d->forward(tok, ModalityContext(p), &cache), Catch::Contains("first (prefill) call"));
  KVCache c2 = d->make_cache(1, 8, at::kFloat, at::kCPU);
  CHECK_THROWS_WITH(d->forward(tok, ModalityContext(), &c2, torch::zeros({1, 4}, torch::kLong)),
                    Catch::Contains("doc_ids are training-only"));
  ModalityContext::Fields keys;
  keys.key_padding_mask = torch::ones({1, 4}, torch::kBool);
  d->forward(tok, ModalityContext(keys), &c2);  // positions 0-3
  CHECK_THROWS_WITH(d->forward(tok.narrow(1, 0, 1), ModalityContext(keys), &c2),
                    Catch::Contains("key_padding_mask is (1, 4); it must be (B, cached + new positions) = (1, 5) "
                                    "with 4 positions in the KV cache"));
  ModalityContext::Fields short_keys;
  short_keys.key_padding_mask = torch::ones({1, 3}, torch::kBool);
  CHECK_THROWS_WITH(d->forward(tok, ModalityContext(short_keys)),
                    Catch::Contains("key_padding_mask is (1, 3); it must be (B, positions) = (1, 4)"));
  short_keys.key_padding_mask = torch::ones({2, 4}, torch::kBool);
  CHECK_THROWS_WITH(d->forward(tok, ModalityContext(short_keys)),
                    Catch::Contains("key_padding_mask is (2, 4); it must be (B, positions) = (1, 4)"));
  CHECK_THROWS_WITH(d->make_cache(1, 17, at::kFloat, at::kCPU), Catch::Contains("exceeds model.max_seq_len"));
}

TEST_CASE("doc_ids: a position attends only within its own document", "[model][decoder]") {
  ModelConfig mc = text_model(32, 2, 4, 2, 40, 32);
  torch::manual_seed(8);
  Decoder d = build_text_decoder(mc);
  torch::NoGradGuard g;
  at::Tensor a = ids(2, 5, 40, 1), b = ids(2, 4, 40, 2);
  at::Tensor packed = at::cat({a, b}, 1);
  at::Tensor docs = at::cat({at::zeros({2, 5}, at::kLong), at::ones({2, 4}, at::kLong)}, 1);
  at::Tensor both = d->forward(packed, ModalityContext(), nullptr, docs);
  // Each document matches running it alone (an explicit mask instead of SDPA's causal flag, and for
  // the second RoPE's offset of 5, change only rounding: RoPE is relative).
  CHECK(at::allclose(both.narrow(1, 0, 5), d->forward(a), 1e-5, 1e-5));
  CHECK(at::allclose(both.narrow(1, 5, 4), d->forward(b), 1e-5, 1e-5));
  // Without the mask the second document sees the first one.
  CHECK_FALSE(at::allclose(d->forward(packed).narrow(1, 5, 4), d->forward(b), 1e-3, 1e-3));
}

TEST_CASE("init: std init_std, output projections init_std / sqrt(2 n_layers)", "[model][init]") {
  ModelConfig mc = text_model(256, 8, 4, 4, 512, 32);
  mc.init_std = 0.05;
  torch::manual_seed(9);
  Decoder d = build_text_decoder(mc);
  int checked = 0;
  for (const auto& p : d->named_parameters(true)) {
    if (p.value().dim() < 2) continue;
    const bool out = util::ends_with(p.key(), "o_proj.weight") || util::ends_with(p.key(), "down_proj.weight");
    const double want = out ? 0.05 / std::sqrt(16.0) : 0.05;
    INFO(p.key());
    CHECK(p.value().std().item<double>() == Approx(want).epsilon(0.05));
    CHECK(std::abs(p.value().mean().item<double>()) < want / 10);
    ++checked;
  }
  CHECK(checked == 2 + 8 * 7);  // embedding and head; q, k, v, o, gate, up, down per layer
}

TEST_CASE("D1: the loss at caption position t uses the logit from position t-1", "[model][d1]") {
  for (const char* arch : kArchs) {
    DYNAMIC_SECTION(arch) {
      torch::NoGradGuard g;
      VLM m = build(arch, "linear");
      auto px = pixels(2);
      auto in = ids(2, 10);
      auto labels = in.clone();
      labels.select(1, 9).fill_(-100);
      auto out = m->forward(px, in, labels);
      const int64_t N = m->residual_image_tokens();
      // The full residual stream's logits, computed without any slice.
      at::Tensor full = m->transformer->forward(in, m->compose(px, in));
      if (N > 0) {
        CHECK(at::equal(out.targets, labels));
        CHECK(at::equal(out.logits, full.narrow(1, N - 1, 10)));  // logit t from position N-1+t
      } else {
        CHECK(at::equal(out.targets, labels.narrow(1, 1, 9)));  // target t+1 ...
        CHECK(at::equal(out.logits, full.narrow(1, 0, 9)));     // ... from text position t
      }
      // By construction: the logit scored against token t never sees token t.
      for (int64_t t = 0; t < out.targets.size(1); ++t) {
        const int64_t token_pos = N > 0 ? t : t + 1;  // index into input_ids of the target
        auto changed = in.clone();
        changed.select(1, token_pos).fill_((in[0][token_pos].item<int64_t>() + 1) % 64);
        auto out2 = m->forward(px, changed, labels);
        CHECK(at::equal(out2.logits.narrow(1, 0, t + 1), out.logits.narrow(1, 0, t + 1)));
      }
    }
  }
}

TEST_CASE("generation with the KV cache equals re-running the whole sequence", "[model][generate]") {
  GenerateOptions o;
  o.max_new_tokens = 10;
  SECTION("text only") {
    ModelConfig m = text_model(32, 2, 4, 2, 40, 32);
    m.qk_norm = true;
    torch::manual_seed(3);
    Decoder d = build_text_decoder(m);
    auto prompt = ids(2, 5, 40);
    auto cached = generate_text(*d, prompt, o);
    o.use_cache = false;
    auto plain = generate_text(*d, prompt, o);
    CHECK(cached.sizes() == at::IntArrayRef({2, 10}));
    CHECK(at::equal(cached, plain));
  }
  for (const char* arch : kArchs) {
    DYNAMIC_SECTION(arch) {
      // Train-like weights: break the zero-init identities so every part matters.
      VLM m = build(arch, "avgpool");
      {
        torch::NoGradGuard g;
        torch::manual_seed(11);
        for (auto& p : m->parameters()) p.add_(torch::randn_like(p) * 0.05);
      }
      auto px = pixels(2);
      for (int64_t P : {0, 3}) {
        if (P == 0 && std::string(arch) == "cross_attention") continue;  // needs a BOS token
        auto prompt = ids(2, P);
        o.use_cache = true;
        auto cached = generate(*m, px, prompt, o);
        o.use_cache = false;
        auto plain = generate(*m, px, prompt, o);
        CHECK(cached.size(1) == 10);
        CHECK(at::equal(cached, plain));
      }
    }
  }
}

TEST_CASE("generation options: EOS stop, top-k 1 equals greedy, length checks", "[model][generate]") {
  VLM m = build("joint_decoder", "linear");
  auto px = pixels(1);
  auto prompt = ids(1, 2);
  GenerateOptions greedy;
  greedy.max_new_tokens = 6;
  auto g = generate(*m, px, prompt, greedy);
  GenerateOptions eos = greedy;
  eos.eos_id = g[0][2].item<int64_t>();
  auto stopped = generate(*m, px, prompt, eos);
  CHECK(stopped.size(1) <= 3);
  CHECK(stopped[0][stopped.size(1) - 1].item<int64_t>() == eos.eos_id);
  GenerateOptions k1 = greedy;
  k1.temperature = 0.7;
  k1.top_k = 1;
  CHECK(at::equal(generate(*m, px, prompt, k1), g));
  GenerateOptions p_small = greedy;
  p_small.temperature = 1.0;
  p_small.top_p = 1e-6;  // only the most likely token survives
  CHECK(at::equal(generate(*m, px, prompt, p_small), g));
  GenerateOptions too_long = greedy;
  too_long.max_new_tokens = 100;
  CHECK_THROWS_WITH(generate(*m, px, prompt, too_long), Catch::Contains("exceeds model.max_seq_len = 64"));
  VLM ca = build("cross_attention", "linear");
  CHECK_THROWS_WITH(generate(*ca, px, ids(1, 0), greedy), Catch::Contains("needs at least one prompt token"));
}

TEST_CASE("gradients reach exactly the parts that train", "[model][grad]") {
  auto loss_of = [](VLM& m) {
    auto in = ids(2, 10);
    auto out = m->forward(pixels(2), in, in);
    return at::cross_entropy_loss(out.logits.flatten(0, 1), out.targets.flatten(), {}, at::Reduction::Mean, -100);
  };
  SECTION("cross-attention blocks receive gradients") {
    VLM m = build("cross_attention", "mlp_2layer");
    loss_of(m).backward();
    for (auto& p : m->named_parameters(true)) {
      INFO(p.key());
      CHECK(p.value().grad().defined());
    }
    // The zero-initialised output projections are what learns first; until
    // they move, the blocks are identities and the image path has no effect.
    for (auto& p : m->named_parameters(true)) {
      if (p.key() == "transformer.cross_attention_layers.0.attn.o_proj.weight" ||
          p.key() == "transformer.cross_attention_layers.1.mlp.down_proj.weight")
        CHECK(p.value().grad().abs().sum().item<double>() > 0);
      if (p.key() == "adapter.proj1.weight") CHECK(p.value().grad().abs().sum().item<double>() == 0);
    }
  }
  SECTION("a frozen transformer gets no gradient, the adapter does") {
    VLM m = build("joint_decoder", "linear");
    auto cfg = load(tiny_vlm_toml("joint_decoder", "linear"));
    apply_freeze(*m, {FreezeSpec{"transformer", true}}, cfg.job.vlm->resolved_module_patterns());
    loss_of(m).backward();
    for (auto& p : m->named_parameters(true)) {
      INFO(p.key());
      CHECK(p.value().grad().defined() == util::starts_with(p.key(), "adapter."));
    }
  }
  SECTION("MoT: both modalities' weights train; the shared final norm is frozen and unused") {
    VLM m = build("mot", "linear");
    loss_of(m).backward();
    for (auto& p : m->named_parameters(true)) {
      INFO(p.key());
      CHECK(p.value().grad().defined() == (p.key() != "transformer.norm.weight"));
    }
  }
  SECTION("the random stub has no parameters") {
    VLM m = build("joint_decoder", "linear");
    CHECK(m->vision_encoder->parameters().empty());
    CHECK(m->encoder_frozen());
  }
}

TEST_CASE("freeze specs: aliases, raw patterns, and a pattern that matches nothing", "[model][freeze]") {
  VLM m = build("cross_attention", "linear");
  auto cfg = load(tiny_vlm_toml("cross_attention", "linear"));
  auto pats = cfg.job.vlm->resolved_module_patterns();
  auto flipped = apply_freeze(*m, {FreezeSpec{"transformer", true}, FreezeSpec{"cross_attention", false},
                                   FreezeSpec{"transformer.layers.1.*", false}},
                              pats);
  CHECK(flipped.at("transformer") > 0);
  for (auto& p : m->named_parameters(true)) {
    INFO(p.key());
    bool trainable = util::starts_with(p.key(), "adapter.") ||
                     util::starts_with(p.key(), "transformer.cross_attention_layers.") ||
                     util::starts_with(p.key(), "transformer.layers.1.");
    CHECK(p.value().requires_grad() == trainable);
  }
  CHECK_THROWS_WITH(apply_freeze(*m, {FreezeSpec{"trnsformer.*", true}}, pats),
                    Catch::Contains("\"trnsformer.*\" matches no parameter"));
  // Every stage is checked up front, so a typo in a late stage fails before training starts.
  cfg.job.vlm->freeze = {FreezeSpec{"vision_encoder", true}};
  cfg.job.vlm->freeze_schedule = {{0, {FreezeSpec{"adapter", true}}}, {900, {FreezeSpec{"transformer.layrs.*", false}}}};
  CHECK_THROWS_WITH(check_freeze_specs(*m, *cfg.job.vlm),
                    Catch::Contains("vlm.freeze_schedule[1] (start_step = 900) specs[0]: module = "
                                    "\"transformer.layrs.*\" matches no parameter"));
  cfg.job.vlm->freeze_schedule[1].specs[0].module = "transformer.layers.*";
  CHECK_NOTHROW(check_freeze_specs(*m, *cfg.job.vlm));
  // effective_freeze: stages overwrite by module, in start order.
  std::vector<FreezeStage> sched{{5, {FreezeSpec{"adapter", true}}}, {0, {FreezeSpec{"vision_encoder", false}}}};
  auto e0 = effective_freeze(0, {FreezeSpec{"vision_encoder", true}}, sched);
  REQUIRE(e0.size() == 1);
  CHECK_FALSE(e0[0].frozen);
  auto e5 = effective_freeze(5, {FreezeSpec{"vision_encoder", true}}, sched);
  REQUIRE(e5.size() == 2);
  CHECK(e5[1].module == "adapter");
}

TEST_CASE("a state dict saved by forge and reloaded reproduces the logits exactly", "[model][state]") {
  forge::test::TempDir dir;
  for (const char* arch : kAllArchs) {
    DYNAMIC_SECTION(arch) {
      VLM a = build(arch, "attentional_pool");
      {
        torch::NoGradGuard g;
        for (auto& p : a->parameters()) p.add_(torch::randn_like(p) * 0.01);
      }
      std::string path = dir.str() + "/" + arch + ".safetensors";
      save_state_dict(*a, path);
      VLM b = build(arch, "attentional_pool", {"--train.seed=999"});
      a->eval();  // no training-time randomness (MoMa's router noise)
      b->eval();
      auto px = pixels(2);
      auto in = ids(2, 8);
      CHECK_FALSE(at::equal(a->forward(px, in).logits, b->forward(px, in).logits));
      safetensors::File f(path);
      auto report = load_state_dict(*b, TensorSource::from_file(f), /*strict=*/true);
      CHECK(report.missing.empty());
      CHECK(at::equal(a->forward(px, in).logits, b->forward(px, in).logits));
    }
  }
  // A mismatch is a clear error naming the file and the key.
  VLM jd = build("joint_decoder", "linear");
  std::string p = dir.str() + "/jd.safetensors";
  save_state_dict(*jd, p);
  VLM bigger = build("joint_decoder", "linear", {"--model.vocab_size=65"});
  safetensors::File f(p);
  CHECK_THROWS_WITH(load_state_dict(*bigger, TensorSource::from_file(f), true),
                    Catch::Contains(p) && Catch::Contains("transformer.token_embedding.embedding.weight") &&
                        Catch::Contains("(64, 32)"));
}
