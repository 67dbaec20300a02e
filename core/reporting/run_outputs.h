// What a training run shows besides its progress lines, in one place the
// trainer calls (rank 0 writes; other ranks hold an inert instance):
//   <run>/run.json            the resolved config, plugins, device, precision
//   <run>/metrics.jsonl       one row per logged step and per evaluation
//   <run>/eval_captions.jsonl the captions each evaluation generated
//   <run>/eval_images/        thumbnails of the captioned held-out images
//   <tensorboard_dir>/        TensorBoard event files (metrics.enable_tensorboard)
//   <run>/report.html         the run report (report.h), at each evaluation and at the end
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "core/config/job.h"
#include "core/training/caption_eval.h"
#include "core/training/eval.h"
#include "core/training/run_files.h"
#include "forge/export.h"

namespace spdlog {
class logger;
}

namespace forge {

class Registry;
class TensorBoardWriter;

// The run's facts for run.json and the report.
struct FORGE_API RunFacts {
  std::string device;
  std::string precision;
  int64_t world = 1;
  double peak_flops = 0;
};

class FORGE_API RunOutputs {
 public:
  // The run starts at step `resumed_at` (0 when fresh): rows and events an
  // earlier attempt logged after it are dropped. Writes run.json. UserError
  // when a file or folder cannot be created.
  RunOutputs(const JobConfig& job, const Registry& registry, const RunFacts& facts, bool main_rank,
             int64_t resumed_at, std::shared_ptr<spdlog::logger> logger);
  ~RunOutputs();

  // A logged training step: metrics.jsonl and TensorBoard scalars ("train/<key>").
  void step(const nlohmann::json& row);
  // An evaluation: the log lines, its metrics row, the generated captions and
  // their images, TensorBoard scalars, text and images, then the report.
  void eval(int64_t step, const std::string& when, const EvalResult& r, const CaptionEval& captions, double seconds);
  // At the end of the run: the report, once more. Returns its path ("" when off).
  std::string finish();

  std::string tensorboard_dir() const;  // "" when off

 private:
  void write_report();

  const JobConfig& job_;
  std::shared_ptr<spdlog::logger> logger_;
  bool main_;
  std::string run_dir_;
  MetricsLog metrics_;
  MetricsLog captions_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
  std::string report_path_;
  bool report_announced_ = false;
};

}  // namespace forge
