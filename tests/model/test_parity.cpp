// Numerical parity with independent implementations, on fixtures the Python
// script generates at test time (tests/fixtures/make_fixtures.py).
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/checkpoint/state_dict.h"
#include "core/model/vlm.h"
#include "tests/unit/test_helpers.h"

using namespace forge;

namespace {

std::string data(const std::string& rel) { return std::string(FORGE_TEST_DATA_DIR) + "/" + rel; }

// HF Llama names -> forge decoder names.
std::string forge_name(const std::string& hf) {
  static const std::vector<std::pair<std::string, std::string>> map = {
      {"model.embed_tokens.weight", "token_embedding.embedding.weight"},
      {"model.norm.weight", "norm.weight"},
      {"lm_head.weight", "output_head.proj.weight"},
      {".input_layernorm.", ".attention_norm."},
      {".post_attention_layernorm.", ".mlp_norm."},
      {".self_attn.", ".attention."},
      {"model.layers.", "layers."},
  };
  std::string n = hf;
  for (const auto& [from, to] : map) {
    auto pos = n.find(from);
    if (pos != std::string::npos) n.replace(pos, from.size(), to);
  }
  return n;
}

void llama_parity(const std::string& dir) {
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(data(dir + "/config.json")));
  ModelConfig m;
  m.dim = cfg["hidden_size"];
  m.n_layers = cfg["num_hidden_layers"];
  m.n_heads = cfg["num_attention_heads"];
  m.n_kv_heads = cfg["num_key_value_heads"].get<int64_t>();
  m.vocab_size = cfg["vocab_size"];
  m.ffn_hidden_dim = cfg["intermediate_size"].get<int64_t>();
  m.rope_theta = cfg["rope_theta"];
  m.norm_eps = cfg["rms_norm_eps"];
  m.max_seq_len = cfg["max_position_embeddings"];
  m.tie_embeddings = cfg["tie_word_embeddings"];
  Decoder d = build_text_decoder(m);

  safetensors::File weights(data(dir + "/model.safetensors"));
  std::map<std::string, at::Tensor> mapped;
  for (const auto& t : weights.tensors()) mapped[forge_name(t.name)] = weights.load(t.name);
  if (m.tie_embeddings) {
    // HF stores the tied head once; forge's state dict names it twice (one tensor).
    REQUIRE_FALSE(mapped.count("output_head.proj.weight"));
    mapped["output_head.proj.weight"] = mapped.at("token_embedding.embedding.weight");
  }
  auto report = load_state_dict(*d, TensorSource::from_map(mapped, dir), /*strict=*/true);
  CHECK(report.loaded == static_cast<int64_t>(state_dict(*d).size()));
  if (m.tie_embeddings) {
    CHECK(d->output_head->proj->weight.data_ptr() == d->token_embedding->embedding->weight.data_ptr());
  }

  safetensors::File io(data(dir + "/io.safetensors"));
  at::Tensor ids = io.load("input_ids");
  at::Tensor want = io.load("logits");
  torch::NoGradGuard g;
  at::Tensor got = d->forward(ids);
  REQUIRE(got.sizes() == want.sizes());
  double err = (got - want).abs().max().item<double>();
  INFO("max abs error vs HF transformers: " << err);
  CHECK(err < 1e-4);
}

}  // namespace

TEST_CASE("Llama parity: forge's decoder matches HF transformers (GQA, rope_theta 5e5, untied)", "[parity]") {
  llama_parity("llama");
}

TEST_CASE("Llama parity with tied embeddings", "[parity]") { llama_parity("llama_tied"); }

TEST_CASE("the random stub matches KempnerForge's seeding rule", "[parity]") {
  auto& reg = forge::test::builtin_registry();
  auto cfg = make_encoder_config(reg, "random");
  cfg->num_tokens = 16;
  cfg->feature_dim = 8;
  BuildContext ctx{named_logger("test"), 0};
  auto enc = reg.encoder("random")->create(*cfg, ctx);
  safetensors::File io(data("random_stub/io.safetensors"));
  at::Tensor got = enc->forward(io.load("pixels"));
  CHECK(at::equal(got, io.load("features")));
}
