// The files a training run writes besides checkpoints, and what happens when
// the disk refuses them: the run directory must be writable before the first
// step (else nothing could be saved), and metrics.jsonl is best effort (a
// failed write is one warning; training goes on and the next checkpoint save
// decides whether the run can continue).
#pragma once

#include <cstdint>
#include <fstream>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "forge/export.h"

namespace spdlog {
class logger;
}

namespace forge {

// UserError naming checkpoint.dir and the system's reason when a file cannot
// be created in `run_dir` (read-only, no permission, no space at all).
FORGE_API void check_run_dir_writable(const std::string& run_dir);

// On resume: drops the rows a crashed run logged after its last checkpoint
// (step > `step`), so they are not logged twice. Written to a temporary file
// and renamed over the old one: a crash here loses nothing.
FORGE_API void keep_metrics_up_to(const std::string& path, int64_t step);

// Writes `text` to a temporary file beside `path` and renames it over
// `path`: a reader sees the old file or the new one, never half of one.
// RuntimeError naming the file and the reason when it cannot.
FORGE_API void replace_file(const std::string& path, const std::string& text);

// Appends one JSON object per line. An empty path writes nothing.
class FORGE_API MetricsLog {
 public:
  // A file that cannot be opened for appending is a UserError naming it.
  // `resumed_at` >= 0: the run resumes from that step, and the rows a
  // crashed attempt wrote after it are dropped first (keep_metrics_up_to).
  MetricsLog(const std::string& path, std::shared_ptr<spdlog::logger> logger, int64_t resumed_at = -1);
  // A failed write (disk full, I/O error) warns once, naming the file and
  // the reason, and the next call tries again; it never stops training.
  void write(const nlohmann::json& row);
  int64_t failed_writes() const { return failed_; }

 private:
  std::string path_;
  std::shared_ptr<spdlog::logger> logger_;
  std::ofstream out_;
  int64_t failed_ = 0;
  bool failing_ = false;
};

}  // namespace forge
