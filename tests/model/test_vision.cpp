// Vision towers (encoder/siglip, encoder/clip): parity with HF transformers,
// loading errors, every arch x adapter x encoder, frozen vs trained towers.
#include <torch/optim/adamw.h>

#include <fstream>

#include <fmt/format.h>

#include "core/checkpoint/state_dict.h"
#include "core/model/vlm.h"
#include "core/training/loss.h"
#include "core/training/optim.h"
#include "core/util/strings.h"
#include "tests/unit/test_helpers.h"

using namespace forge;
using forge::test::error_of;
using forge::test::builtin_registry;
using forge::test::TempDir;

namespace {

std::string fixture(const std::string& rel) { return std::string(FORGE_TEST_DATA_DIR) + "/" + rel; }

std::shared_ptr<VisionEncoder> encoder_at(const std::string& type, const std::string& path, int64_t image_size = 0) {
  auto& reg = builtin_registry();
  std::string toml = "[vision_encoder]\ntype = \"" + type + "\"\npath = \"" + path + "\"\n";
  if (image_size) toml += "image_size = " + std::to_string(image_size) + "\n";
  auto cfg = load_config_text(toml, "test.toml", reg);
  BuildContext ctx{named_logger("test"), 0};
  return reg.hold("encoder", type, reg.encoder(type)->create(*cfg.job.vision_encoder, ctx));
}

double parity(const std::string& type, const std::string& dir, const char* px = "pixels", const char* want = "hidden",
              int64_t image_size = 0) {
  auto enc = encoder_at(type, fixture(dir), image_size);
  safetensors::File io(fixture(dir + "/io.safetensors"));
  torch::NoGradGuard g;
  at::Tensor got = enc->forward(io.load(px));
  at::Tensor expected = io.load(want);
  REQUIRE(got.sizes() == expected.sizes());
  CHECK(enc->num_tokens() == expected.size(1));
  CHECK(enc->feature_dim() == expected.size(2));
  return (got - expected).abs().max().item<double>();
}

void copy_dir(const std::string& from, const std::string& to) {
  std::filesystem::copy(from, to, std::filesystem::copy_options::recursive);
}

}  // namespace

TEST_CASE("SigLIP parity with HF transformers", "[vision][parity]") {
  for (const char* dir : {"siglip", "siglip_full", "siglip_sharded"}) {
    double err = parity("siglip", dir);
    INFO(dir << ": max abs error " << err);
    CHECK(err < 1e-4);
  }
}

TEST_CASE("SigLIP2 (NaFlex) parity at the table's resolution and at another one", "[vision][parity]") {
  double err16 = parity("siglip2", "siglip2");
  double err24 = parity("siglip2", "siglip2", "pixels_24", "hidden_24", 24);
  INFO("16x16: " << err16 << ", 24x24 (position table resized): " << err24);
  CHECK(err16 < 1e-4);
  CHECK(err24 < 1e-4);
}

TEST_CASE("CLIP parity with HF transformers (class token removed)", "[vision][parity]") {
  for (const char* dir : {"clip", "clip_full"}) {
    double err = parity("clip", dir);
    INFO(dir << ": max abs error " << err);
    CHECK(err < 1e-4);
  }
}

TEST_CASE("feature_layer = k gives HF's hidden_states[k] (LLaVA's vision_feature_layer)", "[vision][parity]") {
  auto& reg = builtin_registry();
  for (const char* type : {"siglip", "clip"}) {
    safetensors::File io(fixture(std::string(type) + "/io.safetensors"));
    for (int k : {-1, -2, -3}) {
      std::string toml = fmt::format("[vision_encoder]\ntype = \"{}\"\npath = \"{}\"\nfeature_layer = {}\n", type,
                                     fixture(type), k);
      auto cfg = load_config_text(toml, "test.toml", reg);
      BuildContext ctx{named_logger("test"), 0};
      auto enc = reg.hold("encoder", type, reg.encoder(type)->create(*cfg.job.vision_encoder, ctx));
      torch::NoGradGuard g;
      at::Tensor got = enc->forward(io.load("pixels"));
      at::Tensor want = io.load(fmt::format("hidden_m{}", -k));
      REQUIRE(got.sizes() == want.sizes());
      double err = (got - want).abs().max().item<double>();
      INFO(type << " feature_layer " << k << ": max abs error " << err);
      CHECK(err < 1e-4);
    }
  }
  // The fixtures have 2 layers: -3 is the embeddings, -4 does not exist; positive values are refused by the reader.
  std::string bad = "[vision_encoder]\ntype = \"clip\"\npath = \"" + fixture("clip") + "\"\nfeature_layer = -4\n";
  auto cfg = load_config_text(bad, "test.toml", reg);
  BuildContext ctx{named_logger("test"), 0};
  std::string err = error_of([&] { reg.encoder("clip")->create(*cfg.job.vision_encoder, ctx); });
  CHECK_THAT(err, Catch::Contains("feature_layer = -4 is out of range") && Catch::Contains("-1 .. -3"));
  auto diags = forge::test::config_errors("[vision_encoder]\ntype = \"siglip\"\nfeature_layer = 1\n");
  REQUIRE(diags.size() == 1);
  CHECK_THAT(diags[0].format(), Catch::Contains("feature_layer"));
}

TEST_CASE("encoders report their preprocessing (D6)", "[vision]") {
  auto s = encoder_at("siglip", fixture("siglip"));
  CHECK(s->preprocess().image_size == 32);
  CHECK(s->preprocess().mean[0] == Approx(0.5));
  CHECK(s->preprocess().resize == "bicubic");
  auto c = encoder_at("clip", fixture("clip"));
  CHECK(c->preprocess().mean[0] == Approx(0.48145466));
  CHECK(c->preprocess().std[2] == Approx(0.27577711));
  CHECK(c->num_tokens() == 16);  // 4 x 4 patches, no class token: a square grid for pooling
}

TEST_CASE("safetensors: F16 and BF16 weights are read and converted to the model's dtype", "[vision][safetensors]") {
  // Written byte by byte, not by forge's writer: 1.5, -2 and 0.25 in each format, little-endian.
  TempDir d;
  const std::string header =
      R"({"h":{"dtype":"F16","shape":[3],"data_offsets":[0,6]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[6,12]}})";
  const unsigned char data[12] = {0x00, 0x3E, 0x00, 0xC0, 0x00, 0x34,   // F16:  0x3E00 0xC000 0x3400
                                  0xC0, 0x3F, 0x00, 0xC0, 0x80, 0x3E};  // BF16: 0x3FC0 0xC000 0x3E80
  const std::string path = d.str() + "/half.safetensors";
  {
    std::ofstream out(path, std::ios::binary);
    uint64_t n = header.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << header;
    out.write(reinterpret_cast<const char*>(data), 12);
  }
  safetensors::File f(path);
  const at::Tensor want = torch::tensor({1.5f, -2.0f, 0.25f});
  CHECK(f.load("h").scalar_type() == at::kHalf);
  CHECK(f.load("b").scalar_type() == at::kBFloat16);
  CHECK(at::equal(f.load("h", at::kFloat), want));
  CHECK(at::equal(f.load("b", at::kFloat), want));
}

TEST_CASE("broken weight files give their own clear errors", "[vision][errors]") {
  TempDir tmp;
  const std::string dir = tmp.str() + "/siglip";
  copy_dir(fixture("siglip"), dir);
  const std::string file = dir + "/model.safetensors";
  const auto size = std::filesystem::file_size(file);

  SECTION("a truncated file") {
    std::filesystem::resize_file(file, size - 100);
    auto msg = error_of([&] { encoder_at("siglip", dir); });
    CHECK_THAT(msg, Catch::Contains(file) && Catch::Contains("past the end of the data section") &&
                        Catch::Contains("truncated"));
  }
  SECTION("a header that points past the end") {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    const char len[8] = {'\xff', '\xff', '\x0f', 0, 0, 0, 0, 0};  // ~1 MiB header in a small file
    f.write(len, 8);
    f.close();
    auto msg = error_of([&] { encoder_at("siglip", dir); });
    CHECK_THAT(msg, Catch::Contains(file) && Catch::Contains("points past the end of the file"));
  }
  SECTION("a file shorter than its header length field") {
    std::filesystem::resize_file(file, 5);
    CHECK_THAT(error_of([&] { encoder_at("siglip", dir); }), Catch::Contains(file) && Catch::Contains("truncated: 5 bytes"));
  }
  SECTION("a missing key, an unexpected key, a wrong dtype, a wrong shape") {
    std::vector<std::pair<std::string, at::Tensor>> all;
    {
      safetensors::File f(file);
      for (const auto& t : f.tensors()) all.emplace_back(t.name, f.load(t.name));
    }
    auto rewrite = [&](std::function<void(std::vector<std::pair<std::string, at::Tensor>>&)> edit) {
      auto copy = all;
      edit(copy);
      safetensors::save(file, copy);
    };
    rewrite([](auto& v) {
      v.erase(std::remove_if(v.begin(), v.end(), [](auto& p) { return p.first == "encoder.layers.1.mlp.fc2.bias"; }),
              v.end());
    });
    CHECK_THAT(error_of([&] { encoder_at("siglip", dir); }),
               Catch::StartsWith(file + ": missing weight 'encoder.layers.1.mlp.fc2.bias'"));
    rewrite([](auto& v) { v.emplace_back("encoder.layers.2.mlp.fc1.weight", torch::zeros({2, 2})); });
    CHECK_THAT(error_of([&] { encoder_at("siglip", dir); }),
               Catch::Contains(file) && Catch::Contains("unexpected weight 'encoder.layers.2.mlp.fc1.weight'"));
    rewrite([](auto& v) {
      for (auto& p : v)
        if (p.first == "post_layernorm.weight") p.second = p.second.to(at::kLong);
    });
    CHECK_THAT(error_of([&] { encoder_at("siglip", dir); }),
               Catch::StartsWith(file + ": weight 'post_layernorm.weight' has dtype I64; expected a floating-point type"));
    rewrite([](auto& v) {
      for (auto& p : v)
        if (p.first == "post_layernorm.weight") p.second = torch::ones({31});
    });
    CHECK_THAT(error_of([&] { encoder_at("siglip", dir); }),
               Catch::StartsWith(file + ": weight 'post_layernorm.weight' has shape (31)") &&
                   Catch::Contains("expects (32)"));
  }
  SECTION("the wrong kind of model, a missing folder") {
    CHECK_THAT(error_of([&] { encoder_at("siglip", fixture("clip")); }),
               Catch::Contains("model_type \"clip_vision_model\" is not a SigLIP model") &&
                   Catch::Contains("type = \"clip\""));
    CHECK_THAT(error_of([&] { encoder_at("clip", tmp.str() + "/nope"); }), Catch::Contains("is not a folder"));
  }
}

TEST_CASE("every arch x adapter x encoder builds and runs (36 combinations)", "[vision][shapes]") {
  const std::map<std::string, std::string> encoders = {
      {"random", "num_tokens = 16\nfeature_dim = 24\n"},
      {"siglip", "image_size = 16\npatch_size = 4\nfeature_dim = 24\nnum_layers = 1\nnum_heads = 4\n"},
      {"clip", "image_size = 16\npatch_size = 4\nfeature_dim = 24\nnum_layers = 1\nnum_heads = 4\n"},
  };
  for (const auto& [enc, keys] : encoders) {
    for (const char* arch : {"joint_decoder", "cross_attention", "mot"}) {
      for (const char* adapter : {"mlp_2layer", "linear", "avgpool", "attentional_pool"}) {
        DYNAMIC_SECTION(enc << " + " << adapter << " + " << arch) {
          std::string toml = forge::test::tiny_vlm_toml(arch, adapter);
          toml.replace(toml.find("type = \"random\"\nnum_tokens = 16\nfeature_dim = 24\n"), 48,
                       "type = \"" + enc + "\"\n" + keys);
          auto cfg = load_config_text(toml, "t.toml", builtin_registry());
          VLM m = build_vlm(cfg.job, builtin_registry());
          CHECK(m->vision_encoder->num_tokens() == 16);
          const int64_t size = enc == "random" ? 8 : 16;
          CHECK(cfg.job.data.hf_image_size == (enc == "random" ? 224 : 16));
          auto out = m->forward(torch::rand({2, 3, size, size}), torch::randint(0, 64, {2, 12}, torch::kLong));
          const bool ca = std::string(arch) == "cross_attention";
          CHECK(out.logits.sizes() == at::IntArrayRef({2, ca ? 11 : 12, 64}));
        }
      }
    }
  }
}

TEST_CASE("a frozen tower stays bit-identical through training steps, an unfrozen one changes", "[vision][freeze]") {
  for (bool frozen : {true, false}) {
    DYNAMIC_SECTION((frozen ? "frozen" : "trainable")) {
      std::string toml = "[model]\ndim = 32\nn_layers = 1\nn_heads = 4\nvocab_size = 64\nmax_seq_len = 64\n"
                         "[vision_encoder]\ntype = \"siglip\"\npath = \"" + fixture("siglip") + "\"\n"
                         "[vlm]\nmax_text_len = 8\nfreeze = [{module = \"vision_encoder\", frozen = " +
                         (frozen ? "true" : "false") + "}]\n[train]\nseq_len = 64\n";
      auto cfg = load_config_text(toml, "t.toml", builtin_registry());
      VLM m = build_vlm(cfg.job, builtin_registry());
      auto pats = cfg.job.vlm->resolved_module_patterns();
      apply_freeze(*m, cfg.job.vlm->freeze, pats);
      CHECK(m->encoder_frozen() == frozen);
      // The trainer's own optimizer: a frozen tower is not in it at all.
      auto groups = make_param_groups(*m, ever_trainable(*m, *cfg.job.vlm), false);
      int64_t tower_params = 0;
      for (const auto* g : {&groups.decay, &groups.no_decay})
        for (const auto& [name, p] : *g) tower_params += util::starts_with(name, "vision_encoder.") ? 1 : 0;
      if (frozen) {
        CHECK(tower_params == 0);
      } else {
        CHECK(tower_params == static_cast<int64_t>(m->vision_encoder->parameters().size()));
      }
      OptimizerConfig oc;
      oc.lr = 1e-2;
      auto adamw = make_adamw(groups, oc);
      auto& opt = *adamw;
      std::map<std::string, at::Tensor> before;
      for (auto& p : m->vision_encoder->named_parameters(true)) before[p.key()] = p.value().clone();
      for (int step = 0; step < 3; ++step) {
        opt.zero_grad();
        auto ids = torch::randint(0, 64, {2, 8}, torch::kLong);
        auto out = m->forward(torch::rand({2, 3, 32, 32}) * 2 - 1, ids, ids);
        cross_entropy(out.logits, out.targets).loss.backward();
        opt.step();
      }
      int changed = 0;
      for (auto& p : m->vision_encoder->named_parameters(true)) {
        bool same = at::equal(before[p.key()], p.value());
        if (frozen) {
          INFO(p.key());
          CHECK(same);
          CHECK_FALSE(p.value().grad().defined());
        }
        changed += same ? 0 : 1;
      }
      if (!frozen) CHECK(changed > 20);  // every tower weight that is used moves (the pooling head is not run)
    }
  }
}

TEST_CASE("an image size that disagrees with the encoder is rejected with both numbers", "[vision][config]") {
  std::string toml = "[model]\ndim = 32\nn_layers = 1\nn_heads = 4\nvocab_size = 64\nmax_seq_len = 64\n"
                     "[vision_encoder]\ntype = \"siglip2\"\npath = \"" + fixture("siglip2") + "\"\n"
                     "[vlm]\nmax_text_len = 8\n[train]\nseq_len = 64\n[data]\nhf_image_size = 224\n";
  auto d = forge::test::config_errors(toml);
  bool found = false;
  for (const auto& e : d) {
    if (e.key == "data.hf_image_size") {
      found = true;
      CHECK(e.line == 15);  // the hf_image_size line
      CHECK_THAT(e.message, Catch::Contains("224x224") && Catch::Contains("16x16") && Catch::Contains("'siglip2'"));
    }
  }
  CHECK(found);
  // SigLIP2 takes other sizes through image_size; SigLIP's table is fixed.
  std::string other = toml;
  other.replace(other.find("hf_image_size = 224"), 19, "hf_image_size = 24");
  other.replace(other.find("\"\n[vlm]"), 7, "\"\nimage_size = 24\n[vlm]");
  CHECK(forge::test::config_errors(other).empty());
  auto bad = forge::test::config_errors("[vision_encoder]\ntype = \"siglip\"\npath = \"" + fixture("siglip") +
                                        "\"\nimage_size = 64\n[vlm]\n[model]\ndim = 32\nn_heads = 4\n");
  REQUIRE_FALSE(bad.empty());
  CHECK_THAT(bad[0].message, Catch::Contains("image_size = 64") && Catch::Contains("trained at 32"));
}

TEST_CASE("every recipe in configs/ validates (tower paths point at the generated fixtures)", "[vision][config][cli]") {
  int n = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(FORGE_SOURCE_DIR "/configs")) {
    if (e.path().extension() != ".toml") continue;
    ++n;
    std::string text((std::istreambuf_iterator<char>(std::ifstream(e.path()).rdbuf())), {});
    // Recipes name fixture folders as build/tests/data/<name> from the repository root.
    std::string cmd = std::string("cd ") + FORGE_SOURCE_DIR + " && " + FORGE_BIN + " validate " + e.path().string();
    auto pos = text.find("\"build/tests/data/");
    if (pos != std::string::npos) {
      auto end = text.find('"', pos + 1);
      std::string rel = text.substr(pos + 18, end - pos - 18);
      cmd += " --vision_encoder.path=" + fixture(rel);
    }
    // Recipes for pretrained models (models/llm, models/siglip) run on the tiny fixtures.
    if (text.find("init_from_hf = \"models/") != std::string::npos)
      cmd += " --model.init_from_hf=" + fixture("llm_chat") + " --vision_encoder.path=" + fixture("siglip") +
             " --model.max_seq_len=256 --train.seq_len=256";
    // KempnerForge's own configs validate with the overrides their header's "forge validate" line gives.
    if (e.path().parent_path().filename() == "reference") {
      const std::string marker = "#   forge validate " + std::string("configs/reference/") + e.path().filename().string();
      auto at = text.find(marker);
      REQUIRE(at != std::string::npos);
      auto end = text.find('\n', at);
      std::string args = text.substr(at + marker.size(), end - at - marker.size());
      for (auto q = args.find("\"\""); q != std::string::npos; q = args.find("\"\"")) args.erase(q, 2);  // --key=""
      cmd += args;
    }
    auto r = forge::test::run(cmd);
    INFO(cmd << "\n" << r.output);
    CHECK(r.code == 0);
  }
  CHECK(n >= 7);
}
