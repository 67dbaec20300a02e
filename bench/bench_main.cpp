// forge_bench: measures what the tests must not time.
//   forge_bench [train|generate|data|all] [--steps N]
// Results recorded in bench/RESULTS.md. Run on an idle machine; each number is
// the median of a few repetitions after a warm-up.
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>

#include <fmt/format.h>

#include "core/config/loader.h"
#include "core/data/datasets.h"
#include "core/data/loader.h"
#include "core/data/shapes.h"
#include "core/model/vlm.h"
#include "core/registry/registry.h"
#include "core/training/loss.h"
#include "core/training/optim.h"
#include "core/training/trainer.h"
#include "core/util/logging.h"

using namespace forge;
using Clock = std::chrono::steady_clock;

namespace {

double secs(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

LoadedConfig recipe(std::vector<std::string> overrides, const std::string& arch = "joint_decoder") {
  LoadOptions o;
  overrides.push_back("--vlm.arch=" + arch);
  if (arch == "cross_attention") overrides.push_back("--vlm.cross_attention_every_n_layers=1");
  o.overrides = overrides;
  return load_config(FORGE_SOURCE_DIR "/configs/shapes.toml", Registry::global(), o);
}

// The default recipe's training step: forward, backward, clip, AdamW.
void bench_train(int steps) {
  std::cout << "## training step (configs/shapes.toml model, batch 32, CPU fp32)\n\n"
            << "| arch | step time (s) | text tokens/s | model FLOP/s | params |\n|---|---|---|---|---|\n";
  for (const char* arch : {"joint_decoder", "cross_attention", "mot"}) {
    auto cfg = recipe({}, arch);
    const JobConfig& job = cfg.job;
    VLM m = build_vlm(job, Registry::global());
    auto trainable = ever_trainable(*m, *job.vlm);
    auto groups = make_param_groups(*m, trainable, false);
    auto opt = make_adamw(groups, job.optimizer);
    auto ds = make_dataset(job, "train");
    auto col = std::make_shared<Collator>(make_tokenizer(""), job.vlm->max_text_len, m->residual_image_tokens() == 0);
    LoaderOptions lo;
    lo.batch_size = job.train.batch_size;
    lo.workers = 1;
    DataLoader loader(ds, col, m->vision_encoder->preprocess(), job.data.hf_image_size, lo);
    std::vector<double> times;
    int64_t tokens = 0;
    for (int s = 0; s < steps + 3; ++s) {
      Batch b = loader.next();
      auto t0 = Clock::now();
      opt->zero_grad(true);
      auto out = m->forward(b.pixel_values, b.input_ids, b.labels);
      auto lv = cross_entropy(out.logits, out.targets);
      lv.loss.backward();
      torch::nn::utils::clip_grad_norm_(groups.all(), 1.0);
      opt->step();
      if (s >= 3) {  // warm-up excluded
        times.push_back(secs(t0));
        tokens += lv.tokens;
      }
    }
    const double t = median(times);
    const double flops = job.train.batch_size *
                         (3 * m->forward_flops_per_sample(job.vlm->max_text_len) + 3 * m->vision_encoder->forward_flops() +
                          3 * m->adapter->forward_flops(m->vision_encoder->num_tokens()));
    double params = 0;
    for (const auto& p : m->parameters()) params += static_cast<double>(p.numel());
    std::cout << fmt::format("| {} | {:.3f} | {:.0f} | {:.1f} GFLOP/s | {:.2f}M |\n", arch, t,
                             static_cast<double>(tokens) / steps / t, flops / t / 1e9, params / 1e6);
  }
  std::cout << "\n";
}

// Generation with the KV cache against re-running the sequence each token.
void bench_generate() {
  std::cout << "## generation (configs/shapes.toml model, batch 1, 48 new tokens, greedy)\n\n"
            << "| arch | KV cache (tokens/s) | no cache (tokens/s) | speed-up |\n|---|---|---|---|\n";
  for (const char* arch : {"joint_decoder", "cross_attention", "mot"}) {
    auto cfg = recipe({}, arch);
    VLM m = build_vlm(cfg.job, Registry::global());
    m->eval();
    at::Tensor px = torch::rand({1, 3, 48, 48});
    at::Tensor prompt = m->residual_image_tokens() > 0 ? at::zeros({1, 0}, at::kLong) : at::full({1, 1}, 257, at::kLong);
    GenerateOptions o;
    o.max_new_tokens = 48;
    auto rate = [&](bool cache) {
      o.use_cache = cache;
      std::vector<double> r;
      for (int i = 0; i < 5; ++i) {
        auto t0 = Clock::now();
        at::Tensor out = generate(*m, px, prompt, o);
        r.push_back(static_cast<double>(out.size(1)) / secs(t0));
      }
      return median(r);
    };
    const double with = rate(true), without = rate(false);
    std::cout << fmt::format("| {} | {:.0f} | {:.0f} | {:.1f}x |\n", arch, with, without, with / without);
  }
  std::cout << "\n";
}

// Data: building batches (drawing or decoding, resizing, normalising, tokenising).
void bench_data() {
  std::cout << "## data\n\n| what | rate |\n|---|---|\n";
  auto cfg = recipe({});
  auto ds = make_dataset(cfg.job, "train");
  auto col = std::make_shared<Collator>(make_tokenizer(""), 56, false);
  for (int64_t workers : {0, 1, 2}) {
    LoaderOptions lo;
    lo.batch_size = 32;
    lo.workers = workers;
    lo.prefetch = 4;
    DataLoader loader(ds, col, Preprocess{}, 48, lo);
    loader.next();
    auto t0 = Clock::now();
    const int n = 40;
    for (int i = 0; i < n; ++i) loader.next();
    std::cout << fmt::format("| embedded shapes 48x48, batches of 32, {} worker thread(s) | {:.0f} samples/s |\n",
                             workers, n * 32 / secs(t0));
  }
  Preprocess bicubic;
  bicubic.resize = "bicubic";
  Image img = ds->get(0).image;
  auto t1 = Clock::now();
  for (int i = 0; i < 2000; ++i) preprocess_image(img, bicubic, 224);
  std::cout << fmt::format("| resize 48x48 -> 224x224 bicubic + normalise | {:.0f} images/s |\n", 2000 / secs(t1));
  std::string text;
  for (int i = 0; text.size() < (1 << 20); ++i) text += ds->get(static_cast<size_t>(i)).text + " ";
  auto t2 = Clock::now();
  for (int i = 0; i < 20; ++i) ByteTokenizer().encode(text);
  std::cout << fmt::format("| byte tokenizer encode | {:.0f} MB/s |\n", 20 * text.size() / 1e6 / secs(t2));
  // Hugging Face tokenizers, when the test fixtures have been generated.
  for (const char* style : {"tok_gpt2", "tok_llama3", "tok_llama2", "tok_mistral", "tok_unigram_bf"}) {
    const std::string path = std::string(FORGE_BUILD_DIR) + "/tests/data/" + style + "/tokenizer.json";
    if (!std::filesystem::exists(path)) continue;
    auto tok = make_tokenizer(path);
    tok->encode(text);
    auto t3 = Clock::now();
    for (int i = 0; i < 3; ++i) tok->encode(text);
    std::cout << fmt::format("| HF tokenizer.json encode ({}, 1 MB of captions) | {:.1f} MB/s |\n", style,
                             3 * text.size() / 1e6 / secs(t3));
  }
  std::cout << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  set_log_level("warn");
  Registry::global().load_directories({Registry::builtin_plugin_dir()});
  std::string what = argc > 1 ? argv[1] : "all";
  int steps = 20;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::string(argv[i]) == "--steps") steps = std::stoi(argv[i + 1]);
  std::cout << fmt::format("# forge_bench ({} CPU threads)\n\n", at::get_num_threads());
  if (what == "train" || what == "all") bench_train(steps);
  if (what == "generate" || what == "all") bench_generate();
  if (what == "data" || what == "all") bench_data();
  return 0;
}
