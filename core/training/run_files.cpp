#include "core/training/run_files.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "forge/error.h"

namespace fs = std::filesystem;

namespace forge {

void check_run_dir_writable(const std::string& run_dir) {
  const fs::path probe = fs::path(run_dir) / fmt::format(".forge-write-probe-{}", ::getpid());
  std::string reason;
  {
    std::ofstream out(probe);
    if (!out) reason = std::strerror(errno);
    else if (!(out << "forge\n" << std::flush)) reason = std::strerror(errno);
  }
  std::error_code ec;
  fs::remove(probe, ec);
  if (!reason.empty())
    throw UserError(fmt::format("checkpoint.dir = \"{}\": cannot write there ({}); forge would train without being "
                                "able to save checkpoints. Point checkpoint.dir at a writable folder",
                                run_dir, reason));
}

void keep_metrics_up_to(const std::string& path, int64_t step) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return;  // nothing to keep (or not a file: opening it for writing says so)
  std::ifstream in(path);
  if (!in) return;
  std::string kept, line;
  while (std::getline(in, line)) {
    try {
      if (nlohmann::json::parse(line).value("step", int64_t{0}) <= step) kept += line + "\n";
    } catch (const nlohmann::json::exception&) {  // a line cut by a crash or a full disk
    }
  }
  in.close();
  const std::string tmp = fmt::format("{}.tmp-{}", path, ::getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (out) out << kept << std::flush;
    if (!out) {
      fs::remove(tmp, ec);
      throw RuntimeError(fmt::format("{}: cannot rewrite it for the resumed run: {}", path, std::strerror(errno)));
    }
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    const std::string why = ec.message();
    fs::remove(tmp, ec);
    throw RuntimeError(fmt::format("{}: cannot replace it for the resumed run: {}", path, why));
  }
}

void replace_file(const std::string& path, const std::string& text) {
  const std::string tmp = fmt::format("{}.tmp-{}", path, ::getpid());
  std::string reason;
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!(out && out << text << std::flush)) reason = std::strerror(errno);
  }
  std::error_code ec;
  if (reason.empty()) {
    fs::rename(tmp, path, ec);
    if (ec) reason = ec.message();
  }
  if (reason.empty()) return;
  fs::remove(tmp, ec);
  throw RuntimeError(fmt::format("{}: cannot write it: {}", path, reason));
}

MetricsLog::MetricsLog(const std::string& path, std::shared_ptr<spdlog::logger> logger, int64_t resumed_at)
    : path_(path), logger_(std::move(logger)) {
  if (path_.empty()) return;
  if (resumed_at >= 0) keep_metrics_up_to(path_, resumed_at);
  out_.open(path_, std::ios::app);
  if (!out_)
    throw UserError(fmt::format("{}: cannot open the metrics file for writing ({}); set metrics.jsonl = false to "
                                "train without it, or fix the file",
                                path_, std::strerror(errno)));
}

void MetricsLog::write(const nlohmann::json& row) {
  if (path_.empty()) return;
  out_ << row.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n" << std::flush;
  if (out_) {
    if (failing_ && logger_) logger_->info("{}: writing again", path_);
    failing_ = false;
    return;
  }
  ++failed_;
  if (!failing_ && logger_)
    logger_->warn("{}: a metrics line could not be written ({}); training goes on, and forge tries again at the next "
                  "logged step",
                  path_, std::strerror(errno));
  failing_ = true;
  out_.clear();
}

}  // namespace forge
