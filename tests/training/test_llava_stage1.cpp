// LLaVA stage 1 on pretrained fixtures: configs/llava_stage1.toml trains only
// the adapter on top of a frozen imported LLM (init_from_hf) and a frozen HF
// SigLIP tower. The frozen parts must stay bit-identical, the adapter must
// move and the loss must fall.
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/checkpoint/checkpoint.h"
#include "core/model/vlm.h"
#include "core/util/strings.h"
#include "tests/unit/test_helpers.h"

using namespace forge;
using forge::test::TempDir;

namespace {

std::string data(const std::string& rel) { return std::string(FORGE_TEST_DATA_DIR) + "/" + rel; }

}  // namespace

TEST_CASE("LLaVA stage 1: 20 steps keep the imported LLM and tower bit-identical and train the adapter",
          "[train][pretrained]") {
  TempDir d;
  const std::string run_dir = d.str() + "/run";
  const std::string cmd = std::string(FORGE_BIN) + " train " + FORGE_SOURCE_DIR + "/configs/llava_stage1.toml" +
                          " --model.init_from_hf=" + data("llm_chat") + " --vision_encoder.path=" + data("siglip") +
                          " --data.type=shapes --data.num_workers=1 --train.max_steps=20 --train.batch_size=8"
                          " --train.grad_accum_steps=1 --scheduler.warmup_steps=2 --optimizer.lr=3e-3"
                          " --eval.enabled=false --metrics.log_interval=1 --vlm.max_text_len=24"
                          " --checkpoint.dir=" + run_dir;
  auto r = forge::test::run(cmd);
  INFO(r.output);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.output, Catch::Contains("pretrained tensors from " + data("llm_chat")));

  // The trained checkpoint against a fresh build of the same config (HF weights, seeded adapter init).
  const std::string step = resolve_checkpoint(run_dir);
  REQUIRE_FALSE(step.empty());
  auto& reg = forge::test::builtin_registry();
  LoadedConfig cfg = load_config(step + "/config.toml", reg);
  CHECK(cfg.job.data.tokenizer_path == data("llm_chat") + "/tokenizer.json");
  VLM fresh = build_vlm(cfg.job, reg);
  VLM trained = build_vlm(cfg.job, reg);
  load_checkpoint_weights(step, *trained);
  auto before = fresh->named_parameters(true);
  int64_t frozen = 0, moved = 0;
  for (const auto& p : trained->named_parameters(true)) {
    const std::string& name = p.key();
    const bool same = at::equal(p.value(), before[name]);
    if (util::starts_with(name, "adapter.")) {
      moved += !same;
      CHECK_FALSE(same);
    } else {
      INFO(name);
      CHECK(same);
      ++frozen;
    }
  }
  CHECK(moved == 4);  // proj1/proj2 weight and bias
  CHECK(frozen > 20);

  // The loss falls: the last five logged steps against the first five.
  std::vector<double> losses;
  std::ifstream m(run_dir + "/metrics.jsonl");
  for (std::string line; std::getline(m, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) losses.push_back(j["loss"].get<double>());
  }
  REQUIRE(losses.size() == 20);
  double first = 0, last = 0;
  for (int i = 0; i < 5; ++i) {
    first += losses[i] / 5;
    last += losses[15 + i] / 5;
  }
  INFO("mean loss, steps 1-5: " << first << ", steps 16-20: " << last);
  CHECK(last < first - 0.05);
}
