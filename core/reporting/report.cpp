#include "core/reporting/report.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/reporting/svg_chart.h"
#include "core/training/caption_metrics.h"
#include "core/training/run_files.h"
#include "core/util/strings.h"
#include "forge/error.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace forge {

namespace {

std::string read_file(const fs::path& p) {
  std::error_code ec;
  if (p.empty() || !fs::is_regular_file(p, ec)) return "";
  std::ifstream in(p, std::ios::binary);
  if (!in) return "";
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<json> read_jsonl(const fs::path& p) {
  std::vector<json> rows;
  std::ifstream in(p);
  std::string line;
  while (std::getline(in, line)) {
    try {
      json j = json::parse(line);
      if (j.is_object() && j.contains("step") && j["step"].is_number_integer()) rows.push_back(std::move(j));
    } catch (const json::exception&) {  // a line cut by a crash or a full disk
    }
  }
  return rows;
}

std::string base64(const std::string& bytes) {
  static const char* abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (size_t i = 0; i < bytes.size(); i += 3) {
    uint32_t v = static_cast<uint8_t>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) v |= static_cast<uint8_t>(bytes[i + 1]) << 8;
    if (i + 2 < bytes.size()) v |= static_cast<uint8_t>(bytes[i + 2]);
    out += abc[(v >> 18) & 63];
    out += abc[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? abc[(v >> 6) & 63] : '=';
    out += i + 2 < bytes.size() ? abc[v & 63] : '=';
  }
  return out;
}

// (step, row[key] × scale) for the rows that have a number there.
std::vector<std::pair<double, double>> column(const std::vector<json>& rows, const std::string& key, double scale = 1) {
  std::vector<std::pair<double, double>> out;
  for (const auto& r : rows) {
    auto it = r.find(key);
    if (it != r.end() && it->is_number()) out.emplace_back(r["step"].get<double>(), it->get<double>() * scale);
  }
  return out;
}

double median(std::vector<std::pair<double, double>> v) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end(), [](auto& a, auto& b) { return a.second < b.second; });
  return v[v.size() / 2].second;
}

// The run's facts: run.json, else what the latest checkpoint kept (runs from before run.json).
json run_facts(const fs::path& dir) {
  if (std::string text = read_file(dir / "run.json"); !text.empty()) {
    try {
      return json::parse(text);
    } catch (const json::exception&) {
    }
  }
  json facts = json::object();
  facts["config_toml"] = read_file(dir / "latest" / "config.toml");
  try {
    json st = json::parse(read_file(dir / "latest" / "train_state.json"));
    facts["plugins"] = st.value("plugins", json::array());
    for (auto& p : facts["plugins"]) p["used"] = true;
  } catch (const json::exception&) {
  }
  return facts;
}

// An eval_captions row's image: a file inside the run's eval_images/ folder,
// never one elsewhere that a hand-edited row names (the page embeds it).
// A symbolic link on the way is refused too: the file must be the run's own.
fs::path image_in_run(const fs::path& dir, const std::string& image) {
  const fs::path rel = fs::path(image).lexically_normal();
  if (image.empty() || rel.is_absolute() || *rel.begin() != "eval_images" || rel.filename() == "..") return {};
  fs::path at = dir;
  for (const auto& part : rel) {
    if (part == "..") return {};
    at /= part;
    std::error_code ec;
    if (fs::is_symlink(fs::symlink_status(at, ec))) return {};
  }
  return at;
}

// A PNG file of at most 4 MiB (forge writes thumbnails), else "".
std::string read_png(const fs::path& p) {
  std::error_code ec;
  if (p.empty() || !fs::is_regular_file(p, ec) || fs::file_size(p, ec) > (4u << 20)) return "";
  std::string bytes = read_file(p);
  return bytes.rfind("\x89PNG\r\n\x1a\n", 0) == 0 ? bytes : "";
}

std::string tile(const std::string& label, const std::string& value) {
  return fmt::format("<div class=\"tile\"><div class=\"tile-value\">{}</div><div class=\"tile-label\">{}</div></div>\n",
                     html_escape(value), html_escape(label));
}

// row[key] when it is a number, else NaN (MetricsLog writes NaN and inf as null).
double number(const json& row, const std::string& key) {
  auto it = row.find(key);
  return it != row.end() && it->is_number() ? it->get<double>() : std::nan("");
}

std::string fmt_or_dash(double v, const char* spec) {
  return std::isfinite(v) ? fmt::format(fmt::runtime(spec), v) : std::string("–");
}

const char* kStyle = R"(
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222;background:#fff;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;font-size:13px}.tiles{display:flex;flex-wrap:wrap;gap:10px;margin-top:14px}
.tile{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:110px}.tile-value{font-size:18px;font-weight:600}
.tile-label{font-size:12px;color:#666}.charts{display:flex;flex-wrap:wrap;gap:12px}
.chart{border:1px solid #e3e3e3;border-radius:6px;background:#fff}.chart-title{font-size:13px;font-weight:600;fill:#222}
.plot{fill:#fcfcfc;stroke:#ccc}.grid{stroke:#eee}.tick,.legend,.axis-label{font-size:11px;fill:#555}.no-data{font-size:13px;fill:#999}
.grid-images{display:flex;flex-wrap:wrap;gap:14px}figure{margin:0;width:180px;border:1px solid #e3e3e3;border-radius:6px;padding:8px}
figure img{width:160px;height:160px;object-fit:contain;image-rendering:pixelated;display:block;margin:0 auto 6px;background:#f4f4f4}
figcaption{font-size:12px;line-height:1.35}.src{color:#888;font-size:11px;word-break:break-all}.ok{color:#2a7d2a}.diff{color:#b3261e}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}
pre{background:#f6f8fa;padding:12px;border-radius:6px;font-size:12px;overflow:auto;max-height:480px}
)";

}  // namespace

namespace {

std::string report_html(const fs::path& dir) {
  const std::vector<json> rows = read_jsonl(dir / "metrics.jsonl");
  std::vector<json> train_rows, eval_rows;
  for (const auto& r : rows) (r.contains("eval/loss") ? eval_rows : train_rows).push_back(r);
  const json facts = run_facts(dir);

  // ------------------------------------------------ header and summary tiles
  std::string html = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n";
  html += fmt::format("<title>forge run report: {}</title>\n<style>{}</style></head><body>\n",
                      html_escape(dir.filename().string()), kStyle);
  html += fmt::format("<h1>forge run report: {}</h1>\n", html_escape(fs::absolute(dir).lexically_normal().string()));
  const std::time_t now = std::time(nullptr);
  char when[64];
  std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
  std::string sub = fmt::format("written {}", when);
  for (const char* k : {"config_source", "device", "precision"})
    if (facts.contains(k) && facts[k].is_string()) sub += fmt::format(" · {}: {}", k, facts[k].get<std::string>());
  if (facts.contains("world_size")) sub += fmt::format(" · ranks: {}", facts["world_size"].dump());
  if (facts.contains("forge_version"))
    sub += fmt::format(" · forge {} · torch {}", facts.value("forge_version", ""), facts.value("torch_version", ""));
  html += fmt::format("<div class=\"sub\">{}</div>\n<div class=\"tiles\">\n", html_escape(sub));
  const int64_t last_step = train_rows.empty() ? 0 : train_rows.back()["step"].get<int64_t>();
  html += tile("steps", facts.contains("max_steps") ? fmt::format("{} / {}", last_step, facts["max_steps"].dump())
                                                    : std::to_string(last_step));
  if (!train_rows.empty()) html += tile("last loss", fmt_or_dash(number(train_rows.back(), "loss"), "{:.4f}"));
  const double tokens_per_s = median(column(train_rows, "tokens_per_s"));
  html += tile("median tokens/s", std::isfinite(tokens_per_s) ? util::human_count(tokens_per_s) : "–");
  html += tile("median MFU", fmt_or_dash(median(column(train_rows, "mfu", 100)), "{:.2f} %"));
  html += tile("median step", fmt_or_dash(median(column(train_rows, "step_time_s")), "{:.3f} s"));
  if (!eval_rows.empty()) {
    const json& e = eval_rows.back();
    html += tile("held-out loss", fmt_or_dash(number(e, "eval/loss"), "{:.4f}"));
    if (e.contains("eval/bleu4")) {
      html += tile("BLEU-4", fmt_or_dash(number(e, "eval/bleu4"), "{:.4f}"));
      html += tile("CIDEr-D", fmt_or_dash(number(e, "eval/cider_d"), "{:.4f}"));
      html += tile("exact match", fmt_or_dash(number(e, "eval/exact_match"), "{:.3f}"));
    }
  }
  html += "</div>\n";

  // ------------------------------------------------ curves
  html += "<h2>Curves</h2>\n<div class=\"charts\">\n";
  auto chart = [&](const std::string& title, std::vector<ChartSeries> series, bool log_y = false) {
    bool any = false;
    for (const auto& s : series) any = any || !s.points.empty();
    if (!any) return;
    html += svg_line_chart(series, {title, "step", 560, 260, log_y});
  };
  chart("Loss", {{"train", "#1f77b4", column(train_rows, "loss")}, {"held-out", "#d62728", column(eval_rows, "eval/loss"), true}},
        true);
  chart("Learning rate", {{"lr", "#2ca02c", column(train_rows, "lr")}});
  chart("Gradient norm (before clipping)", {{"grad norm", "#9467bd", column(train_rows, "grad_norm")}}, true);
  chart("Throughput (text tokens/s)", {{"tokens/s", "#8c564b", column(train_rows, "tokens_per_s")}});
  chart("MFU (%)", {{"MFU", "#e377c2", column(train_rows, "mfu", 100)}});
  chart("Step time (s)", {{"step", "#7f7f7f", column(train_rows, "step_time_s")},
                          {"data wait", "#bcbd22", column(train_rows, "data_wait_s")}});
  chart("Generated captions", {{"BLEU-4", "#17becf", column(eval_rows, "eval/bleu4"), true},
                               {"CIDEr-D", "#ff7f0e", column(eval_rows, "eval/cider_d"), true},
                               {"exact match", "#2ca02c", column(eval_rows, "eval/exact_match"), true}});
  chart("Held-out accuracy", {{"token", "#1b9e77", column(eval_rows, "eval/token_accuracy"), true},
                              {"image word", "#ff7f0e", column(eval_rows, "eval/word_accuracy"), true}});
  html += "</div>\n";

  // ------------------------------------------------ captioned images of the latest evaluation
  std::vector<json> caps = read_jsonl(dir / "eval_captions.jsonl");
  if (!caps.empty()) {
    int64_t step = 0;
    for (const auto& c : caps) step = std::max(step, c["step"].get<int64_t>());
    html += fmt::format("<h2>Held-out images at step {}: reference and generated captions</h2>\n"
                        "<div class=\"grid-images\">\n",
                        step);
    for (const auto& c : caps) {
      if (c["step"].get<int64_t>() != step) continue;
      const std::string ref = c.value("reference", ""), gen = c.value("generated", "");
      std::string more;
      const auto gen_words = caption_words(gen);  // "matches" as exact_match counts it: word for word
      bool matched = caption_words(ref) == gen_words;
      if (auto it = c.find("more_references"); it != c.end() && it->is_array())
        for (const auto& r : *it)
          if (r.is_string()) {
            more += "<br><span class=\"src\">or</span> " + html_escape(r.get<std::string>());
            matched = matched || caption_words(r.get<std::string>()) == gen_words;
          }
      std::string img;
      const auto image = c.find("image");
      if (std::string png = read_png(image_in_run(dir, image != c.end() && image->is_string() ? image->get<std::string>() : ""));
          !png.empty())
        img = fmt::format("<img alt=\"held-out image {:.0f}\" src=\"data:image/png;base64,{}\">", number(c, "index"),
                          base64(png));
      html += fmt::format("<figure>{}<figcaption><div class=\"src\">{}</div><b>reference</b> {}{}<br><b>generated</b> "
                          "<span class=\"{}\">{}</span></figcaption></figure>\n",
                          img, html_escape(c.value("source", "")), html_escape(ref), more, matched ? "ok" : "diff",
                          html_escape(gen));
    }
    html += "</div>\n";
  }

  // ------------------------------------------------ plugins and config
  if (facts.contains("plugins") && !facts["plugins"].empty()) {
    html += "<h2>Plugins</h2>\n<table><tr><th>kind</th><th>name</th><th>version</th><th>file</th><th>used by this "
            "run</th></tr>\n";
    for (const auto& p : facts["plugins"])
      html += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                          html_escape(p.value("kind", "")), html_escape(p.value("name", "")),
                          html_escape(p.value("version", "")), html_escape(p.value("file", "")),
                          p.value("used", false) ? "yes" : "");
    html += "</table>\n";
  }
  if (std::string toml = facts.value("config_toml", ""); !toml.empty())
    html += fmt::format("<h2>Resolved config</h2>\n<pre>{}</pre>\n", html_escape(toml));
  html += "</body></html>\n";
  return html;
}

}  // namespace

std::string run_report_html(const std::string& run_dir) {
  std::error_code ec;
  if (!fs::is_regular_file(fs::path(run_dir) / "metrics.jsonl", ec))
    throw UserError(fmt::format("{}: no metrics.jsonl here; give the run folder (checkpoint.dir) of a forge train run "
                                "that kept metrics.jsonl = true",
                                run_dir));
  try {
    return report_html(run_dir);
  } catch (const nlohmann::json::exception& e) {  // a value of the wrong type in a hand-edited file
    throw FormatError(fmt::format("{}: a file of this run holds a value forge did not write there ({}); restore or "
                                  "delete metrics.jsonl, eval_captions.jsonl or run.json",
                                  run_dir, e.what()));
  }
}

void write_run_report(const std::string& run_dir, const std::string& out) { replace_file(out, run_report_html(run_dir)); }

}  // namespace forge
