// Real data: JSONL manifests, JPEG/PNG decoding, bad rows, training and
// resuming from a manifest.
#include <stb_image_write.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "core/checkpoint/checkpoint.h"
#include "core/data/jsonl.h"
#include "core/data/loader.h"
#include "core/data/shapes.h"
#include "core/training/trainer.h"
#include "core/util/strings.h"
#include "forge/safetensors.h"
#include "tests/unit/test_helpers.h"

using namespace forge;
using forge::test::error_of;
using forge::test::builtin_registry;
using forge::test::TempDir;

namespace {

// Writes `n` shapes samples as image files (PNG, and every 4th as JPEG) with
// a manifest; returns the manifest path.
std::string write_manifest(const TempDir& dir, const std::string& name, int n, uint64_t seed,
                           const std::vector<std::string>& extra_lines = {}) {
  ShapesDataset ds(n, seed, ShapesDataset::Split::Train, 24);
  std::filesystem::create_directories(dir.path() / "img");
  std::ofstream m(dir.path() / name);
  for (int i = 0; i < n; ++i) {
    Example ex = ds.get(i);
    std::string file = fmt::format("img/{}_{:03d}.{}", name, i, i % 4 == 3 ? "jpg" : "png");
    std::string path = (dir.path() / file).string();
    if (i % 4 == 3) {
      stbi_write_jpg(path.c_str(), 24, 24, 3, ex.image.rgb.data(), 95);
    } else {
      write_png(path, ex.image);
    }
    nlohmann::json row{{"image", file}, {"text", ex.text}};
    if (i % 5 == 0) row["prompt"] = "Describe:";
    m << row.dump() << "\n";
  }
  for (const auto& l : extra_lines) m << l << "\n";
  return (dir.path() / name).string();
}

}  // namespace

TEST_CASE("images: PNG and JPEG, grayscale, palette and alpha become RGB", "[data][image]") {
  TempDir d;
  const std::string gray = d.str() + "/gray.png", rgba = d.str() + "/rgba.png", jpg = d.str() + "/x.jpg";
  std::vector<uint8_t> g(6 * 4);
  for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<uint8_t>(i * 10);
  stbi_write_png(gray.c_str(), 6, 4, 1, g.data(), 6);
  std::vector<uint8_t> a(6 * 4 * 4, 200);
  stbi_write_png(rgba.c_str(), 6, 4, 4, a.data(), 24);
  std::vector<uint8_t> c(6 * 4 * 3, 90);
  stbi_write_jpg(jpg.c_str(), 6, 4, 3, c.data(), 95);
  Image ig = read_image(gray);
  CHECK(ig.width == 6);
  CHECK(ig.height == 4);
  CHECK(ig.rgb.size() == 6 * 4 * 3);
  CHECK(ig.rgb[3 * 5 + 0] == 50);  // grey replicated into R, G, B
  CHECK(ig.rgb[3 * 5 + 2] == 50);
  CHECK(read_image(rgba).rgb[0] == 200);
  CHECK(std::abs(int(read_image(jpg).rgb[0]) - 90) <= 2);
  // A palette PNG (colour type 3), written by hand: 2x1, palette {red, blue}.
  const unsigned char pal_png[] = {
      0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
      0x02, 0x00, 0x00, 0x00, 0x01, 0x08, 0x03, 0x00, 0x00, 0x00, 0xa1, 0x3b, 0x4d, 0x04, 0x00, 0x00, 0x00, 0x06, 0x50,
      0x4c, 0x54, 0x45, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0x6c, 0xb3, 0xee, 0xa7, 0x00, 0x00, 0x00, 0x0b, 0x49, 0x44,
      0x41, 0x54, 0x78, 0x9c, 0x63, 0x60, 0x60, 0x04, 0x00, 0x00, 0x04, 0x00, 0x02, 0x27, 0x3a, 0x6d, 0x3c, 0x00, 0x00,
      0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82};
  Image ip = decode_image(pal_png, sizeof(pal_png), "palette.png");
  REQUIRE(ip.rgb.size() == 6);
  CHECK(ip.rgb[0] == 255);  // red
  CHECK(ip.rgb[5] == 255);  // blue
  // Undecodable bytes name the file.
  std::ofstream(d.str() + "/bad.png") << "\x89PNG\r\n\x1a\nnot an image";
  CHECK_THAT(error_of([&] { read_image(d.str() + "/bad.png"); }), Catch::Contains("bad.png: cannot decode image"));
  std::ofstream(d.str() + "/text.png") << "not an image";
  CHECK_THAT(error_of([&] { read_image(d.str() + "/text.png"); }), Catch::Contains("text.png: not a PNG or JPEG file"));
  // Preprocessing: resize to the encoder's size and normalise.
  Preprocess p;
  p.mean = {0.5, 0.5, 0.5};
  p.std = {0.5, 0.5, 0.5};
  at::Tensor t = preprocess_image(read_image(rgba), p, 8);
  CHECK(t.sizes() == at::IntArrayRef({3, 8, 8}));
  CHECK(t.min().item<float>() == Approx(200 / 255.0 * 2 - 1).margin(1e-4));
}

TEST_CASE("images: JPEG variants decode as Pillow (libjpeg) decodes them", "[data][image]") {
  // tests/fixtures/make_fixtures.py writes each variant with Pillow and its decoded RGB. stb_image and
  // libjpeg differ in IDCT and chroma upsampling rounding, so pixels may differ by a few levels.
  const std::string dir = std::string(FORGE_TEST_DATA_DIR) + "/jpeg";
  safetensors::File decoded(dir + "/decoded.safetensors");
  for (const char* name : {"baseline_444", "baseline_420", "progressive", "optimized", "restarts", "gray"}) {
    INFO(name);
    Image img = read_image(dir + "/" + name + ".jpg");
    at::Tensor want = decoded.load(name).to(at::kInt);
    REQUIRE(want.sizes() == at::IntArrayRef({img.height, img.width, 3}));
    at::Tensor got = at::from_blob(img.rgb.data(), {img.height, img.width, 3}, at::kByte).to(at::kInt);
    const auto diff = (got - want).abs();
    CHECK(diff.to(at::kFloat).mean().item<float>() < 1.5f);
    CHECK(diff.max().item<int>() <= 24);
  }
}

TEST_CASE("every bad-row kind is reported with file:line, counted in skip mode", "[data][jsonl]") {
  TempDir d;
  std::filesystem::create_directories(d.path() / "img");
  std::ofstream(d.path() / "img" / "broken.png") << "garbage";
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"{not json", "malformed JSON"},
      {"{\"text\": \"a caption\"}", "missing key"},
      {"{\"image\": \"img/nope.png\", \"text\": \"x\"}", "missing file"},
      {"{\"image\": \"img/ok.png\", \"text\": \"   \"}", "empty text"},
  };
  write_png((d.path() / "img" / "ok.png").string(), ShapesDataset(1, 1, ShapesDataset::Split::Train, 8).get(0).image);
  for (size_t i = 0; i < bad.size(); ++i) {
    std::string manifest = (d.path() / fmt::format("m{}.jsonl", i)).string();
    std::ofstream(manifest) << "{\"image\": \"img/ok.png\", \"text\": \"fine\"}\n\n" << bad[i].first << "\n";
    auto msg = error_of([&] { JsonlDataset ds(manifest, false); });
    INFO(msg);
    CHECK_THAT(msg, Catch::StartsWith(manifest + ":3: " + bad[i].second));  // line 3: blank lines count
    JsonlDataset skip(manifest, true);
    CHECK(skip.size() == 1);
    CHECK(skip.bad_rows().at(bad[i].second) == 1);
  }
  // An undecodable image is found when it is loaded.
  std::string m = (d.path() / "u.jsonl").string();
  std::ofstream(m) << "{\"image\": \"img/broken.png\", \"text\": \"x\"}\n";
  JsonlDataset ds(m, false);
  CHECK_THAT(error_of([&] { ds.get(0); }), Catch::StartsWith(m + ":1: undecodable image"));
}

TEST_CASE("skip mode counts an unreadable image once per epoch it is used, not when prefetched", "[data][jsonl]") {
  TempDir d;
  std::ofstream(d.path() / "img_broken.png") << "garbage";
  // 15 good rows and one broken image: 4 batches of 4 per epoch, the broken row in every epoch.
  const std::string m = write_manifest(d, "m.jsonl", 15, 3, {"{\"image\": \"img_broken.png\", \"text\": \"x\"}"});
  auto ds = std::make_shared<JsonlDataset>(m, false);
  REQUIRE(ds->size() == 16);
  auto col = std::make_shared<Collator>(std::make_shared<ByteTokenizer>(), 64, false);
  LoaderOptions lo;
  lo.batch_size = 4;
  lo.workers = 2;
  lo.prefetch = 8;  // the workers run a whole epoch ahead
  lo.skip_bad = true;
  DataLoader loader(ds, col, Preprocess{}, 24, lo);
  int64_t used = 0, seen_in_batches = 0;
  for (int i = 0; i < 4; ++i) {
    Batch b = loader.next();
    used += b.input_ids.size(0);
    seen_in_batches += static_cast<int64_t>(b.skipped.size());
  }
  CHECK(used == 15);
  CHECK(seen_in_batches == 1);
  CHECK(loader.skipped() == 1);  // epoch 1 is already built, but not counted
  for (int i = 0; i < 4; ++i) loader.next();
  CHECK(loader.skipped() == 2);
  REQUIRE(loader.skipped_by_reason().size() == 1);
  CHECK_THAT(loader.skipped_by_reason().begin()->first, Catch::StartsWith("undecodable image"));
  // Fail mode: the same row stops the loader with file:line.
  lo.skip_bad = false;
  DataLoader strict(ds, col, Preprocess{}, 24, lo);
  std::string err = "(no error)";
  for (int i = 0; i < 4 && err == "(no error)"; ++i) err = error_of([&] { strict.next(); });
  CHECK_THAT(err, Catch::StartsWith(m + ":16: undecodable image"));
}

TEST_CASE("training from a manifest sees every sample once per epoch, and resumes", "[data][jsonl][train]") {
  TempDir d;
  const std::string train_manifest = write_manifest(d, "train.jsonl", 24, 5);
  const std::string held = write_manifest(d, "held.jsonl", 8, 6);
  auto cfg = [&](int steps) {
    LoadOptions o;
    o.overrides = {"--data.type=jsonl", "--data.path=" + train_manifest, "--eval.dataset_path=" + held,
                   "--vision_encoder.image_size=24", "--vision_encoder.feature_dim=32", "--vision_encoder.num_layers=1",
                   "--model.dim=32", "--model.n_layers=1", "--train.batch_size=4", "--eval.steps=2",
                   "--train.max_steps=" + std::to_string(steps), "--checkpoint.dir=" + d.str() + "/run",
                   "--checkpoint.interval=3", "--data.num_workers=2"};
    return load_config(FORGE_SOURCE_DIR "/configs/shapes.toml", builtin_registry(), o);
  };
  // Which rows each step of the two runs trained on.
  std::map<int64_t, std::vector<std::string>> rows_of_step;
  TrainOptions opts;
  opts.handle_signals = false;
  opts.on_batch = [&](int64_t step, const Batch& b) {
    for (const auto& src : b.sources) rows_of_step[step].push_back(src);
  };
  auto first = train(cfg(3), builtin_registry(), opts);
  CHECK(first.end_step == 3);
  auto st = read_train_state(resolve_checkpoint(d.str() + "/run"));
  CHECK(st.data.batches_yielded == 3);
  auto second = train(cfg(9), builtin_registry(), opts);
  CHECK(second.resumed);
  CHECK(second.end_step == 9);
  // 24 rows in batches of 4: steps 1-6 are epoch 0 (3 before the resume, 3 after) and
  // use every row exactly once; steps 7-9 start epoch 1 with no row twice.
  REQUIRE(rows_of_step.size() == 9);
  std::map<std::string, int> epoch0, epoch1;
  for (const auto& [step, rows] : rows_of_step) {
    CHECK(rows.size() == 4);
    for (const auto& r : rows) ++(step <= 6 ? epoch0 : epoch1)[r];
  }
  CHECK(epoch0.size() == 24);
  for (const auto& [row, n] : epoch0) CHECK(n == 1);
  CHECK(epoch1.size() == 12);
  for (const auto& [row, n] : epoch1) CHECK(n == 1);
  REQUIRE(second.final_eval);
  CHECK(second.final_eval->tokens > 0);

  // The loader's view of the same thing: 6 batches an epoch, each row once, in a new order next epoch.
  auto ds = std::make_shared<JsonlDataset>(train_manifest, false);
  auto col = std::make_shared<Collator>(std::make_shared<ByteTokenizer>(), 64, false);
  LoaderOptions lo;
  lo.batch_size = 4;
  lo.workers = 2;
  DataLoader loader(ds, col, Preprocess{}, 24, lo);
  std::map<std::string, int> seen;
  std::vector<std::string> order1, order2;
  for (int i = 0; i < 6; ++i)
    for (const auto& s : loader.next().sources) {
      ++seen[s];
      order1.push_back(s);
    }
  CHECK(seen.size() == 24);
  for (const auto& [k, v] : seen) CHECK(v == 1);
  for (int i = 0; i < 6; ++i)
    for (const auto& s : loader.next().sources) order2.push_back(s);
  CHECK(order1 != order2);
  std::sort(order1.begin(), order1.end());
  std::sort(order2.begin(), order2.end());
  CHECK(order1 == order2);
}

TEST_CASE("evaluation on a JSONL manifest captions held-out samples and scores them", "[data][jsonl][train][captions]") {
  TempDir d;
  const std::string train_manifest = write_manifest(d, "train.jsonl", 8, 7);
  const std::string held = write_manifest(d, "held.jsonl", 7, 8);
  auto cfg = [&](int samples, const std::string& run) {
    LoadOptions o;
    o.overrides = {"--data.type=jsonl", "--data.path=" + train_manifest, "--eval.dataset_path=" + held,
                   "--vision_encoder.image_size=24", "--vision_encoder.feature_dim=32", "--vision_encoder.num_layers=1",
                   "--model.dim=32", "--model.n_layers=1", "--train.batch_size=4", "--eval.steps=1",
                   "--eval.interval=2", "--train.max_steps=3", "--checkpoint.dir=" + d.str() + "/" + run,
                   "--eval.caption_samples=" + std::to_string(samples)};
    return load_config(FORGE_SOURCE_DIR "/configs/shapes.toml", builtin_registry(), o);
  };
  TrainOptions opts;
  opts.handle_signals = false;
  auto s = train(cfg(5, "run"), builtin_registry(), opts);
  REQUIRE(s.final_captions);
  const CaptionEval& c = *s.final_captions;
  REQUIRE(c.samples.size() == 5);
  // The first five rows, in manifest order, each against its own caption.
  std::ifstream manifest(held);
  std::vector<std::string> generated, texts;
  std::vector<std::vector<std::string>> refs;
  for (size_t i = 0; i < c.samples.size(); ++i) {
    std::string line;
    std::getline(manifest, line);
    INFO(i);
    CHECK(c.samples[i].source == held + ":" + std::to_string(i + 1));
    CHECK(c.samples[i].reference == nlohmann::json::parse(line)["text"].get<std::string>());
    generated.push_back(c.samples[i].generated);
    refs.push_back({c.samples[i].reference});
  }
  const CaptionScores again = score_captions(generated, refs);
  CHECK(c.scores.cider_d == Approx(again.cider_d).margin(1e-12));
  CHECK(c.scores.bleu4() == Approx(again.bleu4()).margin(1e-12));
  // metrics.jsonl has the scores of both evaluations (step 2 and the final one); eval_captions.jsonl their captions.
  std::vector<nlohmann::json> evals;
  std::ifstream metrics(d.str() + "/run/metrics.jsonl");
  for (std::string line; std::getline(metrics, line);)
    if (auto j = nlohmann::json::parse(line); j.contains("eval/loss")) evals.push_back(j);
  REQUIRE(evals.size() == 2);
  for (const auto& j : evals) CHECK(j.at("eval/captions") == 5);
  CHECK(evals.back().at("eval/cider_d").get<double>() == Approx(c.scores.cider_d));
  CHECK(evals.back().at("eval/bleu4").get<double>() == Approx(c.scores.bleu4()));
  CHECK(evals.back().at("eval/exact_match").get<double>() == Approx(c.scores.exact_match));
  std::map<int64_t, int> rows_per_step;
  std::ifstream captions(d.str() + "/run/eval_captions.jsonl");
  for (std::string line; std::getline(captions, line);) {
    auto j = nlohmann::json::parse(line);
    ++rows_per_step[j.at("step").get<int64_t>()];
    CHECK(j.at("generated").is_string());
  }
  CHECK(rows_per_step == std::map<int64_t, int>{{2, 5}, {3, 5}});
  // caption_samples = 0: no generation, no caption keys, no captions file.
  auto off = train(cfg(0, "off"), builtin_registry(), opts);
  CHECK_FALSE(off.final_captions);
  CHECK_FALSE(std::filesystem::exists(d.str() + "/off/eval_captions.jsonl"));
}

TEST_CASE("a manifest's references are what generated captions are scored against, besides the caption",
          "[data][jsonl][train][captions]") {
  TempDir d;
  const std::string train_manifest = write_manifest(d, "train.jsonl", 8, 7);
  const std::string plain = write_manifest(d, "held.jsonl", 4, 8);
  // The same rows with two more captions each; the second row repeats its own caption among them.
  std::ifstream in(plain);
  std::string with_refs;
  int i = 0;
  for (std::string line; std::getline(in, line); ++i) {
    auto j = nlohmann::json::parse(line);
    j["references"] = {fmt::format("another caption {}", i), i == 1 ? j["text"].get<std::string>() : "and a third"};
    with_refs += j.dump() + "\n";
  }
  const std::string held = d.write("held_refs.jsonl", with_refs);
  LoadOptions o;
  o.overrides = {"--data.type=jsonl", "--data.path=" + train_manifest, "--eval.dataset_path=" + held,
                 "--vision_encoder.image_size=24", "--vision_encoder.feature_dim=32", "--vision_encoder.num_layers=1",
                 "--model.dim=32", "--model.n_layers=1", "--train.batch_size=4", "--eval.steps=1",
                 "--train.max_steps=2", "--checkpoint.dir=" + d.str() + "/run", "--eval.caption_samples=3"};
  TrainOptions opts;
  opts.handle_signals = false;
  auto s = train(load_config(FORGE_SOURCE_DIR "/configs/shapes.toml", builtin_registry(), o), builtin_registry(), opts);
  REQUIRE(s.final_captions);
  const CaptionEval& c = *s.final_captions;
  REQUIRE(c.samples.size() == 3);
  std::vector<std::string> generated;
  std::vector<std::vector<std::string>> refs, own_only;
  for (size_t k = 0; k < 3; ++k) {
    const CaptionSample& sample = c.samples[k];
    std::vector<std::string> more{fmt::format("another caption {}", k)};
    if (k != 1) more.push_back("and a third");  // a repeat of the caption is not counted twice
    CHECK(sample.more_references == more);
    generated.push_back(sample.generated);
    refs.push_back({sample.reference});
    refs.back().insert(refs.back().end(), more.begin(), more.end());
    own_only.push_back({sample.reference});
  }
  const CaptionScores all = score_captions(generated, refs);
  CHECK(c.scores.cider_d == Approx(all.cider_d).margin(1e-12));
  CHECK(c.scores.bleu4() == Approx(all.bleu4()).margin(1e-12));
  CHECK(c.scores.bleu[0] == Approx(all.bleu[0]).margin(1e-12));
  CHECK(std::abs(c.scores.cider_d - score_captions(generated, own_only).cider_d) +
            std::abs(c.scores.bleu[0] - score_captions(generated, own_only).bleu[0]) > 0);  // the references counted
  std::ifstream rows(d.str() + "/run/eval_captions.jsonl");
  std::string first;
  std::getline(rows, first);
  CHECK(nlohmann::json::parse(first).at("more_references") == nlohmann::json({"another caption 0", "and a third"}));
  // A references value that is not a list of captions is a bad row, named by line.
  const std::string bad = d.write("bad.jsonl", "{\"image\": \"img/held.jsonl_000.png\", \"text\": \"x\", "
                                               "\"references\": [\"fine\", 3]}\n");
  CHECK_THAT(error_of([&] { JsonlDataset ds(bad, false); }),
             Catch::Contains(bad + ":1: malformed JSON: \"references\" must be a list of non-empty captions"));
}

TEST_CASE("skip mode trains past bad rows and says how many, fail mode exits 2", "[data][jsonl][cli]") {
  TempDir d;
  const std::string m = write_manifest(d, "train.jsonl", 16, 7, {"{\"image\": \"img/gone.png\", \"text\": \"x\"}", "[1, 2]"});
  const std::string forge = FORGE_BIN;
  const std::string common = " --data.type=jsonl --data.path=" + m +
                             " --eval.enabled=false --vision_encoder.image_size=24 --model.dim=32 --model.n_layers=1"
                             " --train.batch_size=4 --train.max_steps=2 --checkpoint.dir=" + d.str() + "/run";
  auto fail = forge::test::run(forge + " train " FORGE_SOURCE_DIR "/configs/shapes.toml" + common);
  CHECK(fail.code == 2);
  CHECK_THAT(fail.output, Catch::Contains(m + ":17: missing file") && Catch::Contains("data.bad_rows = \"skip\""));
  auto skip = forge::test::run(forge + " train " FORGE_SOURCE_DIR "/configs/shapes.toml" + common + " --data.bad_rows=skip");
  INFO(skip.output);
  CHECK(skip.code == 0);
  CHECK_THAT(skip.output, Catch::Contains("2 of 18 rows skipped") && Catch::Contains("missing file: 1") &&
                              Catch::Contains("malformed JSON: 1"));
  auto check = forge::test::run(forge + " data check " FORGE_SOURCE_DIR "/configs/shapes.toml --data.type=jsonl --data.path=" +
                                m + " --vision_encoder.image_size=24");
  INFO(check.output);
  CHECK(check.code == 0);
  CHECK_THAT(check.output, Catch::Contains("rows scanned 18, usable 16, bad 2") && Catch::Contains("images/s"));
  CHECK_THAT(check.output, Catch::Matches(R"([\s\S]*\n +malformed JSON +1\n +missing file +1\n[\s\S]*)"));
}
