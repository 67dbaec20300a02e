// What a researcher sees of a run: TensorBoard event files read back by
// TensorBoard's own reader, and the HTML report rendered by headless Chromium.
#include <algorithm>
#include <fstream>
#include <map>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/data/data.h"
#include "core/reporting/report.h"
#include "core/reporting/svg_chart.h"
#include "core/reporting/tensorboard.h"
#include "core/training/trainer.h"
#include "tests/unit/test_helpers.h"

using namespace forge;
using forge::test::builtin_registry;
using forge::test::TempDir;
using nlohmann::json;

namespace {

// `n` solid-colour 24 x 24 images with captions naming their colour.
std::string write_solid_manifest(const TempDir& d, const std::string& name, int n, uint8_t r, uint8_t g, uint8_t b,
                                 const std::string& colour) {
  std::ofstream m(d.path() / name);
  for (int i = 0; i < n; ++i) {
    Image img;
    img.width = img.height = 24;
    img.rgb.assign(24 * 24 * 3, 0);
    for (size_t p = 0; p < img.rgb.size(); p += 3) img.rgb[p] = r, img.rgb[p + 1] = g, img.rgb[p + 2] = b;
    const std::string file = fmt::format("{}_{}.png", name, i);
    write_png((d.path() / file).string(), img);
    m << json{{"image", file}, {"text", fmt::format("a {} square number {}", colour, i)}}.dump() << "\n";
  }
  return (d.path() / name).string();
}

// A tiny run on those images: 4 steps, every step logged, evaluations at steps 2 and 4.
TrainSummary tiny_run(const TempDir& d, const std::vector<std::string>& extra) {
  const std::string train_m = write_solid_manifest(d, "train.jsonl", 8, 255, 0, 255, "magenta");
  const std::string held_m = write_solid_manifest(d, "held.jsonl", 4, 255, 0, 255, "magenta");
  LoadOptions o;
  o.overrides = {"--data.type=jsonl", "--data.path=" + train_m, "--eval.dataset_path=" + held_m,
                 "--vision_encoder.image_size=24", "--vision_encoder.feature_dim=32", "--vision_encoder.num_layers=1",
                 "--model.dim=32", "--model.n_layers=1", "--train.batch_size=4", "--eval.steps=1",
                 "--eval.interval=2", "--train.max_steps=4", "--metrics.log_interval=1",
                 "--eval.caption_samples=3", "--checkpoint.dir=" + d.str() + "/run"};
  o.overrides.insert(o.overrides.end(), extra.begin(), extra.end());
  TrainOptions opts;
  opts.handle_signals = false;
  return train(load_config(FORGE_SOURCE_DIR "/configs/shapes.toml", builtin_registry(), o), builtin_registry(), opts);
}

std::vector<json> read_rows(const std::string& path) {
  std::vector<json> rows;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) rows.push_back(json::parse(line));
  return rows;
}

uint32_t rotl(uint32_t v, int k) { return (v << k) | (v >> (32 - k)); }

}  // namespace

TEST_CASE("TFRecord framing: CRC-32C masked and the length and payload framed as TensorFlow writes them",
          "[reporting][tensorboard]") {
  const std::string check = "123456789";
  // Unmasking gives CRC-32C's published check value for "123456789".
  CHECK(rotl(masked_crc32c(check.data(), check.size()) - 0xa282ead8u, 15) == 0xE3069283u);
  const std::string rec = tfrecord("abc");
  REQUIRE(rec.size() == 8 + 4 + 3 + 4);
  CHECK(rec.substr(0, 8) == std::string("\x03\0\0\0\0\0\0\0", 8));
  CHECK(rec.substr(12, 3) == "abc");
  uint32_t crc = 0;
  for (int i = 0; i < 4; ++i) crc |= static_cast<uint32_t>(static_cast<uint8_t>(rec[15 + i])) << (8 * i);
  CHECK(crc == masked_crc32c("abc", 3));
}

TEST_CASE("TensorBoard's reader finds the run's scalars and its captions as text and images",
          "[reporting][tensorboard][train]") {
  TempDir d;
  const TrainSummary s = tiny_run(d, {"--metrics.enable_tensorboard=true", "--metrics.tensorboard_dir=tb"});
  REQUIRE(s.tensorboard_dir == d.str() + "/run/tb");
  auto r = forge::test::run(fmt::format("{} {}/tests/fixtures/read_tensorboard.py {}", FORGE_PYTHON, FORGE_SOURCE_DIR,
                                        s.tensorboard_dir));
  INFO(r.output);
  REQUIRE(r.code == 0);
  const json tb = json::parse(r.output.substr(r.output.find('{')));

  // Every logged step's scalars, equal to metrics.jsonl's (as float32).
  std::map<int64_t, json> train_rows, eval_rows;
  for (const json& row : read_rows(d.str() + "/run/metrics.jsonl"))
    (row.contains("eval/loss") ? eval_rows : train_rows)[row["step"].get<int64_t>()] = row;
  REQUIRE(train_rows.size() == 4);
  for (const char* key : {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "data_wait_s", "step_time_s"}) {
    INFO(key);
    const json& series = tb["scalars"].at(std::string("train/") + key);
    REQUIRE(series.size() == 4);
    for (const json& point : series) {
      const json& row = train_rows.at(point[0].get<int64_t>());
      CHECK(point[1].get<double>() == Approx(row[key].get<double>()).epsilon(1e-6));
    }
  }
  REQUIRE(eval_rows.size() == 2);
  for (const char* key : {"eval/loss", "eval/token_accuracy", "eval/bleu4", "eval/cider_d", "eval/exact_match"}) {
    INFO(key);
    const json& series = tb["scalars"].at(key);
    REQUIRE(series.size() == 2);
    CHECK(series[0][0] == 2);
    CHECK(series[1][0] == 4);
    CHECK(series[1][1].get<double>() == Approx(eval_rows.at(4)[key].get<double>()).epsilon(1e-6).margin(1e-7));
  }

  // The text plugin's table holds every sample's reference and generated caption, per evaluation.
  const json& text = tb["text"].at("eval/captions");
  CHECK(text["plugin"] == "text");
  REQUIRE(text["values"].size() == 2);
  const std::vector<json> captions = read_rows(d.str() + "/run/eval_captions.jsonl");
  REQUIRE(captions.size() == 6);
  for (const json& c : captions) {
    const json& at_step = text["values"][c["step"].get<int64_t>() == 2 ? 0 : 1];
    CHECK(at_step[0] == c["step"]);
    CHECK_THAT(at_step[1].get<std::string>(), Catch::Contains(c["reference"].get<std::string>()));
    std::string cell;  // as a markdown table cell: '|' escaped, a newline a space
    for (char ch : c["generated"].get<std::string>()) cell += ch == '|' ? std::string("\\|") : std::string(1, ch == '\n' ? ' ' : ch);
    CHECK_THAT(at_step[1].get<std::string>(), Catch::Contains(cell));
  }
  // What TensorBoard's UI plugins see, after it migrates old-style values.
  CHECK(tb["plugins"]["text"] == json::array({"eval/captions"}));
  CHECK(tb["plugins"]["images"] == json::array({"eval/images/0", "eval/images/1", "eval/images/2"}));
  for (const char* tag : {"train/loss", "train/mfu", "eval/cider_d"})
    CHECK(std::count(tb["plugins"]["scalars"].begin(), tb["plugins"]["scalars"].end(), tag) == 1);
  // One image tag per captioned sample, a 24 x 24 PNG at each evaluation, described by its reference.
  REQUIRE(tb["images"].size() == 3);
  for (int i = 0; i < 3; ++i) {
    const json& img = tb["images"].at(fmt::format("eval/images/{}", i));
    CHECK_THAT(img["description"].get<std::string>(), Catch::Contains(fmt::format("a magenta square number {}", i)));
    REQUIRE(img["values"].size() == 2);
    for (const json& v : img["values"]) {
      CHECK(v["width"] == 24);
      CHECK(v["height"] == 24);
      CHECK(v["png"] == "89504e470d0a1a0a");  // the PNG signature
    }
  }
}

TEST_CASE("a resumed run's TensorBoard curves hold each step once: what ran after the checkpoint is replaced",
          "[reporting][tensorboard][train]") {
  TempDir d;
  // The first attempt checkpoints at step 3, then logs step 4 and is gone (no final save, as after a crash).
  tiny_run(d, {"--metrics.enable_tensorboard=true", "--checkpoint.interval=3", "--checkpoint.save_final=false"});
  const TrainSummary s = tiny_run(d, {"--metrics.enable_tensorboard=true", "--train.max_steps=6"});
  REQUIRE(s.start_step == 3);
  auto r = forge::test::run(fmt::format("{} {}/tests/fixtures/read_tensorboard.py {}", FORGE_PYTHON, FORGE_SOURCE_DIR,
                                        s.tensorboard_dir));
  INFO(r.output);
  REQUIRE(r.code == 0);
  const json tb = json::parse(r.output.substr(r.output.find('{')));
  std::map<int64_t, double> loss;
  for (const json& row : read_rows(d.str() + "/run/metrics.jsonl"))
    if (row.contains("loss")) loss[row["step"].get<int64_t>()] = row["loss"].get<double>();
  REQUIRE(loss.size() == 6);  // metrics.jsonl: steps 1-6, step 4 from the second attempt
  const json& series = tb["scalars"].at("train/loss");
  REQUIRE(series.size() == 6);
  for (size_t i = 0; i < 6; ++i) {
    CHECK(series[i][0] == static_cast<int64_t>(i + 1));
    CHECK(series[i][1].get<double>() == Approx(loss.at(static_cast<int64_t>(i + 1))).epsilon(1e-6));
  }
}

TEST_CASE("the run report renders in headless Chromium with its curves and captioned images",
          "[reporting][report][train]") {
  TempDir d;
  const TrainSummary s = tiny_run(d, {});
  const std::string run = d.str() + "/run";
  REQUIRE(s.report_path == run + "/report.html");
  REQUIRE(std::filesystem::exists(s.report_path));

  // forge report redraws it anywhere; a folder that is not a run is exit 2 with what to give instead.
  const std::string out = d.str() + "/elsewhere.html";
  auto rep = forge::test::run(fmt::format("{} report {} --out {}", FORGE_BIN, run, out));
  INFO(rep.output);
  REQUIRE(rep.code == 0);
  CHECK_THAT(rep.output, Catch::Contains("report: " + out));
  auto bad = forge::test::run(fmt::format("{} report {}", FORGE_BIN, d.str()));
  CHECK(bad.code == 2);
  CHECK_THAT(bad.output, Catch::Contains("no metrics.jsonl") && Catch::Contains("checkpoint.dir"));

  const std::string chromium = "chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage "
                               "--hide-scrollbars --force-device-scale-factor=1";
  const std::string shot = d.str() + "/report.png";
  auto sr = forge::test::run(fmt::format("{} --window-size=1280,2600 --screenshot={} file://{}", chromium, shot, out));
  INFO(sr.output);
  REQUIRE(std::filesystem::exists(shot));
  const Image page = read_image(shot);
  // Pixels within `tol` (summed over channels) of a colour; antialiased edges blend into the background.
  auto pixels_near = [&](int r, int g, int b, int tol) {
    int64_t n = 0;
    for (size_t p = 0; p < page.rgb.size(); p += 3)
      n += std::abs(page.rgb[p] - r) + std::abs(page.rgb[p + 1] - g) + std::abs(page.rgb[p + 2] - b) <= tol;
    return n;
  };
  // The training-loss curve (#1f77b4, 2 px wide across a 476 px plot) is drawn, not only its 18 x 3 legend swatch.
  CHECK(pixels_near(0x1f, 0x77, 0xb4, 60) > 400);
  // The three captioned held-out images, each shown 160 x 160: solid magenta.
  CHECK(pixels_near(255, 0, 255, 0) >= 3 * 160 * 160 * 9 / 10);

  // What the page says: every sample's reference and generated caption (the file forge wrote; the
  // untrained model's captions can hold any character), three figures as rendered, one curve per series.
  auto dom = forge::test::run(fmt::format("{} --dump-dom file://{}", chromium, out));
  REQUIRE(dom.code == 0);
  std::ifstream page_file(out);
  const std::string html((std::istreambuf_iterator<char>(page_file)), std::istreambuf_iterator<char>());
  const std::vector<json> captions = read_rows(run + "/eval_captions.jsonl");
  std::set<std::string> latest;
  for (const json& c : captions)
    if (c["step"] == 4) {
      CHECK_THAT(dom.output, Catch::Contains(c["reference"].get<std::string>()));  // plain words
      CHECK_THAT(html, Catch::Contains(html_escape(c["generated"].get<std::string>())));
      latest.insert(c["reference"].get<std::string>());
    }
  CHECK(latest.size() == 3);
  size_t figures = 0;
  for (size_t at = dom.output.find("<figure>"); at != std::string::npos; at = dom.output.find("<figure>", at + 1))
    ++figures;
  CHECK(figures == 3);
  for (const char* series : {"data-label=\"train\"", "data-label=\"held-out\"", "data-label=\"lr\"",
                             "data-label=\"tokens/s\"", "data-label=\"MFU\"", "data-label=\"CIDEr-D\""})
    CHECK_THAT(dom.output, Catch::Contains(series));
  CHECK_THAT(dom.output, Catch::Contains("arch") && Catch::Contains("libforge_arch_"));  // the plugins table
  CHECK_THAT(dom.output, Catch::Contains("[vlm]"));                                        // the resolved config
}

TEST_CASE("charts: rounded ticks, a log scale for positive series and no point for NaN", "[reporting][svg]") {
  const std::string svg = svg_line_chart({{"loss", "#123456", {{0, 10}, {50, 1}, {100, 0.1}, {150, NAN}}, false}},
                                         {"Loss", "step", 400, 200, true});
  CHECK_THAT(svg, Catch::StartsWith("<svg"));
  for (const char* tick : {">0.1<", ">1<", ">10<", ">0<", ">40<", ">100<"}) CHECK_THAT(svg, Catch::Contains(tick));
  const auto pts = svg.substr(svg.find("points=\""));
  CHECK(std::count(pts.begin(), pts.begin() + static_cast<long>(pts.find("\"/>")), ',') == 3);  // NaN left out
  CHECK_THAT(svg_line_chart({}, {"Empty"}), Catch::Contains("no data"));
  // Neighbouring ticks never print alike, even at 1e5 tokens/s; a range of a few ulps ends (no endless ticks).
  const std::string big = svg_line_chart({{"tok/s", "#000", {{1, 150000}, {2, 260000}}}}, {"T"});
  for (const char* tick : {">1.5e+05<", ">2e+05<", ">2.5e+05<"}) CHECK_THAT(big, Catch::Contains(tick));
  const double v = 1e6;
  const std::string tiny = svg_line_chart({{"x", "#000", {{1e17, v}, {1e17 + 16, std::nextafter(v, 2e6)}}}}, {"U"});
  CHECK(std::count(tiny.begin(), tiny.end(), '\n') < 60);
  CHECK(html_escape("<a href=\"x\">&'") == "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
}

TEST_CASE("forge report draws any run folder with metrics.jsonl and names a hand-edited file it cannot read",
          "[reporting][report][cli]") {
  TempDir d;
  d.write("run/metrics.jsonl", "{\"step\": 1, \"loss\": 2.5, \"lr\": 0.001}\n{\"step\": 2, \"loss\": 2.0, \"lr\""
                               ": 0.001}\nnot json, a line cut by a crash\n");
  auto ok = forge::test::run(fmt::format("{} report {}/run", FORGE_BIN, d.str()));
  INFO(ok.output);
  REQUIRE(ok.code == 0);
  std::ifstream in(d.str() + "/run/report.html");
  const std::string html((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK_THAT(html, Catch::Contains("data-label=\"train\"") && Catch::Contains("<div class=\"tile-value\">2</div>"));  // the steps tile
  // Images are embedded from the run's eval_images/ only, whatever path a row names.
  Image px;
  px.width = px.height = 2;
  px.rgb.assign(12, 7);
  write_png(d.str() + "/outside.png", px);
  std::filesystem::create_directories(d.path() / "run/eval_images");
  write_png(d.str() + "/run/eval_images/0.png", px);
  std::string rows;
  for (const char* image : {"eval_images/0.png", "../outside.png", "eval_images/../../outside.png",
                            "/etc/hostname", "eval_images/none.png"})
    rows += json{{"step", 2}, {"index", 0}, {"reference", "r"}, {"generated", "g"}, {"image", image}}.dump() + "\n";
  d.write("run/eval_captions.jsonl", rows);
  REQUIRE(forge::test::run(fmt::format("{} report {}/run", FORGE_BIN, d.str())).code == 0);
  std::ifstream in2(d.str() + "/run/report.html");
  const std::string html2((std::istreambuf_iterator<char>(in2)), std::istreambuf_iterator<char>());
  size_t embedded = 0;
  for (size_t at = html2.find("data:image/png"); at != std::string::npos; at = html2.find("data:image/png", at + 1))
    ++embedded;
  CHECK(embedded == 1);
  size_t figures = 0;  // every row is still shown, with its captions
  for (size_t at = html2.find("<figure>"); at != std::string::npos; at = html2.find("<figure>", at + 1)) ++figures;
  CHECK(figures == 5);
  // Captions are text: one that reads like markup or a data URL (a fuzz finding
  // in the harness, not the page) stays escaped text and embeds nothing.
  const std::string sly = "\"><img src=\"data:image/png;base64,AAAA\">";
  d.write("run/eval_captions.jsonl", json{{"step", 2}, {"reference", sly}, {"generated", sly}}.dump() + "\n");
  REQUIRE(forge::test::run(fmt::format("{} report {}/run", FORGE_BIN, d.str())).code == 0);
  std::ifstream in3(d.str() + "/run/report.html");
  const std::string html3((std::istreambuf_iterator<char>(in3)), std::istreambuf_iterator<char>());
  CHECK(html3.find("<img") == std::string::npos);
  CHECK_THAT(html3, Catch::Contains("&quot;&gt;&lt;img src=&quot;data:image/png;base64,AAAA&quot;&gt;"));
  d.write("run/eval_captions.jsonl", "{\"step\": 2, \"reference\": 5, \"generated\": \"a\"}\n");
  auto bad = forge::test::run(fmt::format("{} report {}/run", FORGE_BIN, d.str()));
  CHECK(bad.code == 2);
  CHECK_THAT(bad.output, Catch::Contains(d.str() + "/run: a file of this run holds a value forge did not write"));
  auto none = forge::test::run(fmt::format("{} report {}/nowhere", FORGE_BIN, d.str()));
  CHECK(none.code == 2);
  CHECK_THAT(none.output, Catch::Contains("no such folder"));
}
