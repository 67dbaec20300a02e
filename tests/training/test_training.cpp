// Training for real: learning on the embedded data (and not without the
// images), exact resume, freeze schedules (D2, D3), checkpoint integrity,
// the loss (D10), schedules, optimizer groups, collator and loader.
#include <cstdlib>
#include <fstream>
#include <thread>

#include <torch/cuda.h>

#include <nlohmann/json.hpp>

#include "core/checkpoint/checkpoint.h"
#include "core/checkpoint/state_dict.h"
#include "core/data/datasets.h"
#include "core/data/loader.h"
#include "core/data/shapes.h"
#include "core/distributed/dist.h"
#include "core/model/vlm.h"
#include "core/training/loss.h"
#include "core/training/optim.h"
#include "core/training/trainer.h"
#include "core/util/strings.h"
#include "tests/unit/test_helpers.h"

using namespace forge;
using forge::test::error_of;
using forge::test::builtin_registry;
using forge::test::TempDir;

namespace {

// configs/shapes.toml made small enough to train in seconds, on the CPU
// (exact reproducibility is a CPU promise; tests/cuda covers the GPU).
LoadedConfig shapes(const std::string& run_dir, std::vector<std::string> extra = {}) {
  LoadOptions o;
  o.overrides = {"--train.device=cpu",
                 "--model.dim=64",
                 "--model.n_layers=2",
                 "--vision_encoder.feature_dim=64",
                 "--vision_encoder.num_layers=1",
                 "--optimizer.lr=2e-3",
                 "--scheduler.warmup_steps=20",
                 "--train.max_steps=300",
                 "--eval.interval=100000",
                 "--checkpoint.interval=100000",
                 "--checkpoint.dir=" + run_dir,
                 "--metrics.log_interval=100"};
  o.overrides.insert(o.overrides.end(), extra.begin(), extra.end());
  return load_config(FORGE_SOURCE_DIR "/configs/shapes.toml", builtin_registry(), o);
}

// Tiny and fast: for the resume and checkpoint tests.
LoadedConfig tiny(const std::string& run_dir, std::vector<std::string> extra = {}) {
  std::vector<std::string> base = {"--model.dim=32", "--model.n_layers=1", "--vision_encoder.feature_dim=32",
                                   "--vision_encoder.image_size=16", "--vision_encoder.patch_size=8",
                                   "--train.batch_size=4", "--data.shapes_heldout_samples=16", "--eval.steps=2",
                                   "--data.num_workers=2"};
  base.insert(base.end(), extra.begin(), extra.end());
  return shapes(run_dir, base);
}

// The model of tiny() as forge command-line overrides, writing to run_dir.
std::string tiny_cli(const std::string& run_dir) {
  return " --model.dim=32 --model.n_layers=1 --vision_encoder.feature_dim=32 --vision_encoder.image_size=16"
         " --vision_encoder.patch_size=8 --train.batch_size=4 --data.shapes_heldout_samples=16 --eval.steps=2"
         " --checkpoint.dir=" + run_dir;
}

TrainSummary run(const LoadedConfig& cfg) {
  TrainOptions o;
  o.handle_signals = false;
  return train(cfg, builtin_registry(), o);
}

// The mean of the first five losses against the last five: the run learned.
void check_loss_falls(const std::vector<double>& losses, double by) {
  REQUIRE(losses.size() >= 10);
  double first = 0, last = 0;
  for (size_t i = 0; i < 5; ++i) first += losses[i] / 5, last += losses[losses.size() - 5 + i] / 5;
  INFO("loss " << first << " -> " << last);
  CHECK(last < first - by);
}

// The rows of a run's metrics.jsonl that log a training step.
std::vector<nlohmann::json> step_rows(const std::filesystem::path& run_dir) {
  std::ifstream m(run_dir / "metrics.jsonl");
  std::vector<nlohmann::json> rows;
  for (std::string line; std::getline(m, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) rows.push_back(std::move(j));
  }
  return rows;
}

std::map<std::string, at::Tensor> weights(const std::string& step_dir) {
  safetensors::File f(step_dir + "/model.safetensors");
  std::map<std::string, at::Tensor> out;
  for (const auto& t : f.tensors()) out[t.name] = f.load(t.name);
  return out;
}

}  // namespace

// Trains `arch` twice on the embedded data, with the images and with them
// blanked, and compares held-out accuracy on the image words with chance.
static void learns_from_images(const std::string& arch) {
  const double chance = ShapesDataset::chance_accuracy();
  std::vector<std::string> o = {"--vlm.arch=" + arch};
  if (arch == "cross_attention") o.push_back("--vlm.cross_attention_every_n_layers=1");
  TempDir a, b;
  auto with_images = run(shapes(a.str(), o));
  o.push_back("--data.blank_images=true");
  auto blind = run(shapes(b.str(), o));
  REQUIRE(with_images.final_eval);
  REQUIRE(blind.final_eval);
  const double seen = with_images.final_eval->word_accuracy, not_seen = blind.final_eval->word_accuracy;
  INFO(arch << ": image-word accuracy " << seen << " with images, " << not_seen << " blanked, chance " << chance);
  CHECK(with_images.final_eval->words >= 1000);
  CHECK(seen > chance + 0.12);                // well above chance
  CHECK(std::abs(not_seen - chance) < 0.07);  // a blind model stays near chance
  CHECK(with_images.final_eval->kind_accuracy("colour") > 0.6);
  // The text itself is learned either way: what differs is the image words.
  CHECK(blind.final_eval->token_accuracy > 0.85);
}

TEST_CASE("joint_decoder learns the image words on the embedded data, and not without the images", "[train][learn]") {
  learns_from_images("joint_decoder");
}
TEST_CASE("cross_attention learns the image words on the embedded data, and not without the images", "[train][learn]") {
  learns_from_images("cross_attention");
}
TEST_CASE("mot learns the image words on the embedded data, and not without the images", "[train][learn]") {
  learns_from_images("mot");
}

TEST_CASE("2k steps straight equal k steps, resume, k steps: same losses and weights", "[train][resume]") {
  const int k = 6;
  TempDir a, b;
  auto straight = run(tiny(a.str(), {"--train.max_steps=" + std::to_string(2 * k), "--train.grad_accum_steps=2"}));
  auto first = run(tiny(b.str(), {"--train.max_steps=" + std::to_string(k), "--train.grad_accum_steps=2"}));
  auto second = run(tiny(b.str(), {"--train.max_steps=" + std::to_string(2 * k), "--train.grad_accum_steps=2"}));
  CHECK_FALSE(first.resumed);
  CHECK(second.resumed);
  CHECK(second.start_step == k);
  REQUIRE(straight.losses.size() == 2 * k);
  REQUIRE(first.losses.size() == k);
  REQUIRE(second.losses.size() == k);
  for (int i = 0; i < k; ++i) {
    CHECK(first.losses[i] == straight.losses[i]);
    CHECK(second.losses[i] == straight.losses[k + i]);
  }
  auto wa = weights(resolve_checkpoint(a.str())), wb = weights(resolve_checkpoint(b.str()));
  REQUIRE(wa.size() == wb.size());
  for (const auto& [name, t] : wa) {
    INFO(name);
    CHECK(at::equal(t, wb.at(name)));
  }
}

TEST_CASE("a parameter frozen at build and unfrozen by a stage at step k changes only from step k (D2)", "[train][freeze]") {
  TempDir d;
  const std::vector<std::string> sched = {
      "--vlm.freeze=[{module = \"vision_encoder\", frozen = true}]",
      "--vlm.freeze_schedule=[{start_step = 3, specs = [{module = \"vision_encoder\", frozen = false}]}]",
      "--checkpoint.interval=1", "--checkpoint.keep_last_n=0"};
  auto cfg = tiny(d.str(), sched);
  auto cfg6 = tiny(d.str(), [&] {
    auto v = sched;
    v.push_back("--train.max_steps=6");
    return v;
  }());
  VLM initial = build_vlm(cfg.job, builtin_registry());
  run(cfg6);
  auto enc_equal = [&](int step) {
    auto w = weights(d.str() + "/" + fmt::format("step_{:08d}", step));
    bool all = true;
    for (const auto& p : initial->named_parameters(true))
      if (util::starts_with(p.key(), "vision_encoder.") && p.key().find(".head.") == std::string::npos)
        all = all && at::equal(p.value(), w.at(p.key()));
    return all;
  };
  CHECK(enc_equal(1));
  CHECK(enc_equal(3));  // steps 0..2 ran with the tower frozen
  CHECK_FALSE(enc_equal(4));  // the stage at step 3 made it train
  auto st = read_train_state(d.str() + "/step_00000004");
  REQUIRE(st.vlm_freeze.size() == 1);
  CHECK_FALSE(st.vlm_freeze[0].frozen);
}

TEST_CASE("a freeze stage at step 0 applies at step 0, with a raw pattern (D3)", "[train][freeze]") {
  TempDir d;
  auto cfg = tiny(d.str(), {"--train.max_steps=3",
                            "--vlm.freeze_schedule=[{start_step = 0, specs = [{module = \"adapter.proj1.*\"}]}]"});
  VLM initial = build_vlm(cfg.job, builtin_registry());
  run(cfg);
  auto w = weights(resolve_checkpoint(d.str()));
  for (const auto& p : initial->named_parameters(true)) {
    INFO(p.key());
    if (util::starts_with(p.key(), "adapter.proj1.")) CHECK(at::equal(p.value(), w.at(p.key())));
    if (p.key() == "adapter.proj2.weight") CHECK_FALSE(at::equal(p.value(), w.at(p.key())));
  }
}

TEST_CASE("checkpoints: latest, retention, config, plugins, metrics", "[train][checkpoint]") {
  TempDir d;
  run(tiny(d.str(), {"--train.max_steps=6", "--checkpoint.interval=2", "--checkpoint.keep_last_n=2"}));
  namespace fs = std::filesystem;
  CHECK(fs::is_symlink(d.path() / "latest"));
  CHECK(fs::read_symlink(d.path() / "latest") == "step_00000006");
  CHECK_FALSE(fs::exists(d.path() / "step_00000002"));  // keep_last_n = 2
  CHECK(fs::exists(d.path() / "step_00000004"));
  for (const char* f : {"model.safetensors", "trainer.safetensors", "train_state.json", "config.toml"})
    CHECK(fs::exists(d.path() / "step_00000006" / f));
  nlohmann::json st = nlohmann::json::parse(std::ifstream(d.path() / "step_00000006" / "train_state.json"));
  CHECK(st["step"] == 6);
  CHECK(st["plugins"].size() == 3);
  CHECK(st["plugins"][0]["name"] == "joint_decoder");
  // The stored config reloads to the same model.
  auto again = load_config((d.path() / "step_00000006" / "config.toml").string(), builtin_registry());
  CHECK(again.job.model.dim == 32);
  // Reference key names, readable by name.
  auto w = weights((d.path() / "step_00000006").string());
  CHECK(w.count("transformer.layers.0.attention.q_proj.weight"));
  CHECK(w.count("vision_encoder.vision_tower.encoder.layers.0.self_attn.q_proj.weight"));
  // A JSONL line per logged step.
  std::ifstream m(d.path() / "metrics.jsonl");
  std::string line;
  int lines = 0;
  while (std::getline(m, line)) {
    auto j = nlohmann::json::parse(line);
    CHECK((j.contains("loss") || j.contains("eval/loss")));
    ++lines;
  }
  CHECK(lines >= 2);
}

TEST_CASE("metrics: every logged field, periodic eval, and MFU by the documented formula (D12)", "[train][metrics]") {
  TempDir d;
  auto cfg = tiny(d.str(), {"--train.max_steps=4", "--metrics.log_interval=1", "--eval.interval=2",
                            "--metrics.peak_tflops=1"});
  run(cfg);
  std::map<int64_t, nlohmann::json> steps, evals;
  std::ifstream in(d.path() / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    (j.contains("loss") ? steps : evals)[j.at("step").get<int64_t>()] = j;
  }
  REQUIRE(steps.size() == 4);
  for (const auto& [step, j] : steps)
    for (const char* k : {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "step_time_s", "data_wait_s",
                          "text_tokens", "tokens_seen", "epoch"}) {
      INFO(step << " " << k);
      CHECK(j.contains(k));
    }
  // Evaluated at the interval (step 2) and at the end (step 4).
  CHECK(evals.size() == 2);
  CHECK(evals.count(2) == 1);
  CHECK(evals.count(4) == 1);
  CHECK(evals.at(2).contains("eval/word_accuracy"));

  // The decoder's FLOPs from its real weight shapes: 2 x S x (layer matrix parameters) for the
  // matmuls, 4 x H x hd x S^2 x L for scores and values, 2 x D x V x T for the head.
  VLM m = build_vlm(cfg.job, builtin_registry());
  const ModelConfig& mc = cfg.job.model;
  const int64_t T = cfg.job.vlm->max_text_len;
  const double S = static_cast<double>(m->residual_image_tokens() + T);
  double layer_params = 0;
  for (const auto& p : m->transformer->named_parameters(true))
    if (p.value().dim() == 2 && util::starts_with(p.key(), "layers.")) layer_params += p.value().numel();
  const double decoder = 2 * S * layer_params +
                         4.0 * mc.n_heads * mc.head_dim() * S * S * mc.n_layers +
                         2.0 * mc.dim * mc.vocab_size * T;
  CHECK(m->forward_flops_per_sample(T) == Approx(decoder).epsilon(1e-12));
  // Logged MFU = batch x (3 x decoder + 3 x adapter + 3 x encoder, both trained here) / step time / peak, with
  // the head's 6 x D x V counted only at the text positions that are targets (the loss skips the padding).
  const int64_t B = cfg.job.train.batch_size;
  const double per_step = B * (3 * decoder + 3 * m->adapter->forward_flops(m->vision_encoder->num_tokens()) +
                               3 * m->vision_encoder->forward_flops());
  CHECK(m->vision_encoder->forward_flops() > 0);
  for (const auto& [step, j] : steps) {
    INFO(step);
    const auto targets = j.at("text_tokens").get<int64_t>();
    CHECK(targets < B * T);  // the captions are shorter than max_text_len: some positions are padding
    const double skipped = 6.0 * mc.dim * mc.vocab_size * static_cast<double>(B * T - targets);
    CHECK(j.at("mfu").get<double>() * j.at("step_time_s").get<double>() * 1e12 ==
          Approx(per_step - skipped).epsilon(1e-9));
  }
}

TEST_CASE("a truncated checkpoint, a wrong header, a bad train_state each name the file", "[train][checkpoint]") {
  TempDir d;
  auto cfg = tiny(d.str(), {"--train.max_steps=2"});
  run(cfg);
  const std::string step = resolve_checkpoint(d.str());
  const std::string model = step + "/model.safetensors";
  auto more = tiny(d.str(), {"--train.max_steps=4"});
  SECTION("truncated") {
    std::filesystem::resize_file(model, std::filesystem::file_size(model) / 2);
    auto msg = error_of([&] { run(more); });
    CHECK_THAT(msg, Catch::Contains(model) && Catch::Contains("truncated"));
  }
  SECTION("wrong header") {
    std::fstream f(model, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(8);
    f.write("not json at all", 15);
    f.close();
    auto msg = error_of([&] { run(more); });
    CHECK_THAT(msg, Catch::Contains(model) && Catch::Contains("header is not valid JSON"));
  }
  SECTION("bad train_state.json") {
    std::ofstream(step + "/train_state.json") << "{\"schema\": 1, \"step\": ";
    auto msg = error_of([&] { run(more); });
    CHECK_THAT(msg, Catch::Contains(step + "/train_state.json") && Catch::Contains("not valid JSON"));
  }
}

TEST_CASE("a failed save never overwrites the previous checkpoint", "[train][checkpoint]") {
  TempDir d;
  run(tiny(d.str(), {"--train.max_steps=2", "--checkpoint.interval=2"}));
  auto before = weights(d.str() + "/step_00000002");
  setenv("FORGE_FAILPOINT", "checkpoint.after_model", 1);
  auto msg = error_of([&] { run(tiny(d.str(), {"--train.max_steps=4", "--checkpoint.interval=2"})); });
  unsetenv("FORGE_FAILPOINT");
  CHECK_THAT(msg, Catch::Contains("saving checkpoint") && Catch::Contains("step_00000004") &&
                      Catch::Contains("untouched"));
  namespace fs = std::filesystem;
  CHECK(fs::read_symlink(d.path() / "latest") == "step_00000002");
  CHECK_FALSE(fs::exists(d.path() / "step_00000004"));
  for (const auto& e : fs::directory_iterator(d.path()))
    CHECK_FALSE(util::starts_with(e.path().filename().string(), "."));  // no temporary left behind
  auto after = weights(d.str() + "/step_00000002");
  for (const auto& [k, v] : before) CHECK(at::equal(v, after.at(k)));

  // A save killed between its two renames left step_2 moved aside: the next run puts it back and resumes from it.
  fs::rename(d.path() / "step_00000002", d.path() / ".step_00000002.old-4242");
  fs::create_directories(d.path() / ".step_00000004.tmp-4242");
  auto resumed = run(tiny(d.str(), {"--train.max_steps=4", "--checkpoint.interval=2"}));
  CHECK(resumed.resumed);
  CHECK(resumed.start_step == 2);
  for (const auto& e : fs::directory_iterator(d.path()))
    CHECK_FALSE(util::starts_with(e.path().filename().string(), "."));
  // metrics.jsonl logs each step once: the failed run's row for step 4 (after its last checkpoint) was dropped.
  std::map<int64_t, int> rows;
  std::ifstream in(d.path() / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) ++rows[j.at("step").get<int64_t>()];
  }
  CHECK(rows == std::map<int64_t, int>{{1, 1}, {2, 1}, {4, 1}});
}

TEST_CASE("a stop request finishes the step, saves, and the run resumes from there", "[train][signal]") {
  TempDir d;
  auto cfg = tiny(d.str(), {"--train.max_steps=100000000"});  // only the stop request can end it
  std::thread stopper([] {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    request_stop();
  });
  auto s = run(cfg);
  stopper.join();
  CHECK(s.interrupted);
  CHECK(s.end_step < 100000000);
  CHECK(read_train_state(resolve_checkpoint(d.str())).step == s.end_step);
  auto again = run(tiny(d.str(), {"--train.max_steps=" + std::to_string(s.end_step + 2)}));
  CHECK(again.resumed);
  CHECK(again.start_step == s.end_step);
}

TEST_CASE("resuming with another freeze config is refused unless told to ignore it", "[train][checkpoint]") {
  TempDir d;
  run(tiny(d.str(), {"--train.max_steps=2"}));
  auto other = tiny(d.str(), {"--train.max_steps=4", "--vlm.freeze=[{module = \"vision_encoder\", frozen = true}]"});
  CHECK_THAT(error_of([&] { run(other); }), Catch::Contains("ignore_freeze_mismatch") && Catch::Contains("vision_encoder"));
  auto ok = tiny(d.str(), {"--train.max_steps=4", "--vlm.freeze=[{module = \"vision_encoder\", frozen = true}]",
                           "--checkpoint.ignore_freeze_mismatch=true"});
  CHECK(run(ok).end_step == 4);
}

TEST_CASE("D10: a micro-batch whose labels are all ignored adds zero loss and zero gradient", "[train][loss]") {
  at::Tensor logits = torch::randn({2, 5, 7}, torch::requires_grad());
  at::Tensor ignored = torch::full({2, 5}, -100, torch::kLong);
  auto lv = cross_entropy(logits, ignored, 0.1);
  CHECK(lv.tokens == 0);
  CHECK(lv.loss.item<double>() == 0.0);
  lv.loss.backward();
  REQUIRE(logits.grad().defined());
  CHECK(logits.grad().abs().sum().item<double>() == 0.0);
  at::Tensor some = ignored.clone();
  some[0][1] = 3;
  auto lv2 = cross_entropy(logits, some);
  CHECK(lv2.tokens == 1);
  CHECK(lv2.loss.item<double>() == Approx(at::cross_entropy_loss(logits[0][1].unsqueeze(0), at::tensor({3}, torch::kLong)).item<double>()));
}

TEST_CASE("learning-rate schedules follow the reference formulas", "[train][schedule]") {
  SchedulerConfig s;
  s.warmup_steps = 10;
  s.min_lr_ratio = 0.1;
  s.name = "cosine";
  CHECK(lr_factor(s, 0, 110) == 0.0);  // the first update uses factor(0)
  CHECK(lr_factor(s, 5, 110) == Approx(0.5));
  CHECK(lr_factor(s, 10, 110) == Approx(1.0));
  CHECK(lr_factor(s, 60, 110) == Approx(0.55));
  CHECK(lr_factor(s, 110, 110) == Approx(0.1));
  s.name = "linear";
  CHECK(lr_factor(s, 60, 110) == Approx(0.55));
  s.name = "constant";
  CHECK(lr_factor(s, 100, 110) == 1.0);
  s.name = "none";
  CHECK(lr_factor(s, 0, 110) == 1.0);
  s.name = "rex";
  s.rex_alpha = 1.0;
  CHECK(lr_factor(s, 60, 110) == Approx(0.5));
  s.name = "wsd";
  s.stable_steps = 50;
  s.wsd_decay_type = "linear";
  CHECK(lr_factor(s, 40, 110) == 1.0);
  CHECK(lr_factor(s, 85, 110) == Approx(0.55));
  s.wsd_decay_type = "sqrt";
  CHECK(lr_factor(s, 110, 110) == Approx(0.1));
}

TEST_CASE("optimizer groups: no decay on norms, biases and embeddings (unless configured)", "[train][optim]") {
  auto cfg = load_config_text(forge::test::tiny_vlm_toml("joint_decoder", "mlp_2layer"), "t.toml", builtin_registry());
  VLM m = build_vlm(cfg.job, builtin_registry());
  std::set<std::string> all;
  for (const auto& p : m->named_parameters(true)) all.insert(p.key());
  auto names = [](const std::vector<std::pair<std::string, at::Tensor>>& v) {
    std::set<std::string> s;
    for (const auto& [k, p] : v) s.insert(k);
    return s;
  };
  auto g = make_param_groups(*m, all, false);
  CHECK(names(g.decay).count("transformer.layers.0.attention.q_proj.weight"));
  CHECK(names(g.no_decay).count("transformer.layers.0.attention_norm.weight"));
  CHECK(names(g.no_decay).count("adapter.proj1.bias"));
  CHECK(names(g.no_decay).count("transformer.token_embedding.embedding.weight"));
  auto g2 = make_param_groups(*m, all, true);
  CHECK(names(g2.decay).count("transformer.token_embedding.embedding.weight"));
  // Only parameters trainable at some step are in the optimizer (D2).
  std::set<std::string> some{"adapter.proj1.weight"};
  CHECK(make_param_groups(*m, some, false).numel() == m->adapter->named_parameters()["proj1.weight"].numel());
}

TEST_CASE("the collator: EOS appended, padding and prompt masked, BOS for cross-attention", "[data][collate]") {
  auto tok = std::make_shared<ByteTokenizer>();
  Example ex;
  ex.text = "ab";
  ex.prompt = "Q:";
  ex.image_words = {{1, 2, "colour"}};
  Collator c(tok, 8, false);
  auto b = c.collate({ex}, {torch::zeros({3, 4, 4})});
  CHECK(b.input_ids[0].sizes() == at::IntArrayRef({8}));
  std::vector<int64_t> want_ids = {'Q', ':', 'a', 'b', 258, 256, 256, 256};
  std::vector<int64_t> want_labels = {-100, -100, 'a', 'b', 258, -100, -100, -100};
  for (int i = 0; i < 8; ++i) {
    CHECK(b.input_ids[0][i].item<int64_t>() == want_ids[i]);
    CHECK(b.labels[0][i].item<int64_t>() == want_labels[i]);
  }
  CHECK(b.label_tokens == 3);
  REQUIRE(b.image_words[0].size() == 1);
  CHECK(std::get<0>(b.image_words[0][0]) == 3);  // "b" at input position 3
  Collator ca(tok, 4, true);
  auto bc = ca.collate({ex}, {torch::zeros({3, 4, 4})});
  CHECK(bc.input_ids[0][0].item<int64_t>() == 257);  // BOS
  CHECK(bc.labels[0][0].item<int64_t>() == -100);
  CHECK(bc.input_ids[0][3].item<int64_t>() == 'a');  // truncated to 4 tokens
  Collator tpl(tok, 16, false, "<{prompt}>{text}.");
  auto bt = tpl.collate({ex}, {torch::zeros({3, 4, 4})});
  std::string s;
  for (int i = 0; i < 7; ++i) s.push_back(static_cast<char>(bt.input_ids[0][i].item<int64_t>()));
  CHECK(bt.input_ids[0][7].item<int64_t>() == 258);  // then EOS
  CHECK(s == "<Q:>ab.");
  CHECK(bt.labels[0][3].item<int64_t>() == -100);  // the template's prompt part is masked
  CHECK(bt.labels[0][4].item<int64_t>() == 'a');
}

TEST_CASE("the loader: same batches with or without threads, exact resume, every sample once per epoch", "[data][loader]") {
  auto ds = std::make_shared<ShapesDataset>(40, 7, ShapesDataset::Split::Train, 16);
  auto col = std::make_shared<Collator>(std::make_shared<ByteTokenizer>(), 64, false);
  LoaderOptions o;
  o.batch_size = 4;
  o.seed = 3;
  o.workers = 0;
  DataLoader sync(ds, col, Preprocess{}, 16, o);
  o.workers = 3;
  o.prefetch = 5;
  DataLoader threaded(ds, col, Preprocess{}, 16, o);
  std::map<std::string, int> seen;
  for (int i = 0; i < 10; ++i) {  // one epoch
    Batch a = sync.next(), b = threaded.next();
    CHECK(at::equal(a.input_ids, b.input_ids));
    CHECK(at::equal(a.pixel_values, b.pixel_values));
    for (const auto& s : a.sources) ++seen[s];
  }
  CHECK(seen.size() == 40);
  for (const auto& [k, v] : seen) CHECK(v == 1);
  CHECK(sync.state().epoch == 1);
  Batch next_a = sync.next();
  DataLoader resumed(ds, col, Preprocess{}, 16, o);
  resumed.restore(LoaderState{1, 0});
  CHECK(at::equal(resumed.next().input_ids, next_a.input_ids));
}

TEST_CASE("the loader resumes across a batch-size or world-size change without skipping samples", "[data][loader]") {
  auto ds = std::make_shared<ShapesDataset>(48, 7, ShapesDataset::Split::Train, 16);
  auto col = std::make_shared<Collator>(std::make_shared<ByteTokenizer>(), 64, false);
  LoaderOptions o;
  o.batch_size = 4;
  o.seed = 5;
  o.workers = 0;
  o.world = 2;
  std::map<std::string, int> seen;
  LoaderState saved;
  for (int r = 0; r < 2; ++r) {  // two ranks, three batches of 4 each: 24 samples consumed
    o.rank = r;
    DataLoader rank(ds, col, Preprocess{}, 16, o);
    for (int i = 0; i < 3; ++i)
      for (const auto& src : rank.next().sources) ++seen[src];
    saved = rank.state();
  }
  CHECK(saved.batch_size == 4);
  CHECK(saved.world == 2);
  CHECK(saved.dataset_size == 48);
  // One rank with batches of 8 continues at sample 24: the rest of the epoch is exactly the unseen half.
  o.rank = 0;
  o.world = 1;
  o.batch_size = 8;
  DataLoader one(ds, col, Preprocess{}, 16, o);
  std::string note = one.restore(saved);
  CHECK_THAT(note, Catch::Contains("continues at batch 3"));
  CHECK(one.state().batches_yielded == 3);
  for (int i = 0; i < 3; ++i)
    for (const auto& src : one.next().sources) ++seen[src];
  CHECK(one.state().epoch == 1);
  CHECK(seen.size() == 48);
  for (const auto& [k, v] : seen) CHECK(v == 1);
  // A dataset of another size has another order: the epoch restarts.
  auto bigger = std::make_shared<ShapesDataset>(56, 7, ShapesDataset::Split::Train, 16);
  DataLoader other(bigger, col, Preprocess{}, 16, o);
  CHECK_THAT(other.restore(saved), Catch::Contains("restarts from its first batch"));
  CHECK(other.state().epoch == 0);
  CHECK(other.state().batches_yielded == 0);
  // An exact continuation says nothing.
  o.batch_size = 4;
  o.world = 2;
  DataLoader same(ds, col, Preprocess{}, 16, o);
  CHECK(same.restore(saved).empty());
  CHECK(same.state().batches_yielded == 3);
}

TEST_CASE("MoT warm start copies a dense decoder into every modality in a fresh run (D4)", "[train][mot]") {
  TempDir d;
  auto dense = tiny(d.str() + "/dense", {"--train.max_steps=2"});
  run(dense);
  const std::string ckpt = resolve_checkpoint(d.str() + "/dense");
  auto mot_cfg = tiny(d.str() + "/mot", {"--vlm.arch=mot", "--vlm.mot_warm_start_from_text=true",
                                         "--vlm.mot_warm_start_path=" + ckpt, "--train.max_steps=1",
                                         "--optimizer.lr=1e-12"});
  run(mot_cfg);  // a fresh run: warm start, then one (negligible) step
  auto mot = weights(resolve_checkpoint(d.str() + "/mot"));
  auto src = weights(ckpt);
  for (const char* m : {"image", "text"}) {
    CHECK(at::allclose(mot.at(fmt::format("transformer.layers.0.attn.q_proj.{}.weight", m)),
                       src.at("transformer.layers.0.attention.q_proj.weight"), 1e-6, 1e-8));
    CHECK(at::allclose(mot.at(fmt::format("transformer.layers.0.mlp.{}.down_proj.weight", m)),
                       src.at("transformer.layers.0.mlp.down_proj.weight"), 1e-6, 1e-8));
    CHECK(at::allclose(mot.at(fmt::format("transformer.mot_norms.{}.weight", m)), src.at("transformer.norm.weight"),
                       1e-6, 1e-8));
  }
}

TEST_CASE("forge train, generate and eval from the command line", "[train][cli]") {
  TempDir d;
  const std::string forge = FORGE_BIN;
  const std::string common = tiny_cli(d.str() + "/run");
  auto t = forge::test::run(forge + " train " FORGE_SOURCE_DIR "/configs/shapes.toml --train.max_steps=4" + common);
  INFO(t.output);
  CHECK(t.code == 0);
  CHECK_THAT(t.output, Catch::Contains("step 4/4") && Catch::Contains("image-word accuracy") &&
                           Catch::Contains("checkpoint"));
  auto s = forge::test::run(forge + " data sample --split heldout --image-size 16 -n 2 --out " + d.str() + "/s");
  CHECK(s.code == 0);
  auto g = forge::test::run(forge + " generate --checkpoint " + d.str() + "/run --image " + d.str() +
                            "/s/heldout_000000.png --max-new-tokens 8 --log-level=warn");
  INFO(g.output);
  CHECK(g.code == 0);
  CHECK_FALSE(g.output.empty());
  // Sampling is seeded; a prompt is accepted; a temperature too small to sample with is refused.
  const std::string gen = forge + " generate --checkpoint " + d.str() + "/run --image " + d.str() +
                          "/s/heldout_000000.png --max-new-tokens 8 --log-level=warn";
  auto s1 = forge::test::run(gen + " --temperature 0.8 --top-k 5 --top-p 0.9 --seed 3");
  auto s2 = forge::test::run(gen + " --temperature 0.8 --top-k 5 --top-p 0.9 --seed 3");
  CHECK(s1.code == 0);
  CHECK(s1.output == s2.output);
  CHECK(forge::test::run(gen + " --prompt 'two red'").code == 0);
  auto cold = forge::test::run(gen + " --temperature 0.0001");
  CHECK(cold.code == 2);
  CHECK_THAT(cold.output, Catch::Contains("--temperature 0.0001 is too small"));
  auto no_mass = forge::test::run(gen + " --temperature 1 --top-p 0");
  CHECK(no_mass.code == 2);
  CHECK_THAT(no_mass.output, Catch::Contains("--top-p 0 must be in (0, 1]"));
  // A checkpoint trained on a GPU (train.device = "cuda" in its config) captions wherever it is run.
  {
    const std::string cfg = resolve_checkpoint(d.str() + "/run") + "/config.toml";
    std::ifstream in(cfg);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto at = text.find("device = \"auto\"");
    REQUIRE(at != std::string::npos);
    text.replace(at, 15, "device = \"cuda\"");
    std::ofstream(cfg) << text;
  }
  auto anywhere = forge::test::run(forge + " generate --checkpoint " + d.str() + "/run --image " + d.str() +
                                   "/s/heldout_000000.png --max-new-tokens 8 --log-level=warn");
  INFO(anywhere.output);
  CHECK(anywhere.code == 0);
  CHECK(anywhere.output == g.output);
  auto on_cuda = forge::test::run(forge + " generate --device cuda --checkpoint " + d.str() + "/run --image " +
                                  d.str() + "/s/heldout_000000.png --max-new-tokens 8 --log-level=warn");
  if (torch::cuda::is_available()) {
    CHECK(on_cuda.code == 0);
  } else {
    CHECK(on_cuda.code == 2);
    CHECK_THAT(on_cuda.output, Catch::Contains("no CUDA device is visible"));
  }
  auto e = forge::test::run(forge + " eval --checkpoint " + d.str() + "/run --batches 2");
  CHECK(e.code == 0);
  CHECK_THAT(e.output, Catch::Contains("image-word accuracy") && Catch::Contains("chance 0.306"));
  auto missing = forge::test::run(forge + " generate --checkpoint " + d.str() + "/nope --image " + d.str() +
                                  "/s/heldout_000000.png");
  CHECK(missing.code == 2);
  CHECK_THAT(missing.output, Catch::Contains("no forge checkpoint"));
  const std::string png = d.str() + "/s/heldout_000000.png";
  auto video = forge::test::run(forge + " generate --checkpoint " + d.str() + "/run --video " + png);
  CHECK(video.code == 2);
  CHECK_THAT(video.output, Catch::Contains("is an image model; caption an image with --image FILE"));
  auto neither = forge::test::run(forge + " generate --checkpoint " + d.str() + "/run");
  CHECK(neither.code == 2);
  CHECK_THAT(neither.output, Catch::Contains("one of --image FILE (an image model) and --video FILE"));
  auto both = forge::test::run(forge + " generate --checkpoint " + d.str() + "/run --image " + png + " --video " + png);
  CHECK(both.code == 2);
  CHECK_THAT(both.output, Catch::Contains("excludes"));
  auto out_only = forge::test::run(forge + " eval --checkpoint " + d.str() + "/run --captions 0 --captions-out " +
                                   d.str() + "/c.jsonl");
  CHECK(out_only.code == 2);
  CHECK_THAT(out_only.output, Catch::Contains("--captions-out " + d.str() + "/c.jsonl: no captions to write"));
  CHECK_FALSE(std::filesystem::exists(d.path() / "c.jsonl"));
  auto bad = forge::test::run(forge + " train " FORGE_SOURCE_DIR "/configs/shapes.toml --model.vocab_size=100" + common);
  CHECK(bad.code == 2);
  CHECK_THAT(bad.output, Catch::Contains("model.vocab_size = 100 is smaller than the tokenizer's 259 ids"));
}

TEST_CASE("the default recipe, as shipped, learns the image words on a CPU", "[train][recipe]") {
  // configs/shapes.toml unchanged but for where it writes: the README's main job.
  TempDir d;
  LoadOptions o;
  o.overrides = {"--checkpoint.dir=" + d.str(), "--train.device=cpu", "--train.threads=2"};
  auto cfg = load_config(FORGE_SOURCE_DIR "/configs/shapes.toml", builtin_registry(), o);
  auto s = run(cfg);
  REQUIRE(s.final_eval);
  INFO("held-out image-word accuracy " << s.final_eval->word_accuracy << ", chance " << s.chance_word_accuracy);
  CHECK(s.end_step == 1000);
  CHECK(s.final_eval->word_accuracy > 2 * s.chance_word_accuracy);  // measured: 0.80 against 0.31
  for (const char* kind : {"colour", "count"}) {
    INFO(kind);
    CHECK(s.final_eval->kind_accuracy(kind) > 0.7);
  }
}

TEST_CASE("a real SIGINT to forge train finishes the step, saves, exits 0, and the run resumes", "[train][signal][cli]") {
  TempDir d;
  const std::string forge = FORGE_BIN;
  const std::string common = tiny_cli(d.str() + "/run") + " --metrics.log_interval=1 --train.device=cpu";
  // Start a long run, wait until it has logged step 3, interrupt it as a terminal's Ctrl-C would.
  const std::string log = d.str() + "/train.log";
  auto r = forge::test::run(forge + " train " FORGE_SOURCE_DIR "/configs/shapes.toml --train.max_steps=1000000" +
                            common + " > " + log + " 2>&1 & pid=$!; for i in $(seq 600); do grep -q 'step 3/' " +
                            log + " && break; sleep 0.05; done; kill -INT $pid; wait $pid; echo \"rc=$?\"; cat " + log);
  INFO(r.output);
  CHECK_THAT(r.output, Catch::Contains("rc=0"));
  CHECK_THAT(r.output, Catch::Contains("stop requested: stopping after step") &&
                           Catch::Contains("(stopped early by a signal)"));
  const std::string ckpt = resolve_checkpoint(d.str() + "/run");
  REQUIRE_FALSE(ckpt.empty());
  const int64_t stopped_at = read_train_state(ckpt).step;
  CHECK(stopped_at >= 3);
  CHECK(stopped_at < 1000000);
  auto again = forge::test::run(forge + " train " FORGE_SOURCE_DIR "/configs/shapes.toml --train.max_steps=" +
                                std::to_string(stopped_at + 2) + common);
  INFO(again.output);
  CHECK(again.code == 0);
  CHECK_THAT(again.output, Catch::Contains(fmt::format("at step {}", stopped_at)));
  CHECK(read_train_state(resolve_checkpoint(d.str() + "/run")).step == stopped_at + 2);
}

TEST_CASE("distributed.backend: NCCL on a CPU, unknown names and bad ranks are clear errors", "[train][dist]") {
  const at::Device cpu(at::kCPU);
  DistributedConfig nccl;
  nccl.backend = "nccl";
  CHECK_THAT(error_of([&] { Distributed::connect(nccl, cpu, 0, 1, "127.0.0.1", 29613); }),
             Catch::Contains("asks for nccl on cpu; NCCL needs CUDA devices"));
  DistributedConfig mpi;
  mpi.backend = "cpu:mpi,cuda:nccl";
  CHECK_THAT(error_of([&] { Distributed::connect(mpi, cpu, 0, 1, "127.0.0.1", 29613); }),
             Catch::Contains("names \"mpi\"; forge knows gloo and nccl"));
  DistributedConfig none;
  none.backend = "cuda:nccl";
  CHECK_THAT(error_of([&] { Distributed::connect(none, cpu, 0, 1, "127.0.0.1", 29613); }),
             Catch::Contains("names no backend for cpu"));
  CHECK_THAT(error_of([&] { Distributed::connect(DistributedConfig{}, cpu, 2, 2, "127.0.0.1", 29613); }),
             Catch::Contains("RANK=2 is outside WORLD_SIZE=2"));
  // The default on a CPU is Gloo, which a world of one can use on its own.
  auto one = Distributed::connect(DistributedConfig{}, cpu, 0, 1, "127.0.0.1", 29614);
  CHECK(one->backend() == "gloo");
  at::Tensor t = at::arange(6, at::kFloat);
  one->all_reduce_sum(t);  // one rank: the sum is the tensor itself
  CHECK(at::equal(t, at::arange(6, at::kFloat)));
  at::Tensor gathered = at::empty({6});
  one->all_gather(gathered, t);
  CHECK(at::equal(gathered, t));
  CHECK(one->sum(4.5) == 4.5);
}

TEST_CASE("data parallelism on c10d/Gloo: forge train --nproc 2 keeps the ranks in sync and resumes", "[train][dist]") {
  TempDir d;
  const std::string forge = FORGE_BIN;
  const std::string common =
      tiny_cli(d.str() + "/run") + " --train.threads=1 --train.device=cpu --distributed.dp_shard=1 --distributed.dp_replicate=2";
  auto r = forge::test::run(forge + " train " FORGE_SOURCE_DIR "/configs/shapes.toml --nproc 2 --train.max_steps=6" + common);
  INFO(r.output);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.output, Catch::Contains("replicated data parallel, gradients in buckets of 25 MB over 2 ranks (gloo)"));
  CHECK_THAT(r.output, Catch::Contains("2 ranks in sync: largest weight difference to rank 0 is 0"));
  CHECK(read_train_state(resolve_checkpoint(d.str() + "/run")).world_size == 2);
  auto again = forge::test::run(forge + " train " FORGE_SOURCE_DIR "/configs/shapes.toml --nproc 2 --train.max_steps=9" + common);
  INFO(again.output);
  CHECK(again.code == 0);
  CHECK_THAT(again.output, Catch::Contains("resuming from") && Catch::Contains("at step 6"));
  CHECK(read_train_state(resolve_checkpoint(d.str() + "/run")).step == 9);
  // A world size the config does not allow is refused before any work.
  auto bad = forge::test::run(forge + " train " FORGE_SOURCE_DIR "/configs/shapes.toml" + common +
                              " --distributed.dp_shard=4");
  CHECK(bad.code == 2);
  CHECK_THAT(bad.output, Catch::Contains("dp_shard = 4 × dp_replicate = 2 is 8 rank(s), but 1 were launched"));
}

TEST_CASE("train.activation_checkpointing full and selective log the losses of none", "[train][ac]") {
  std::map<std::string, std::vector<double>> losses;
  for (const std::string mode : {"none", "full", "selective"}) {
    TempDir d;
    // Two layers, a trainable tower: checkpointed and plain layers side by side.
    auto cfg = tiny(d.str(), {"--train.max_steps=4", "--model.n_layers=2", "--metrics.log_interval=1",
                              "--train.activation_checkpointing=" + mode});
    losses[mode] = run(cfg).losses;
  }
  REQUIRE(losses["none"].size() == 4);
  CHECK(losses["full"] == losses["none"]);
  CHECK(losses["selective"] == losses["none"]);
}

// Mixture of experts (spec 2.12) in the decoder: KempnerForge's
// vlm_debug_moe shape (cross-attention, MoE every second layer) and a
// sigmoid-router joint decoder train on the embedded data, log expert use,
// save reference key names and resume bit-exact.
TEST_CASE("MoE decoders train on the embedded data, log expert use and resume bit-exact", "[train][moe]") {
  const std::vector<std::string> ca_moe = {"--vlm.arch=cross_attention", "--vlm.cross_attention_every_n_layers=2",
                                           "--model.n_layers=2", "--model.num_experts=4", "--model.moe_frequency=2",
                                           "--metrics.log_interval=1"};
  {
    TempDir d;
    auto s = run(tiny(d.str(), [&] {
      auto o = ca_moe;
      o.push_back("--train.max_steps=40");
      o.push_back("--scheduler.warmup_steps=5");
      return o;
    }()));
    REQUIRE(s.losses.size() == 40);
    check_loss_falls(s.losses, 0.5);
    int with_counts = 0;
    for (const auto& j : step_rows(d.path())) {
      REQUIRE(j.contains("moe/expert_counts/transformer.layers.1.mlp"));
      auto counts = j["moe/expert_counts/transformer.layers.1.mlp"].get<std::vector<double>>();
      CHECK(counts.size() == 4);
      double total = 0;
      for (double c : counts) total += c;
      CHECK(total == 4 * 56 * 2);  // batch 4 x 56 text positions x top-2
      CHECK(j["moe/aux_loss"].get<double>() > 0);
      CHECK(j.contains("moe/router_z_loss"));
      CHECK_FALSE(j.contains("moe/expert_counts/transformer.layers.0.mlp"));  // layer 0 is dense
      ++with_counts;
    }
    CHECK(with_counts == 40);
    auto w = weights(resolve_checkpoint(d.str()));
    CHECK(w.count("transformer.layers.1.mlp.router.gate.weight"));
    CHECK(w.count("transformer.layers.1.mlp.experts.3.down_proj.weight"));
    CHECK(w.count("transformer.layers.0.mlp.gate_proj.weight"));
    CHECK(w.count("transformer.cross_attention_layers.0.mlp.up_proj.weight"));  // CA blocks stay dense
  }
  // Sigmoid router with shared and packed experts: k steps, resume, k steps = 2k steps, bit for bit (the
  // balancing bias and its EMA included).
  const std::vector<std::string> sig = {"--model.n_layers=2",          "--model.num_experts=3",
                                        "--model.moe_top_k=2",         "--model.moe_router=sigmoid_topk",
                                        "--model.moe_shared_experts=1", "--model.moe_packed_experts=true",
                                        "--model.moe_capacity_factor=1.25", "--train.grad_accum_steps=2"};
  const int k = 4;
  TempDir a, b;
  auto with = [&](std::vector<std::string> o, int steps) {
    o.push_back("--train.max_steps=" + std::to_string(steps));
    return o;
  };
  auto straight = run(tiny(a.str(), with(sig, 2 * k)));
  run(tiny(b.str(), with(sig, k)));
  auto second = run(tiny(b.str(), with(sig, 2 * k)));
  CHECK(second.resumed);
  REQUIRE(second.losses.size() == k);
  for (int i = 0; i < k; ++i) CHECK(second.losses[i] == straight.losses[k + i]);
  auto wa = weights(resolve_checkpoint(a.str())), wb = weights(resolve_checkpoint(b.str()));
  REQUIRE(wa.count("transformer.layers.1.mlp.router.expert_ema"));
  REQUIRE(wa.count("transformer.layers.1.mlp.up_w"));
  CHECK_FALSE(at::equal(wa.at("transformer.layers.1.mlp.router.expert_bias"), torch::zeros({3})));
  for (const auto& [name, t] : wa) {
    INFO(name);
    CHECK(at::equal(t, wb.at(name)));
  }
  // Frozen decoder: the router and experts do not move; the adapter does.
  TempDir f;
  std::vector<std::string> frozen = {"--model.n_layers=2", "--model.num_experts=3", "--model.moe_frequency=2",
                                     "--train.max_steps=3", "--vlm.freeze=[{ module = \"transformer\", frozen = true }]"};
  auto cfg = tiny(f.str(), frozen);
  VLM init = build_vlm(cfg.job, builtin_registry());
  run(cfg);
  auto trained = weights(resolve_checkpoint(f.str()));
  std::map<std::string, at::Tensor> before;
  for (const auto& p : init->named_parameters(true)) before[p.key()] = p.value();
  int moe_keys = 0;
  for (const auto& [name, t] : trained) {
    if (name.rfind("transformer.layers.1.mlp.", 0) == 0) {
      INFO(name);
      CHECK(at::equal(t, before.at(name)));
      ++moe_keys;
    }
  }
  CHECK(moe_keys == 1 + 3 * 3);  // gate + 3 SwiGLU experts
  CHECK_FALSE(at::equal(trained.at("adapter.proj1.weight"), before.at("adapter.proj1.weight")));
}

// The reference's vlm_debug_moma shape (2 image + 2 text experts, expert
// choice, Gumbel noise) at tiny dims: loss falls on the embedded data, the
// metrics carry the experts' use, a resumed run repeats the straight run bit
// for bit (the noise comes from the checkpointed generator), and the `moma`
// freeze alias holds the layers still.
TEST_CASE("MoMa trains on the embedded data, logs expert use and resumes bit-exact", "[train][moma]") {
  const std::vector<std::string> moma = {"--vlm.arch=moma", "--model.n_layers=2",
                                         "--vlm.moma_experts_per_modality.image=2",
                                         "--vlm.moma_experts_per_modality.text=2", "--metrics.log_interval=1"};
  auto with = [&](std::vector<std::string> extra) {
    auto o = moma;
    o.insert(o.end(), extra.begin(), extra.end());
    return o;
  };
  {
    TempDir d;
    auto s = run(tiny(d.str(), with({"--train.max_steps=40", "--scheduler.warmup_steps=5"})));
    REQUIRE(s.losses.size() == 40);
    check_loss_falls(s.losses, 0.5);
    int logged = 0;
    for (const auto& j : step_rows(d.path())) {
      REQUIRE(j.contains("moma/expert_counts/transformer.layers.1.mlp.text"));
      CHECK(j["moma/expert_counts/transformer.layers.1.mlp.text"].get<std::vector<double>>().size() == 2);
      auto unrouted = j["moma/unrouted_fraction/transformer.layers.0.mlp"].get<std::vector<double>>();
      REQUIRE(unrouted.size() == 2);
      for (double u : unrouted) CHECK((u >= 0 && u < 1));
      ++logged;
    }
    CHECK(logged == 40);
    auto w = weights(resolve_checkpoint(d.str()));
    CHECK(w.count("transformer.layers.1.mlp.experts.image.router.gate.weight"));
    CHECK(w.count("transformer.layers.0.mlp.experts.text.experts.1.down_proj.weight"));
  }
  const int k = 3;
  TempDir a, b;
  auto straight = run(tiny(a.str(), with({"--train.max_steps=" + std::to_string(2 * k), "--train.grad_accum_steps=2"})));
  run(tiny(b.str(), with({"--train.max_steps=" + std::to_string(k), "--train.grad_accum_steps=2"})));
  auto second = run(tiny(b.str(), with({"--train.max_steps=" + std::to_string(2 * k), "--train.grad_accum_steps=2"})));
  CHECK(second.resumed);
  REQUIRE(second.losses.size() == k);
  for (int i = 0; i < k; ++i) CHECK(second.losses[i] == straight.losses[k + i]);
  auto wa = weights(resolve_checkpoint(a.str())), wb = weights(resolve_checkpoint(b.str()));
  for (const auto& [name, t] : wa) {
    INFO(name);
    CHECK(at::equal(t, wb.at(name)));
  }
  // The moma alias names the layers: frozen, they keep their init; the adapter trains.
  TempDir f;
  auto cfg = tiny(f.str(), with({"--train.max_steps=3", "--vlm.freeze=[{ module = \"moma\", frozen = true }]"}));
  VLM init = build_vlm(cfg.job, builtin_registry());
  run(cfg);
  auto trained = weights(resolve_checkpoint(f.str()));
  int layer_keys = 0;
  for (const auto& p : init->named_parameters(true)) {
    if (p.key().rfind("transformer.layers.", 0) != 0) continue;
    INFO(p.key());
    CHECK(at::equal(trained.at(p.key()), p.value()));
    ++layer_keys;
  }
  CHECK(layer_keys > 0);
  CHECK_FALSE(at::equal(trained.at("adapter.proj1.weight"), init->named_parameters(true)["adapter.proj1.weight"]));
}

// KempnerForge's own configs that forge can honour train: each header's
// "forge train" line runs (2 steps, no evaluation, into a scratch folder).
TEST_CASE("the reference configs with a forge train line in their header train", "[train][reference]") {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(FORGE_SOURCE_DIR "/configs/reference")) {
    std::ifstream in(e.path());
    std::string text((std::istreambuf_iterator<char>(in)), {});
    const std::string marker = "#   forge train configs/reference/" + e.path().filename().string();
    auto at = text.find(marker);
    if (at == std::string::npos) continue;
    ++n;
    TempDir d;
    std::string args = text.substr(at + marker.size(), text.find('\n', at) - at - marker.size());
    auto r = forge::test::run(std::string("cd " FORGE_SOURCE_DIR " && " FORGE_BIN " train ") + e.path().string() + args +
                              " --train.max_steps=2 --eval.enabled=false --log-level=warn --checkpoint.dir=" + d.str());
    INFO(e.path() << "\n" << r.output);
    CHECK(r.code == 0);
    CHECK(std::filesystem::exists(d.path() / "latest"));
  }
  CHECK(n >= 2);
}

// forge activations: the residual stream after chosen layers, checked
// against direct forwards: a model cut after layer 0 (built anew, weights
// copied by name) gives layer 0's stream, and the final norm of the last
// layer's stream is what the full forward hands the output head.
TEST_CASE("forge activations writes the residual stream a direct forward computes", "[train][cli][activations]") {
  TempDir d;
  const std::string forge = FORGE_BIN;
  const std::string run_dir = d.str() + "/run";
  auto t = forge::test::run(forge + " train " FORGE_SOURCE_DIR "/configs/shapes.toml --train.max_steps=2" +
                            tiny_cli(run_dir) + " --model.n_layers=3 --log-level=warn");
  INFO(t.output);
  REQUIRE(t.code == 0);
  REQUIRE(forge::test::run(forge + " data sample --split heldout --image-size 16 -n 1 --out " + d.str() + "/s").code ==
          0);
  const std::string image = d.str() + "/s/heldout_000000.png", out = d.str() + "/act.safetensors";
  auto a = forge::test::run(forge + " activations --checkpoint " + run_dir + " --image " + image +
                            " --text 'two red circles' --layers 0,2 --out " + out);
  INFO(a.output);
  REQUIRE(a.code == 0);
  safetensors::File f(out);
  std::set<std::string> names;
  for (const auto& ti : f.tensors()) names.insert(ti.name);
  CHECK(names == std::set<std::string>{"layers.0", "layers.2", "input_ids"});
  at::Tensor ids = f.load("input_ids").unsqueeze(0), l0 = f.load("layers.0"), l2 = f.load("layers.2");

  const std::string step = resolve_checkpoint(run_dir);
  auto cfg = load_config(step + "/config.toml", builtin_registry());
  VLM full = build_vlm(cfg.job, builtin_registry());
  load_checkpoint_weights(step, *full);
  full->eval();
  at::Tensor px = preprocess_image(read_image(image), full->vision_encoder->preprocess(), cfg.job.data.hf_image_size)
                      .unsqueeze(0);
  const int64_t N = full->residual_image_tokens(), T = ids.size(1);
  CHECK(l0.sizes() == std::vector<int64_t>{N + T, 32});
  torch::NoGradGuard no_grad;
  VLMOutput o = full->forward_hidden(px, ids, ids);
  at::Tensor last = full->transformer->norm(l2.unsqueeze(0)).narrow(1, N - 1, T);
  CHECK(at::allclose(last, o.hidden, 1e-6, 1e-6));

  LoadOptions cut_opts;
  cut_opts.overrides = {"--model.n_layers=1"};
  auto cut_cfg = load_config(step + "/config.toml", builtin_registry(), cut_opts);
  VLM cut = build_vlm(cut_cfg.job, builtin_registry());
  std::map<std::string, at::Tensor> src;
  for (const auto& p : full->named_parameters(true)) src[p.key()] = p.value();
  for (auto& p : cut->named_parameters(true)) p.value().copy_(src.at(p.key()));
  cut->eval();
  cut->transformer->set_capture({0});
  cut->forward(px, ids);
  CHECK(at::allclose(cut->transformer->captured().at(0).squeeze(0), l0, 1e-6, 1e-6));
  CHECK_FALSE(at::allclose(l0, l2, 1e-3, 1e-3));

  // --attention: layer 1's probabilities against softmax(q k^T / sqrt(hd)) written out from layer 0's stream.
  const std::string att = d.str() + "/att.safetensors";
  auto with_att = forge::test::run(forge + " activations --checkpoint " + run_dir + " --image " + image +
                                   " --text 'two red circles' --layers 0,1 --attention --out " + att);
  INFO(with_att.output);
  REQUIRE(with_att.code == 0);
  safetensors::File fa(att);
  at::Tensor p1 = fa.load("attention.1"), h0 = fa.load("layers.0").unsqueeze(0);
  const ModelConfig& m = cfg.job.model;
  const int64_t H = m.n_heads, S = N + T, hd = m.head_dim();
  REQUIRE(p1.sizes() == std::vector<int64_t>{H, S, S});
  auto& block = *full->transformer->layer_list()[1]->as<TransformerBlockImpl>();
  at::Tensor xn = block.attention_norm(h0);
  nn::RotaryEmbedding rope(hd, m.max_seq_len, m.rope_theta);
  auto [cos, sin] = rope.rows(torch::arange(S, torch::kLong), at::kFloat);
  at::Tensor q = nn::apply_rope(block.attention->project_q(xn), cos, sin)[0];  // (H, S, hd)
  at::Tensor k = nn::apply_rope(block.attention->project_k(xn), cos, sin)[0].repeat_interleave(H / m.kv_heads(), 0);
  at::Tensor want = torch::zeros({H, S, S});
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < S; ++i) {
      at::Tensor s = q[h][i].matmul(k[h].narrow(0, 0, i + 1).t()) / std::sqrt(static_cast<double>(hd));
      want[h][i].narrow(0, 0, i + 1).copy_(at::softmax(s, 0));
    }
  CHECK(at::allclose(p1, want, 1e-5, 1e-6));
  CHECK(at::allclose(p1.sum(-1), torch::ones({H, S}), 1e-5));

  auto bad = forge::test::run(forge + " activations --checkpoint " + run_dir + " --image " + image +
                              " --text x --layers 3 --out " + d.str() + "/bad.safetensors");
  CHECK(bad.code == 2);
  CHECK_THAT(bad.output, Catch::Contains("--layers 3: the decoder has layers 0..2"));
  CHECK_FALSE(std::filesystem::exists(d.str() + "/bad.safetensors"));
}
