// Fully sharded data parallelism (core/distributed/fsdp.h) on c10d/Gloo:
// `forge train --nproc 2` with the default dp_shard = -1 trains the same
// model as the replicated layout, writes whole tensors into its checkpoint and
// resumes at another world size.
#include <fstream>
#include <regex>

#include <nlohmann/json.hpp>

#include "core/checkpoint/checkpoint.h"
#include "core/checkpoint/state_dict.h"
#include "core/config/loader.h"
#include "core/distributed/fsdp.h"
#include "core/model/vlm.h"
#include "core/training/precision.h"
#include "forge/safetensors.h"
#include "tests/unit/sharded_step.h"
#include "tests/unit/test_helpers.h"

using namespace forge;
using forge::test::TempDir;

namespace {

// configs/shapes.toml, two tiny layers (two sharded units and a root), on one CPU thread per rank. In fp32:
// these tests check the sharding arithmetic to 1e-5, below bf16's resolution (its error has its own test).
std::string cli(const std::string& run_dir, const std::string& extra) {
  return std::string(FORGE_BIN) + " train " FORGE_SOURCE_DIR "/configs/shapes.toml --train.mixed_precision=fp32" +
         " --model.dim=32 --model.n_layers=2 --vision_encoder.feature_dim=32 --vision_encoder.image_size=16"
         " --vision_encoder.patch_size=8 --train.batch_size=4 --data.shapes_heldout_samples=16 --eval.steps=2"
         " --eval.interval=4 --metrics.log_interval=1 --train.threads=1 --train.device=cpu --optimizer.lr=3e-3"
         " --scheduler.warmup_steps=2 --checkpoint.dir=" +
         run_dir + " " + extra;
}

std::string train(const std::string& run_dir, const std::string& extra) {
  auto r = forge::test::run(cli(run_dir, extra));
  INFO(r.output);
  REQUIRE(r.code == 0);
  return r.output;
}

std::map<int64_t, double> losses(const std::string& run_dir) {
  std::map<int64_t, double> out;
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) out[j["step"].get<int64_t>()] = j["loss"].get<double>();
  }
  return out;
}

std::map<std::string, at::Tensor> tensors(const std::string& file) {
  safetensors::File f(file);
  std::map<std::string, at::Tensor> out;
  for (const auto& t : f.tensors()) out[t.name] = f.load(t.name);
  return out;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Every tensor present in both, equal within `rel` of the larger magnitude. An attention key bias is the
// exception: softmax ignores a shift shared by all keys, so its true gradient is zero and what it gets is
// rounding noise, which AdamW normalises into steps of up to lr each. It differs with any change of
// summation order (a world size, a bucket), so it is held to that bound (`noise_bound`) instead.
void same_tensors(const std::string& a, const std::string& b, double rel, double noise_bound = 0) {
  auto x = tensors(a), y = tensors(b);
  REQUIRE(x.size() == y.size());
  for (const auto& [name, t] : x) {
    INFO(name);
    REQUIRE(y.count(name));
    REQUIRE(t.sizes() == y[name].sizes());
    if (!t.is_floating_point()) {
      CHECK(t.equal(y[name]));
      continue;
    }
    const double diff = (t - y[name]).abs().max().item<double>();
    if (noise_bound > 0 && ends_with(name, "k_proj.bias")) {
      CHECK(diff <= noise_bound);
      continue;
    }
    CHECK(diff <= rel * std::max(1.0, t.abs().max().item<double>()));
  }
}

// Steps first..last of a resumed run log the uninterrupted run's losses, within `rel`.
void continues(const std::map<int64_t, double>& resumed, const std::map<int64_t, double>& uninterrupted,
               int64_t first, int64_t last, double rel) {
  for (int64_t step = first; step <= last; ++step) {
    INFO("step " << step);
    REQUIRE(resumed.count(step));
    REQUIRE(uninterrupted.count(step));
    CHECK(std::abs(resumed.at(step) - uninterrupted.at(step)) <= rel * std::abs(uninterrupted.at(step)));
  }
}

void same_losses(const std::map<int64_t, double>& a, const std::map<int64_t, double>& b, double rel) {
  REQUIRE(a.size() == b.size());
  for (const auto& [step, l] : a) {
    INFO("step " << step);
    REQUIRE(b.count(step));
    CHECK(std::abs(l - b.at(step)) <= rel * std::abs(l));
  }
}

}  // namespace

TEST_CASE("fully sharded data parallel trains what replicated data parallel trains, and reshards on resume",
          "[train][dist][fsdp]") {
  TempDir d;
  const std::string rep = d.str() + "/replicated", shard = d.str() + "/sharded";
  const std::string out = train(shard, "--nproc 2 --train.max_steps=6 --checkpoint.interval=3");
  CHECK_THAT(out, Catch::Contains("fully sharded data parallel over 2 ranks (gloo)"));
  CHECK_THAT(out, Catch::Contains("this rank holds"));
  CHECK_THAT(out, Catch::Contains("eval at step 4"));
  train(rep, "--nproc 2 --distributed.dp_shard=1 --distributed.dp_replicate=2 --train.max_steps=6 --checkpoint.interval=3");
  REQUIRE(losses(shard).size() == 6);
  same_losses(losses(shard), losses(rep), 1e-5);
  // The sharded checkpoint holds whole weights and whole AdamW moments, as the replicated one does.
  for (const char* step : {"/step_00000003", "/step_00000006"}) {
    same_tensors(shard + step + "/model.safetensors", rep + step + "/model.safetensors", 1e-5);
    auto a = tensors(shard + step + "/trainer.safetensors");
    auto b = tensors(rep + step + "/trainer.safetensors");
    for (const auto& [name, t] : b) {
      if (name == "rng.cpu") continue;
      INFO(name);
      REQUIRE(a.count(name));
      REQUIRE(a[name].sizes() == t.sizes());
      CHECK((a[name] - t).abs().max().item<double>() <= 1e-5 * std::max(1.0, t.abs().max().item<double>()));
    }
  }
  // Step 3 of either run, continued on one rank: the same steps 4-6.
  TempDir c1, c2;
  const std::string from_shard = "--checkpoint.load_path=" + shard + "/step_00000003",
                    from_rep = "--checkpoint.load_path=" + rep + "/step_00000003";
  train(c1.str(), from_shard + " --train.max_steps=6 --train.batch_size=8");
  train(c2.str(), from_rep + " --train.max_steps=6 --train.batch_size=8");
  same_losses(losses(c1.str()), losses(c2.str()), 1e-5);
  // The replicated checkpoint resumed sharded over 2 ranks: each rank keeps its part of the moments.
  TempDir c3;
  train(c3.str(), from_rep + " --nproc 2 --train.max_steps=6");
  continues(losses(c3.str()), losses(rep), 4, 6, 1e-5);
}

TEST_CASE("a data-parallel layout the launched world cannot honour names both numbers", "[train][dist][fsdp]") {
  TempDir d;
  auto r = forge::test::run(cli(d.str(), "--distributed.dp_shard=2 --distributed.dp_replicate=2"));
  CHECK(r.code == 2);
  CHECK_THAT(r.output, Catch::Contains("dp_shard = 2 × dp_replicate = 2 is 4 rank(s), but 1 were launched"));
  auto odd = forge::test::run(cli(d.str(), "--nproc 2 --distributed.dp_replicate=3"));
  CHECK(odd.code == 2);
  CHECK_THAT(odd.output, Catch::Contains("dp_replicate = 3 does not divide the 2 launched rank(s)"));
}

TEST_CASE("fully sharded data parallel under every arch, with activation checkpointing", "[train][dist][fsdp]") {
  // Cross-attention blocks (arch modules outside the sharded layers) and MoT's per-modality layers.
  for (const std::string arch : {"cross_attention", "mot"}) {
    INFO(arch);
    TempDir d;
    const std::string common = "--nproc 2 --train.max_steps=4 --vlm.arch=" + arch +
                               (arch == "cross_attention" ? " --vlm.cross_attention_every_n_layers=1" : "");
    train(d.str() + "/s", common + " --train.activation_checkpointing=" + (arch == "mot" ? "selective" : "full"));
    train(d.str() + "/r", common + " --distributed.dp_shard=1 --distributed.dp_replicate=2");
    same_losses(losses(d.str() + "/s"), losses(d.str() + "/r"), 1e-5);
    same_tensors(d.str() + "/s/step_00000004/model.safetensors", d.str() + "/r/step_00000004/model.safetensors",
                 1e-5);
  }
}

TEST_CASE("four sharded ranks train a model none of them may hold whole", "[train][dist][fsdp]") {
  // The whole model's fp32 weights, gradients and AdamW moments: 16 bytes per parameter. Each rank may
  // hold at most 1/4 of that plus 5 % (padding to equal chunks); the logged bytes are measured from the
  // tensors each rank keeps between steps.
  TempDir d;
  const std::string out = train(d.str(), "--nproc 4 --train.max_steps=2 --model.dim=64 --model.n_layers=4");
  std::ifstream in(d.str() + "/metrics.jsonl");
  std::string line;
  double held = 0;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("rank_state_bytes")) held = j["rank_state_bytes"].get<double>();
  }
  REQUIRE(held > 0);
  std::smatch m;
  REQUIRE(std::regex_search(out, m, std::regex("model: ([0-9.]+)K parameters")));
  const double whole_state = 16 * std::stod(m[1].str()) * 1e3;  // every parameter is trained here
  const double budget = whole_state / 4 * 1.05;
  INFO("held " << held << " budget " << budget << " whole " << whole_state);
  CHECK(held <= budget);
  CHECK(held >= whole_state / 4 * 0.95);  // and the accounting is not vacuous
  CHECK(whole_state > budget);
}

namespace {
// 32 samples of the embedded set as a JSONL manifest whose captions are all cut to 20 bytes (tokens, with the
// byte-level tokenizer): each rank's mean loss is then the global batch's mean, so data parallelism changes
// nothing and any layout must train what one process trains on the ranks' batches together.
std::string equal_length_data(const std::string& dir) {
  auto s = forge::test::run(std::string(FORGE_BIN) + " data sample --split train -n 32 --image-size 16 --out " + dir +
                            "/data");
  INFO(s.output);
  REQUIRE(s.code == 0);
  std::ifstream in(dir + "/data/manifest.jsonl");
  std::ofstream out(dir + "/data/equal.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    std::string text = j["text"].get<std::string>() + "                    ";
    j["text"] = text.substr(0, 20);
    out << j.dump() << "\n";
  }
  return "--data.type=jsonl --data.path=" + dir + "/data/equal.jsonl --eval.enabled=false --data.num_workers=1";
}
}  // namespace

TEST_CASE("2 and 4 ranks, sharded, hybrid or replicated, train what one process trains on the same global batch",
          "[train][dist][fsdp]") {
  // Every caption is cut to the same number of tokens, so each rank's mean loss is the global batch's mean
  // and data parallelism has nothing to change: the ranks' batches together are the single process's batch.
  TempDir d;
  const std::string data = equal_length_data(d.str()) + " --train.max_steps=20 --checkpoint.interval=100000 ";
  const std::string one = d.str() + "/one";
  train(one, data + "--train.batch_size=8");
  struct Layout {
    std::string name, args;
  };
  for (const Layout& l : {Layout{"sharded2", "--nproc 2 --train.batch_size=4"},
                          Layout{"replicated2", "--nproc 2 --train.batch_size=4 --distributed.dp_shard=1 "
                                                "--distributed.dp_replicate=2"},
                          Layout{"sharded4", "--nproc 4 --train.batch_size=2"},
                          Layout{"prefetch2", "--nproc 2 --train.batch_size=4 --distributed.prefetch=on"},
                          Layout{"hybrid2x2", "--nproc 4 --train.batch_size=2 --distributed.dp_shard=2 "
                                              "--distributed.dp_replicate=2"},
                          // Small buckets, all-reduced during the second micro-batch's backward only.
                          Layout{"buckets", "--nproc 2 --train.batch_size=2 --train.grad_accum_steps=2 "
                                            "--distributed.dp_shard=1 --distributed.dp_replicate=2 "
                                            "--distributed.bucket_size_mb=0.01"}}) {
    INFO(l.name);
    const std::string dir = d.str() + "/" + l.name;
    const std::string out = train(dir, data + l.args);
    if (l.name == "prefetch2") CHECK_THAT(out, Catch::Contains("the next block's gather prefetched"));
    if (l.name == "hybrid2x2") CHECK_THAT(out, Catch::Contains("2 groups of 2 that shard, replicated"));
    if (l.name == "buckets") {
      std::smatch m;
      REQUIRE(std::regex_search(out, m, std::regex("gradients: ([0-9]+) bucket\\(s\\), ([0-9]+) of them")));
      CHECK(std::stoi(m[1].str()) > 10);
      CHECK(m[2].str() == m[1].str());  // every bucket went out while backward still ran
    }
    REQUIRE(losses(dir).size() == 20);
    same_losses(losses(dir), losses(one), 1e-5);
    same_tensors(dir + "/step_00000020/model.safetensors", one + "/step_00000020/model.safetensors", 1e-5,
                 /*noise_bound: 20 steps of lr 3e-3*/ 20 * 3e-3);
  }
}

TEST_CASE("a rank that dies or hangs stops the others, and the launcher names it", "[train][dist]") {
  for (const std::string fault : {"KILL", "STOP"}) {
    INFO(fault);
    TempDir d;
    const std::string log = d.str() + "/train.log";
    // Train "forever"; once step 3 is logged, SIGKILL (dies) or SIGSTOP (hangs) rank 1 and wait for the
    // launcher. `timeout` turns a launcher that never returns into a failure instead of a stuck suite.
    auto r = forge::test::run(
        "timeout 120 " + cli(d.str() + "/run", "--nproc 2 --train.max_steps=1000000 --distributed.nccl_timeout_sec=3") +
        " > " + log + " 2>&1 & pid=$!; for i in $(seq 600); do grep -q 'step 3/' " + log +
        " && break; sleep 0.05; done; sleep 0.2; for p in $(pgrep -P $(pgrep -P $pid)); do "
        "tr '\\0' '\\n' < /proc/$p/environ | grep -qx RANK=1 && kill -" + fault +
        " $p; done; wait $pid; echo \"rc=$?\"; cat " + log);
    INFO(r.output);
    CHECK_THAT(r.output, !Catch::Contains("rc=0") && !Catch::Contains("rc=124"));
    if (fault == "KILL") {
      CHECK_THAT(r.output, Catch::Contains("rank 1 was killed by signal 9"));
    } else {
      CHECK_THAT(r.output, Catch::Contains("did not complete: a rank has died or hangs"));
      CHECK_THAT(r.output, Catch::Contains("rank 1 did not exit within 10 s of being told to stop (it hangs)"));
    }
  }
}

namespace {
// A ParamUnit that counts how many units are whole (or on their way) at once.
struct Watched final : ParamUnit {
  std::shared_ptr<ParamUnit> inner;
  int* live;
  int* peak;
  int depth = 0;
  bool prefetched = false;
  void prefetch() override {
    inner->prefetch();
    if (depth == 0 && !prefetched) {
      prefetched = true;
      *peak = std::max(*peak, ++*live);
    }
  }
  void gather() override {
    inner->gather();
    if (depth++ == 0) {
      if (prefetched)
        prefetched = false;
      else
        *peak = std::max(*peak, ++*live);
    }
  }
  void release() override {
    inner->release();
    if (--depth == 0) --*live;
  }
  const std::vector<at::Tensor>& params() const override { return inner->params(); }
  void reduce_grads(const std::vector<at::Tensor>& g) override { inner->reduce_grads(g); }
};

bool whole(const at::Tensor& t) { return t.storage().nbytes() > 0; }

// A tiny `arch` VLM with a 2-block SigLIP tower, built twice with the same weights.
std::pair<VLM, VLM> twin_vlms(const std::string& arch) {
  auto& reg = forge::test::builtin_registry();
  std::string toml = forge::test::tiny_vlm_toml(arch);
  const std::string random = "type = \"random\"\nnum_tokens = 16\nfeature_dim = 24\n";
  toml.replace(toml.find(random), random.size(),
               "type = \"siglip\"\nimage_size = 16\npatch_size = 8\nfeature_dim = 24\nnum_layers = 2\nnum_heads = 4\n");
  LoadedConfig cfg = load_config_text(toml, "t.toml", reg);
  VLM plain = build_vlm(cfg.job, reg), sharded = build_vlm(cfg.job, reg);
  load_state_dict(*sharded, TensorSource::from_map([&] {
    std::map<std::string, at::Tensor> m;
    for (const auto& [k, v] : state_dict(*plain)) m[k] = v;
    return m;
  }(), "plain"), true);
  return {plain, sharded};
}

// twin_vlms' unit prefixes: two decoder layers, then two tower blocks.
std::vector<std::string> twin_unit_prefixes() {
  std::vector<std::string> prefixes;
  for (int i = 0; i < 2; ++i) prefixes.push_back(fmt::format("transformer.layers.{}.", i));
  for (int i = 0; i < 2; ++i) prefixes.push_back(fmt::format("vision_encoder.vision_tower.encoder.layers.{}.", i));
  return prefixes;
}

// Puts fsdp's units into `sharded` as Watched units counting into live/peak
// (the tower's blocks into tower_live/tower_peak when given).
void watch_units(VLM& sharded, FullyShardedModel& fsdp, int& live, int& peak, int* tower_live = nullptr,
                 int* tower_peak = nullptr) {
  std::vector<std::shared_ptr<ParamUnit>> layers, blocks;
  for (size_t i = 0; i < 4; ++i) {
    auto w = std::make_shared<Watched>();
    w->inner = fsdp.unit(i);
    w->live = i >= 2 && tower_live ? tower_live : &live;
    w->peak = i >= 2 && tower_peak ? tower_peak : &peak;
    (i < 2 ? layers : blocks).push_back(w);
  }
  sharded->transformer->set_layer_units(layers);
  sharded->vision_encoder->block_stack()->set_block_units(blocks);
}
}  // namespace

TEST_CASE("sharded blocks are whole only while they run, and give the unsharded gradients", "[train][fsdp]") {
  for (const bool ac : {false, true}) {
    INFO("activation checkpointing " << ac);
    auto [plain, sharded] = twin_vlms("cross_attention");
    for (VLM* m : {&plain, &sharded}) {
      for (auto& p : (*m)->parameters(true)) p.requires_grad_(true);
      (*m)->train();
      (*m)->transformer->set_activation_checkpointing(ac ? 1 : 0);
      (*m)->vision_encoder->block_stack()->set_activation_checkpointing(ac ? 1 : 0);
    }
    auto dist = Distributed::connect(DistributedConfig{}, at::Device(at::kCPU), 0, 1, "127.0.0.1", 29615 + ac);
    FullyShardedModel fsdp(*sharded, twin_unit_prefixes(), *dist);
    int live = 0, peak = 0;
    watch_units(sharded, fsdp, live, peak);
    for (const auto& p : sharded->parameters(true)) CHECK_FALSE(whole(p));  // nothing whole at rest

    at::Tensor px = at::rand({2, 3, 16, 16});
    at::Tensor ids = at::randint(0, 64, {2, 12}, at::TensorOptions().dtype(at::kLong));
    auto [want, got] = forge::test::plain_and_sharded_step(plain, sharded, fsdp, px, ids);
    CHECK(got.item<double>() == want.item<double>());
    CHECK(peak == 2);  // the running block and the next one (prefetched), in forward and in backward
    CHECK(live == 0);
    // Every parameter's gradient is in its shard (world 1: the whole gradient, flat), none left whole.
    for (const auto& item : plain->named_parameters(true)) {
      INFO(item.key());
      at::Tensor p = sharded->named_parameters(true)[item.key()];  // a copy: the dict is a temporary
      CHECK_FALSE(whole(p));
      CHECK_FALSE(p.grad().defined());
      at::Tensor g = fsdp.shard_of(p).grad();
      REQUIRE(g.defined());
      CHECK(at::allclose(g, item.value().grad().reshape({-1}), 1e-6, 1e-7));
    }
  }
}

TEST_CASE("generation over sharded parameters decodes what the whole model decodes, one block whole at a time",
          "[train][fsdp][generate]") {
  int port = 29651;
  for (const std::string arch : {"joint_decoder", "cross_attention", "mot"}) {
    INFO(arch);
    auto [plain, sharded] = twin_vlms(arch);
    plain->eval();
    sharded->eval();
    auto dist = Distributed::connect(DistributedConfig{}, at::Device(at::kCPU), 0, 1, "127.0.0.1", port++);
    FullyShardedModel fsdp(*sharded, twin_unit_prefixes(), *dist);
    int live = 0, peak = 0, tower_live = 0, tower_peak = 0;  // decoder layers; tower blocks
    watch_units(sharded, fsdp, live, peak, &tower_live, &tower_peak);
    at::manual_seed(3);
    at::Tensor px = at::rand({2, 3, 16, 16});
    at::Tensor prompt = at::randint(1, 64, {2, 3}, at::TensorOptions().dtype(at::kLong));
    GenerateOptions g;
    g.max_new_tokens = 8;
    int agreed = 0;
    g.agree = [&](at::Tensor& next) {
      CHECK(next.sizes() == at::IntArrayRef{2});
      ++agreed;
    };
    const at::Tensor want = generate(*plain, px, prompt, g);
    REQUIRE(agreed == 8);
    fsdp.gather_root();  // as an evaluation does: the embeddings, head and adapter whole for its length
    const at::Tensor got = generate(*sharded, px, prompt, g);
    fsdp.release_root();
    CHECK(at::equal(got, want));
    CHECK(agreed == 16);
    CHECK(peak == 2);  // the running decoder layer and the next, prefetched
    CHECK(live == 0);
    CHECK(tower_peak == 2);
    CHECK(tower_live == 0);
    for (const auto& p : sharded->parameters(true)) CHECK_FALSE(whole(p));

    // What agree decides is what every later step sees: here, token 5 at every step.
    g.agree = [](at::Tensor& next) { next.fill_(5); };
    fsdp.gather_root();
    const at::Tensor forced = generate(*sharded, px, prompt, g);
    fsdp.release_root();
    CHECK(at::equal(forced, at::full({2, 8}, 5, at::kLong)));
    CHECK_FALSE(at::equal(forced, want));

    // A cache is for generation; under grad mode the sharded decoder refuses it.
    fsdp.gather_root();
    KVCache cache = sharded->transformer->make_cache(1, 4, at::kFloat, at::kCPU);
    CHECK_THROWS_WITH(sharded->transformer->forward(prompt.narrow(0, 0, 1), ModalityContext(), &cache),
                      Catch::Contains("for generation only"));
    fsdp.release_root();
  }
}

TEST_CASE("sharded ranks caption the held-out images at evaluation as forge eval captions their checkpoint",
          "[train][dist][fsdp][generate]") {
  TempDir d;
  const std::string run_dir = d.str() + "/run";
  // Two steps: the captions are still near-random bytes that differ by image, so any difference in the
  // numbers would show in them (a trained tiny model writes one caption for every image).
  const std::string out = train(run_dir, "--nproc 2 --train.max_steps=2 --eval.caption_samples=3");
  CHECK_THAT(out, Catch::Contains("3 generated captions") && !Catch::Contains("no generated captions"));
  auto rows = [](const std::string& path) {
    std::map<int64_t, std::string> generated;  // held-out index -> caption
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line);
      if (!j.contains("step") || j["step"].get<int64_t>() == 2) generated[j["index"].get<int64_t>()] = j["generated"];
    }
    return generated;
  };
  const auto during = rows(run_dir + "/eval_captions.jsonl");
  REQUIRE(during.size() == 3);
  CHECK(during.at(0) != during.at(1));
  // The checkpoint, whole on one process with the run's thread count: the same greedy captions. (On one
  // machine the ranks' own tokens agree anyway; GenerateOptions::agree is what keeps ranks whose numbers
  // could differ in step, and its effect is tested on one process above.)
  const std::string file = d.str() + "/captions.jsonl";
  auto r = forge::test::run(std::string(FORGE_BIN) + " eval --checkpoint " + run_dir + " --captions 3 --captions-out " +
                            file);
  INFO(r.output);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.output, Catch::Contains("generated captions (3,") && Catch::Contains("BLEU-4"));
  CHECK(rows(file) == during);
}

TEST_CASE("a checkpoint sharded over 4 ranks resumes over 2 and over 1, continuing the uninterrupted run",
          "[train][dist][fsdp]") {
  TempDir d;
  const std::string data = equal_length_data(d.str()) + " --train.max_steps=8 ";
  const std::string full = d.str() + "/world4";
  // Global batch 8 throughout: 4 x 2, then 2 x 4 or 1 x 8.
  train(full, data + "--nproc 4 --train.batch_size=2 --checkpoint.interval=4");
  const std::string step4 = full + "/step_00000004";
  REQUIRE(read_train_state(step4).world_size == 4);
  const auto uninterrupted = losses(full);
  REQUIRE(uninterrupted.size() == 8);
  for (const std::string how : {"--nproc 2 --train.batch_size=4", "--train.batch_size=8"}) {
    INFO(how);
    TempDir r;
    const std::string out = train(r.str(), data + how + " --checkpoint.load_path=" + step4);
    CHECK_THAT(out, Catch::Contains("resuming from") && Catch::Contains("at step 4"));
    const auto resumed = losses(r.str());
    REQUIRE(resumed.size() == 4);
    continues(resumed, uninterrupted, 5, 8, 1e-5);
  }
}

TEST_CASE("bf16 compute gathers sharded weights in bf16 and reduces gradients in fp32", "[train][fsdp][precision]") {
  auto& reg = forge::test::builtin_registry();
  LoadedConfig cfg = load_config_text(forge::test::tiny_vlm_toml(), "t.toml", reg);
  VLM model = build_vlm(cfg.job, reg);
  std::map<std::string, at::Tensor> masters;
  for (const auto& p : model->named_parameters(true)) masters[p.key()] = p.value().detach().clone();
  auto dist = Distributed::connect(DistributedConfig{}, at::Device(at::kCPU), 0, 1, "127.0.0.1", 29641);
  FullyShardedModel fsdp(*model, {"transformer.layers.0.", "transformer.layers.1."}, *dist);
  fsdp.set_gather_dtype(at::kBFloat16);
  auto unit = fsdp.unit(0);
  unit->gather();
  int checked = 0;
  for (const auto& p : model->named_parameters(true)) {
    if (p.key().rfind("transformer.layers.0.", 0) != 0) continue;
    INFO(p.key());
    const at::Tensor& m = masters.at(p.key());
    CHECK(p.value().scalar_type() == at::kFloat);  // the module's parameter keeps its dtype
    CHECK(at::equal(p.value(), m.to(at::kBFloat16).to(at::kFloat)));  // ... and holds the bf16-rounded master
    CHECK(fsdp.shard_of(p.value()).scalar_type() == at::kFloat);
    CHECK(at::equal(fsdp.shard_of(p.value()).narrow(0, 0, m.numel()), m.reshape({-1})));  // the master, untouched
    if (p.value().dim() >= 2) CHECK_FALSE(at::equal(p.value(), m));  // rounding really happened
    ++checked;
  }
  CHECK(checked > 4);
  unit->release();
  // Checkpoints gather the fp32 masters, not the bf16 copies.
  const std::string name = "transformer.layers.0.attention.q_proj.weight";
  CHECK(at::equal(fsdp.gather(name, model->named_parameters(true)[name]), masters.at(name)));
}

TEST_CASE("2 sharded ranks in bf16 train what one process trains in bf16, within bf16's error", "[train][dist][fsdp]") {
  if (cpu_bf16_isa().empty()) {
    WARN("this CPU has no AMX or AVX512-BF16: mixed_precision = bf16 computes in fp32 here, nothing to check");
    return;
  }
  TempDir d;
  const std::string data = equal_length_data(d.str()) +
                           " --train.max_steps=8 --checkpoint.interval=100000 --train.mixed_precision=bf16 ";
  const std::string one = d.str() + "/one", two = d.str() + "/two";
  train(one, data + "--train.batch_size=8");
  const std::string out = train(two, data + "--nproc 2 --train.batch_size=4");
  CHECK_THAT(out, Catch::Contains("weights all-gathered in BFloat16, gradients reduce-scattered in fp32"));
  REQUIRE(losses(two).size() == 8);
  same_losses(losses(two), losses(one), 1e-2);
  CHECK(losses(two).rbegin()->second < losses(two).begin()->second);
}
