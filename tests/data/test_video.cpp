// Video: the reference's uniform frame sampling, FFmpeg decoding against
// clips whose frame index is written in their brightness, padding frames
// masked in every arch, the WebVid layout, corrupt clips under the bad_rows
// policy, and a video config that trains. Clips are made at test time with
// the ffmpeg command-line tool (Debian's ffmpeg).
#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/data/jsonl.h"
#include "core/data/loader.h"
#include "core/data/video.h"
#include "core/data/webvid.h"
#include "core/model/vlm.h"
#include "core/data/datasets.h"
#include "core/data/job_tokenizer.h"
#include "tests/unit/test_helpers.h"

using namespace forge;
using forge::test::builtin_registry;
using forge::test::TempDir;

namespace {

// A grey clip of `seconds` at `rate` frames per second whose frame N has
// brightness 20 N (so a decoded frame says which source frame it is).
void make_ramp(const std::string& path, double seconds, int rate, int size = 16) {
  auto r = forge::test::run(fmt::format(
      "ffmpeg -v error -y -f lavfi -i \"color=c=black:s={0}x{0}:r={1}:d={2},format=gray,geq=lum='N*20'\" "
      "-c:v mpeg4 -q:v 2 -pix_fmt yuv420p {3}",
      size, rate, seconds, path));
  INFO(r.output);
  REQUIRE(r.code == 0);
}

// A clip of one colour.
void make_colour(const std::string& path, const std::string& colour, double seconds) {
  auto r = forge::test::run(fmt::format(
      "ffmpeg -v error -y -f lavfi -i color=c={}:s=16x16:r=4:d={} -c:v mpeg4 -q:v 2 -pix_fmt yuv420p {}", colour,
      seconds, path));
  INFO(r.output);
  REQUIRE(r.code == 0);
}

double mean_of(const Image& im) {
  double s = 0;
  for (uint8_t v : im.rgb) s += v;
  return s / static_cast<double>(im.rgb.size());
}

// A video VLM config over `root` (a folder with train.jsonl).
std::string video_toml(const std::string& root, const std::string& arch, const std::string& run_dir,
                       const std::string& adapter = "avgpool") {
  return fmt::format(R"([model]
dim = 32
n_layers = 2
n_heads = 4
n_kv_heads = 2
vocab_size = 259
max_seq_len = 80
[vision_encoder]
type = "random"
num_tokens = 16
feature_dim = 24
[adapter]
type = "{}"
pool_window = 2
pool_heads = 4
[vlm]
arch = "{}"
max_text_len = 24
{}
[video]
data_root = "{}"
dataset_type = "jsonl"
fps = 2.0
max_frames = 4
min_frames = 2
frame_size = 16
pool_window = 3
[train]
batch_size = 4
seq_len = 80
max_steps = 30
[optimizer]
lr = 3e-3
[scheduler]
warmup_steps = 3
[data]
num_workers = 1
[checkpoint]
dir = "{}"
interval = 1000
)",
                     adapter, arch, arch == "cross_attention" ? "cross_attention_every_n_layers = 1" : "", root,
                     run_dir);
}

}  // namespace

TEST_CASE("uniform frame timestamps follow the reference", "[data][video]") {
  FrameSampling s{2.0, 4, 16};
  CHECK(uniform_timestamps(0.0, s) == std::vector<double>{0.0});
  CHECK(uniform_timestamps(-1.0, s) == std::vector<double>{0.0});
  auto t = uniform_timestamps(3.0, s);  // round(6) = 6 frames over [0, 3]
  REQUIRE(t.size() == 6);
  for (size_t i = 0; i < t.size(); ++i) CHECK(t[i] == Approx(0.6 * static_cast<double>(i)));
  CHECK(uniform_timestamps(1.0, s).size() == 4);    // 2, clamped up to min_frames
  CHECK(uniform_timestamps(100.0, s).size() == 16);  // clamped down to max_frames
  FrameSampling one{2.0, 1, 16};
  CHECK(uniform_timestamps(1.25, one).size() == 2);  // round(2.5) = 2, half to even
  CHECK(uniform_timestamps(1.75, one).size() == 4);  // round(3.5) = 4
  CHECK(uniform_timestamps(0.2, one) == std::vector<double>{0.0});  // round(0.4) = 0 -> 1 -> [0]
}

TEST_CASE("decoding keeps the first frame at or after each timestamp, and later ones repeat the last", "[data][video]") {
  TempDir d;
  const std::string clip = d.str() + "/ramp.mp4";
  make_ramp(clip, 3.0, 4);  // frames 0..11 at 0, 0.25, ..., 2.75 s
  for (auto [fps, lo, hi] : {std::tuple{2.0, 4, 16}, std::tuple{1.0, 2, 3}, std::tuple{8.0, 1, 20}}) {
    FrameSampling s{fps, lo, hi};
    DYNAMIC_SECTION("fps " << fps << " frames " << lo << ".." << hi) {
      Clip c = decode_clip(clip, s);
      CHECK(c.duration == Approx(3.0));
      const auto targets = uniform_timestamps(3.0, s);
      REQUIRE(c.frames.size() == targets.size());
      for (size_t i = 0; i < targets.size(); ++i) {
        int64_t want = 11;  // past the last frame: the last one
        for (int64_t f = 0; f < 12; ++f)
          if (f * 0.25 + 1e-3 >= targets[i]) {
            want = f;
            break;
          }
        INFO("target " << targets[i] << " s");
        CHECK(c.times[i] == Approx(0.25 * static_cast<double>(want)));
        CHECK(c.frames[i].width == 16);
        CHECK(std::abs(mean_of(c.frames[i]) - 20.0 * static_cast<double>(want)) < 6.0);  // lossy, but 20 apart
      }
    }
  }
}

TEST_CASE("a corrupt or missing clip is reported with manifest:line under the bad_rows policy", "[data][video]") {
  TempDir d;
  make_colour(d.str() + "/red.mp4", "red", 1.0);
  std::ofstream(d.str() + "/broken.mp4") << "this is not a video";
  {
    std::ofstream m(d.str() + "/train.jsonl");
    m << R"({"video": "red.mp4", "text": "red"})" << "\n"
      << R"({"video": "broken.mp4", "text": "broken"})" << "\n"
      << R"({"video": "gone.mp4", "text": "gone"})" << "\n"
      << R"({"image": "red.png", "text": "an image row"})" << "\n";
  }
  const std::string manifest = d.str() + "/train.jsonl";
  const JsonlOptions strict{false, false, FrameSampling{}, 0, ""};
  CHECK_THROWS_WITH(JsonlDataset(manifest, strict),
                    Catch::Contains(manifest + ":3: missing file: video " + d.str() + "/gone.mp4"));
  JsonlDataset ds(manifest, JsonlOptions{true, false, FrameSampling{2.0, 2, 4}, 0, "Describe:"});
  REQUIRE(ds.size() == 2);
  CHECK(ds.bad_rows().at("missing file") == 1);
  CHECK(ds.bad_rows().at("missing key") == 1);
  Example ok = ds.get(0);
  CHECK(ok.frames.size() == 2);
  CHECK(ok.prompt == "Describe:");
  CHECK_THROWS_WITH(ds.get(1), Catch::Contains(manifest + ":2: undecodable video: " + d.str() + "/broken.mp4: cannot open the video"));
  CHECK_THROWS_AS(decode_clip(d.str() + "/gone.mp4", FrameSampling{}), FormatError);
}

TEST_CASE("WebVid partitions: quoted captions, id-nested train paths, flat validation paths", "[data][video]") {
  TempDir d;
  const auto root = d.path();
  std::filesystem::create_directories(root / "raw/webvid-10M/data/train/partitions");
  std::filesystem::create_directories(root / "raw/videos/train/12/1234/123456");
  std::filesystem::create_directories(root / "raw/videos/validation");
  make_colour((root / "raw/videos/train/12/1234/123456/1234567.mp4").string(), "blue", 1.0);
  {
    std::ofstream a(root / "raw/webvid-10M/data/train/partitions/0000.csv");
    a << "videoid,name,page_dir\n1234567,\"Blue sky, \"\"calm\"\" sea\",x\n";
    std::ofstream b(root / "raw/webvid-10M/data/train/partitions/0001.csv");
    b << "videoid,name\r\n7654321,\"Two\nlines\"\r\n";
  }
  WebVidDataset ds(WebVidOptions{root.string(), "webvid-10M", "train", 0, "", FrameSampling{2.0, 2, 4}});
  REQUIRE(ds.size() == 2);
  Example e = ds.get(0);
  CHECK(e.text == "Blue sky, \"calm\" sea");
  CHECK(e.frames.size() == 2);
  CHECK(e.source == (root / "raw/webvid-10M/data/train/partitions/0000.csv").string() + ":2");
  CHECK_THROWS_WITH(ds.get(1), Catch::Contains("0001.csv:2: missing video") &&
                                   Catch::Contains("raw/videos/train/76/7654/765432/7654321.mp4"));
  WebVidDataset capped(WebVidOptions{root.string(), "webvid-10M", "train", 1, "", FrameSampling{}});
  CHECK(capped.size() == 1);
  const WebVidOptions validation{root.string(), "webvid-10M", "validation", 0, "", FrameSampling{}};
  CHECK(capped.video_path("42") == (root / "raw/videos/train/42/42/42/42.mp4").string());
  CHECK_THROWS_WITH(WebVidDataset(validation), Catch::Contains("no partition CSVs") && Catch::Contains("data/val/partitions"));
}

TEST_CASE("video batches: frames padded to max_frames and masked, so padding frames change no logit",
          "[data][video][model]") {
  TempDir d;
  make_colour(d.str() + "/short.mp4", "red", 1.0);   // 2 frames at fps 2
  make_colour(d.str() + "/long.mp4", "green", 3.0);  // 6 -> max_frames 4
  {
    std::ofstream m(d.str() + "/train.jsonl");
    m << R"({"video": "short.mp4", "text": "a red clip"})" << "\n"
      << R"({"video": "long.mp4", "text": "a green clip"})" << "\n";
  }
  for (const char* arch : {"joint_decoder", "cross_attention", "mot", "moma"}) {
    DYNAMIC_SECTION(arch) {
      auto cfg = load_config_text(video_toml(d.str(), arch, d.str() + "/run"), "video.toml", builtin_registry());
      REQUIRE(cfg.job.video);
      CHECK(cfg.visual_tokens == 4 * 4);  // 4 frames x ceil(4 / 3)^2 tokens
      VLM model = build_vlm(cfg.job, builtin_registry());
      model->eval();
      {
        torch::NoGradGuard g;  // train-like weights: no block is an identity
        torch::manual_seed(5);
        for (auto& p : model->parameters()) p.add_(torch::randn_like(p) * 0.05);
      }
      CHECK(model->frames_per_clip() == 4);
      auto tokenizer = make_tokenizer(cfg.job.data);
      auto collator = std::make_shared<Collator>(tokenizer, cfg.job.vlm->max_text_len,
                                                 model->residual_image_tokens() == 0, "");
      LoaderOptions lo;
      lo.batch_size = 2;
      lo.shuffle = false;
      lo.workers = 0;
      lo.frames = 4;
      DataLoader loader(make_dataset(cfg.job, "train"), collator, model->vision_encoder->preprocess(), 16, lo);
      Batch b = loader.next();
      REQUIRE(b.pixel_values.sizes() == at::IntArrayRef({2, 4, 3, 16, 16}));
      REQUIRE(b.frame_mask.defined());
      const std::string& s0 = b.sources[0];
      const bool short_first = s0.compare(s0.size() - 2, 2, ":1") == 0;
      at::Tensor want = torch::tensor({true, true, false, false});
      CHECK(at::equal(b.frame_mask[short_first ? 0 : 1], want));
      CHECK(b.frame_mask[short_first ? 1 : 0].all().item<bool>());
      CHECK(b.pixel_values[short_first ? 0 : 1].narrow(0, 2, 2).abs().sum().item<double>() == 0);

      torch::NoGradGuard g;
      auto out = model->forward(b.pixel_values, b.input_ids, b.labels, b.frame_mask);
      at::Tensor px = b.pixel_values.clone();
      px[short_first ? 0 : 1].narrow(0, 2, 2).fill_(0.7);  // other padding frames: other tokens
      auto out2 = model->forward(px, b.input_ids, b.labels, b.frame_mask);
      CHECK(at::equal(out.logits, out2.logits));
      // Without the mask the padding frames would be seen.
      auto unmasked = model->forward(px, b.input_ids, b.labels);
      auto unmasked0 = model->forward(b.pixel_values, b.input_ids, b.labels);
      CHECK_FALSE(at::equal(unmasked.logits, unmasked0.logits));
      CHECK_THROWS_WITH(model->forward(b.pixel_values.flatten(0, 1).narrow(0, 0, 2), b.input_ids, b.labels),
                        Catch::Contains("(B, 4, 3, H, W)"));
    }
  }
}

TEST_CASE("a clip's padding frames stay masked while its caption is generated", "[data][video][model][generate]") {
  TempDir d;
  make_colour(d.str() + "/short.mp4", "red", 1.0);  // 2 frames at fps 2, of max_frames 4
  std::ofstream(d.str() + "/train.jsonl") << R"({"video": "short.mp4", "text": "a red clip"})" << "\n";
  for (const char* arch : {"joint_decoder", "cross_attention", "mot"}) {
    DYNAMIC_SECTION(arch) {
      auto cfg = load_config_text(video_toml(d.str(), arch, d.str() + "/run"), "video.toml", builtin_registry());
      VLM model = build_vlm(cfg.job, builtin_registry());
      model->eval();
      torch::NoGradGuard g;
      torch::manual_seed(7);
      for (auto& p : model->parameters()) p.add_(torch::randn_like(p) * 0.05);
      Example ex = make_dataset(cfg.job, "train")->get(0);
      REQUIRE(ex.frames.size() == 2);
      auto [clip, mask] = clip_pixels(ex.frames, 4, model->vision_encoder->preprocess(), 16, ex.source);
      CHECK(at::equal(mask, torch::tensor({true, true, false, false})));
      const at::Tensor px = clip.unsqueeze(0), frames = mask.unsqueeze(0);
      auto tokenizer = make_tokenizer(cfg.job.data);
      Collator collator(tokenizer, cfg.job.vlm->max_text_len, model->residual_image_tokens() == 0, "");
      const std::vector<int64_t> ids = collator.prompt_ids(ex);
      const at::Tensor prompt = at::tensor(ids, at::kLong).view({1, static_cast<int64_t>(ids.size())});

      // The KV cache decodes what re-running the whole masked sequence at every step decodes.
      GenerateOptions o;
      o.max_new_tokens = 10;
      const at::Tensor cached = generate(*model, px, prompt, o, frames);
      o.use_cache = false;
      CHECK(at::equal(cached, generate(*model, px, prompt, o, frames)));
      REQUIRE(cached.size(1) == 10);

      // One decode step's logits equal the masked training forward's at that position; with an image prefix,
      // dropping the mask at the decode step (the padding frames' keys seen again) changes them.
      const int64_t N = model->residual_image_tokens(), P = prompt.size(1);
      const at::Tensor seq = at::cat({prompt, cached.narrow(1, 0, 1)}, 1);
      const at::Tensor want = model->transformer->forward(seq, model->compose(px, seq, frames)).select(1, -1);
      KVCache cache = model->transformer->make_cache(1, N + P + 1, at::kFloat, at::kCPU);
      ModalityContext ctx = model->compose(px, prompt, frames);
      model->transformer->forward(prompt, ctx, &cache);
      ModalityContext::Fields step = model->strategy->decode_context(ctx).fields();
      if (ctx.key_padding_mask().defined()) {
        KVCache unmasked = cache;
        for (auto& l : unmasked.layers) l = nn::LayerKV{l.k.clone(), l.v.clone()};
        const at::Tensor seen = model->transformer->forward(seq.narrow(1, P, 1), ModalityContext(step), &unmasked);
        CHECK_FALSE(at::allclose(seen.select(1, -1), want, 1e-4, 1e-5));
        step.key_padding_mask = at::cat({ctx.key_padding_mask(), at::ones({1, 1}, at::kBool)}, 1);
      } else {  // cross-attention: the frames' mask rides with the image features into every decode step
        REQUIRE(step.image_mask.defined());
        KVCache copy = cache;
        for (auto& l : copy.layers) l = nn::LayerKV{l.k.clone(), l.v.clone()};
        ModalityContext::Fields unmasked = step;
        unmasked.image_mask = at::Tensor();
        const at::Tensor seen = model->transformer->forward(seq.narrow(1, P, 1), ModalityContext(unmasked), &copy);
        CHECK_FALSE(at::allclose(seen.select(1, -1), want, 1e-4, 1e-5));
      }
      const at::Tensor got = model->transformer->forward(seq.narrow(1, P, 1), ModalityContext(step), &cache);
      CHECK(at::allclose(got.select(1, -1), want, 1e-5, 1e-6));
    }
  }
}

TEST_CASE("a video config trains on generated clips, and a corrupt clip stops it with manifest:line",
          "[data][video][train][cli]") {
  TempDir d;
  const char* colours[] = {"red", "green", "blue", "yellow"};
  {
    std::ofstream m(d.str() + "/train.jsonl");
    for (int i = 0; i < 8; ++i) {
      const std::string c = colours[i % 4];
      const std::string file = fmt::format("{}_{}.mp4", c, i);
      make_colour(d.str() + "/" + file, c, 1.0 + 0.5 * (i % 3));
      m << nlohmann::json{{"video", file}, {"text", "a " + c + " clip"}}.dump() << "\n";
    }
  }
  {
    std::ofstream v(d.str() + "/validation.jsonl");  // held out: forge eval reads it
    for (int i = 0; i < 4; ++i)
      v << nlohmann::json{{"video", fmt::format("{}_{}.mp4", colours[i], i)}, {"text", std::string("a ") + colours[i] + " clip"}}.dump()
        << "\n";
  }
  const std::string config = d.str() + "/video.toml";
  std::ofstream(config) << video_toml(d.str(), "joint_decoder", d.str() + "/run");
  const std::string forge = FORGE_BIN;
  auto r = forge::test::run(forge + " train " + config + " --eval.enabled=false --metrics.log_interval=1");
  INFO(r.output);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.output, Catch::Contains("JSONL video manifest"));
  std::vector<double> losses;
  std::ifstream metrics(d.str() + "/run/metrics.jsonl");
  for (std::string line; std::getline(metrics, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) losses.push_back(j["loss"].get<double>());
  }
  REQUIRE(losses.size() == 30);
  double first = 0, last = 0;
  for (int i = 0; i < 5; ++i) first += losses[i] / 5, last += losses[25 + i] / 5;
  INFO("loss " << first << " -> " << last);
  CHECK(last < first - 0.5);
  // The checkpoint's resolved config reads back: forge eval runs on the validation clips.
  auto ev = forge::test::run(forge + " eval --checkpoint " + d.str() + "/run --batches 1");
  INFO(ev.output);
  CHECK(ev.code == 0);
  CHECK_THAT(ev.output, Catch::Contains("loss") && Catch::Contains("token accuracy"));
  // ... and captions them, as forge generate captions one clip.
  const std::string captions = d.str() + "/captions.jsonl";
  auto cap = forge::test::run(forge + " eval --checkpoint " + d.str() + "/run --batches 1 --captions 4 --captions-out " +
                              captions);
  INFO(cap.output);
  REQUIRE(cap.code == 0);
  CHECK_THAT(cap.output, Catch::Contains("generated captions (4,") && Catch::Contains("CIDEr-D"));
  std::vector<nlohmann::json> rows;
  std::ifstream in(captions);
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  REQUIRE(rows.size() == 4);
  CHECK(rows[0]["source"] == d.str() + "/validation.jsonl:1");
  CHECK(rows[0]["reference"] == "a red clip");
  // red_0.mp4 lasts 1 s: 2 frames at fps 2, padded to max_frames 4 and masked.
  auto gen = forge::test::run(forge + " generate --checkpoint " + d.str() + "/run --video " + d.str() + "/red_0.mp4");
  INFO(gen.output);
  CHECK(gen.code == 0);
  CHECK_THAT(gen.output, Catch::Contains("red_0.mp4: 2 of 4 frames taken (1.0 s clip)"));
  CHECK_THAT(gen.output, Catch::Contains(rows[0]["generated"].get<std::string>() + "\n"));
  auto image = forge::test::run(forge + " generate --checkpoint " + d.str() + "/run --image " + config);
  CHECK(image.code == 2);
  CHECK_THAT(image.output, Catch::Contains("is a video model ([video], 4 frames a clip): caption a clip with --video"));

  std::ofstream(d.str() + "/red_0.mp4", std::ios::trunc) << "corrupt";
  auto bad = forge::test::run(forge + " train " + config + " --eval.enabled=false --checkpoint.dir=" + d.str() +
                              "/run2");
  CHECK(bad.code == 2);
  CHECK_THAT(bad.output, Catch::Contains(d.str() + "/train.jsonl:1: undecodable video") &&
                             Catch::Contains("data.bad_rows"));
  auto skip = forge::test::run(forge + " train " + config + " --eval.enabled=false --data.bad_rows=skip "
                               "--train.max_steps=4 --checkpoint.dir=" + d.str() + "/run3");
  INFO(skip.output);
  CHECK(skip.code == 0);
  CHECK_THAT(skip.output, Catch::Contains("skipped"));

  // [video] keys are checked like any other: a budget too small names the frames.
  auto small = forge::test::run(forge + " validate " + config + " --model.max_seq_len=30 --train.seq_len=30");
  CHECK(small.code == 2);
  CHECK_THAT(small.output, Catch::Contains("video.max_frames 4 x 4 per frame at video.pool_window 3"));
}

TEST_CASE("docs/video.md: every command runs", "[data][video][docs]") {
  TempDir d;
  auto commands = forge::test::doc_commands(FORGE_SOURCE_DIR "/docs/video.md", d.str());
  REQUIRE(commands.size() == 7);
  for (const auto& c : commands) {
    INFO(c);
    auto r = forge::test::run("cd " FORGE_SOURCE_DIR " && " + c);
    INFO(r.output);
    CHECK(r.code == 0);
    if (c.find("data check") != std::string::npos)
      CHECK_THAT(r.output, Catch::Contains("usable 2, bad 0") && Catch::Contains("clips/s"));
    if (c.find("--video ") != std::string::npos)
      CHECK_THAT(r.output, Catch::Contains("frames taken") && Catch::Contains("tokens in"));
  }
  CHECK(std::filesystem::exists(d.path() / "forge-video" / "latest"));
}
