#include "core/reporting/run_outputs.h"

#include <torch/version.h>
#include <unistd.h>

#include <chrono>
#include <algorithm>
#include <filesystem>
#include <limits>
#include <set>

#include <fmt/format.h>
#include <spdlog/logger.h>

#include "core/config/loader.h"
#include "core/registry/registry.h"
#include "core/reporting/report.h"
#include "core/reporting/tensorboard.h"
#include "forge/error.h"
#include "forge/version.h"

namespace fs = std::filesystem;

namespace forge {

namespace {

std::string path_in(const std::string& run_dir, const std::string& name) { return (fs::path(run_dir) / name).string(); }

// Everything the report says about the run that metrics.jsonl does not.
nlohmann::json run_json(const JobConfig& job, const Registry& registry, const RunFacts& facts) {
  nlohmann::json plugins = nlohmann::json::array();
  std::set<std::pair<std::string, std::string>> used;
  if (job.vlm) used = {{"arch", job.vlm->arch}, {"encoder", job.vision_encoder->type}, {"adapter", job.adapter->type}};
  for (const PluginRecord& rec : registry.records()) {
    if (!rec.ok) continue;
    bool in_use = false;
    for (const auto& [kind, name] : used)
      if (const PluginRecord* r = registry.find_record(kind, name); r && r->path == rec.path) in_use = true;
    plugins.push_back({{"kind", rec.kind}, {"name", rec.name}, {"version", rec.version}, {"file", rec.path},
                       {"used", in_use}});
  }
  char host[256] = "";
  gethostname(host, sizeof host - 1);
  return {{"forge_version", FORGE_SDK_VERSION_STRING},
          {"torch_version", fmt::format("{}.{}.{}", TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR, TORCH_VERSION_PATCH)},
          {"config_source", job.source},
          {"config_toml", to_toml(job)},
          {"plugins", plugins},
          {"device", facts.device},
          {"precision", facts.precision},
          {"world_size", facts.world},
          {"peak_flops", facts.peak_flops},
          {"max_steps", job.train.max_steps},
          {"host", host},
          {"started_unix", std::chrono::duration_cast<std::chrono::seconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count()}};
}

// eval_captions.jsonl, cut back to the rows up to `resumed_at` (whether or
// not this run captions: the report shows the latest rows); its path when
// this run writes it, else "".
std::string trimmed_captions(const JobConfig& job, bool main_rank, int64_t resumed_at) {
  if (!main_rank || !job.metrics.jsonl) return "";
  const std::string path = path_in(job.checkpoint.dir, "eval_captions.jsonl");
  keep_metrics_up_to(path, resumed_at);
  return job.eval.enabled && job.eval.caption_samples > 0 ? path : "";
}

std::string markdown_cell(std::string s) {
  std::string out;
  for (char c : s) {
    if (c == '|') out += "\\|";
    else if (c == '\n') out += ' ';
    else out += c;
  }
  return out;
}

}  // namespace

RunOutputs::RunOutputs(const JobConfig& job, const Registry& registry, const RunFacts& facts, bool main_rank,
                       int64_t resumed_at, std::shared_ptr<spdlog::logger> logger)
    : job_(job),
      logger_(std::move(logger)),
      main_(main_rank),
      run_dir_(job.checkpoint.dir),
      metrics_(main_rank && job.metrics.jsonl ? path_in(run_dir_, "metrics.jsonl") : "", logger_, resumed_at),
      captions_(trimmed_captions(job, main_rank, resumed_at), logger_) {
  if (!main_) return;
  replace_file(path_in(run_dir_, "run.json"), run_json(job, registry, facts).dump(2) + "\n");
  if (job.metrics.enable_tensorboard) {
    fs::path dir(job.metrics.tensorboard_dir);
    if (dir.is_relative()) dir = fs::path(run_dir_) / dir;
    tensorboard_ = std::make_unique<TensorBoardWriter>(dir.string(), resumed_at, logger_);
    logger_->info("TensorBoard: {} (view: tensorboard --logdir {})", tensorboard_->path(), dir.string());
  }
  if (job.metrics.report) {
    if (job.metrics.jsonl) report_path_ = path_in(run_dir_, "report.html");
    else logger_->info("report: off, it draws from metrics.jsonl (metrics.jsonl = false)");
  }
}

RunOutputs::~RunOutputs() = default;

std::string RunOutputs::tensorboard_dir() const {
  return tensorboard_ ? fs::path(tensorboard_->path()).parent_path().string() : std::string();
}

void RunOutputs::step(const nlohmann::json& row) {
  if (!main_) return;
  metrics_.write(row);
  if (!tensorboard_) return;
  std::vector<std::pair<std::string, double>> scalars;
  for (const auto& [k, v] : row.items()) {
    if (v.is_array() && !v.empty()) {  // a series, such as one MoE layer's tokens per expert: its balance
      double lo = std::numeric_limits<double>::infinity(), hi = 0;
      for (const auto& x : v)
        if (x.is_number()) lo = std::min(lo, x.get<double>()), hi = std::max(hi, x.get<double>());
      if (hi > 0) scalars.emplace_back(k + "/min_over_max", lo / hi);
    }
    if (k == "step" || !v.is_number()) continue;
    scalars.emplace_back(k.find('/') == std::string::npos ? "train/" + k : k, v.get<double>());
  }
  tensorboard_->scalars(row.at("step").get<int64_t>(), scalars);
}

void RunOutputs::eval(int64_t step, const std::string& when, const EvalResult& r, const CaptionEval& captions,
                      double seconds) {
  if (!main_) return;
  std::string kinds;
  for (const auto& [k, v] : r.by_kind) kinds += fmt::format(" {} {:.3f}", k, r.kind_accuracy(k));
  logger_->info("eval {} step {}: loss {:.4f} | token acc {:.3f} | image-word acc {:.3f}{} | {:.1f}s", when, step,
                r.loss, r.token_accuracy, r.word_accuracy, kinds.empty() ? "" : " (" + kinds + " )", seconds);
  nlohmann::json row{{"step", step},         {"eval/loss", r.loss},   {"eval/token_accuracy", r.token_accuracy},
                     {"eval/word_accuracy", r.word_accuracy}, {"eval/tokens", r.tokens}, {"eval/words", r.words}};
  for (const auto& [k, v] : r.by_kind) row["eval/word_accuracy/" + k] = r.kind_accuracy(k);

  if (!captions.samples.empty()) {
    const CaptionScores& c = captions.scores;
    logger_->info("eval {} step {}: {} generated captions: BLEU-4 {:.4f} | CIDEr-D {:.4f} | exact match {:.3f} | "
                  "{:.1f}s; e.g. \"{}\" for \"{}\"",
                  when, step, c.captions, c.bleu4(), c.cider_d, c.exact_match, captions.seconds,
                  captions.samples[0].generated, captions.samples[0].reference);
    row.update({{"eval/bleu4", c.bleu4()}, {"eval/cider_d", c.cider_d}, {"eval/exact_match", c.exact_match},
                {"eval/captions", c.captions}});
    std::error_code ec;
    fs::create_directories(path_in(run_dir_, "eval_images"), ec);
    std::string table = "| # | source | reference | generated |\n|---|---|---|---|\n";
    for (size_t i = 0; i < captions.samples.size(); ++i) {
      const CaptionSample& s = captions.samples[i];
      const std::string image = fmt::format("eval_images/{}.png", s.index);
      std::string png;
      if (s.image.width > 0) {
        png = encode_png(s.image);
        try {
          replace_file(path_in(run_dir_, image), png);
        } catch (const Error& e) {
          logger_->warn("{}", e.what());
        }
      }
      nlohmann::json row{{"step", step},           {"index", s.index},         {"source", s.source},
                         {"reference", s.reference}, {"generated", s.generated}, {"image", png.empty() ? "" : image}};
      if (!s.more_references.empty()) row["more_references"] = s.more_references;
      captions_.write(row);
      std::string refs = markdown_cell(s.reference);
      for (const auto& r : s.more_references) refs += "<br>" + markdown_cell(r);
      table += fmt::format("| {} | {} | {} | {} |\n", i, markdown_cell(s.source), refs, markdown_cell(s.generated));
      if (tensorboard_ && !png.empty())
        tensorboard_->image(fmt::format("eval/images/{}", i), step, png, s.image.width, s.image.height,
                            fmt::format("{}: \"{}\" (the generated captions are in the Text tab, eval/captions)",
                                        s.source, s.reference));
    }
    if (tensorboard_) tensorboard_->text("eval/captions", step, table);
  } else if (!captions.skipped_why.empty() && step == job_.train.max_steps) {
    logger_->info("eval: no generated captions: {}", captions.skipped_why);
  }
  metrics_.write(row);
  if (tensorboard_) {
    std::vector<std::pair<std::string, double>> scalars;
    for (const auto& [k, v] : row.items())
      if (k != "step" && v.is_number()) scalars.emplace_back(k, v.get<double>());
    tensorboard_->scalars(step, scalars);
  }
  write_report();
}

void RunOutputs::write_report() {
  if (report_path_.empty()) return;
  try {
    write_run_report(run_dir_, report_path_);
    if (!report_announced_) logger_->info("report: {} (rewritten at each evaluation)", report_path_);
    report_announced_ = true;
  } catch (const Error& e) {
    logger_->warn("report not written: {}; training goes on", e.what());
  }
}

std::string RunOutputs::finish() {
  if (!main_) return "";
  write_report();
  return report_announced_ ? report_path_ : std::string();
}

}  // namespace forge
