// forge train: the training loop, in a few named phases (trainer.cpp reads
// top to bottom): device, model, freezing, optimizer, data, resume, then for
// each step: freeze-stage transitions, learning rate, micro-batches,
// clipping, update, logging, evaluation, checkpoint, stop requests.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/config/loader.h"
#include "core/training/caption_eval.h"
#include "core/training/eval.h"
#include "forge/export.h"

namespace forge {

class Registry;
struct Batch;

struct FORGE_API TrainOptions {
  bool handle_signals = true;  // SIGINT/SIGTERM finish the step, save a checkpoint and stop
  // Called with every training micro-batch this rank uses, and the step it
  // belongs to (1-based), before the forward: for tools that watch the data.
  std::function<void(int64_t step, const Batch& batch)> on_batch;
};

struct FORGE_API TrainSummary {
  int64_t start_step = 0;
  int64_t end_step = 0;
  bool resumed = false;
  bool interrupted = false;
  std::vector<double> losses;  // one per optimizer step run by this call
  std::optional<EvalResult> final_eval;
  std::optional<CaptionEval> final_captions;  // when eval.caption_samples > 0 and the model generates
  std::string last_checkpoint;
  std::string report_path;      // <run>/report.html, when written
  std::string tensorboard_dir;  // when metrics.enable_tensorboard
  double seconds = 0;
  double chance_word_accuracy = 0;  // of a model that ignores the image, when the data knows it
};

FORGE_API TrainSummary train(const LoadedConfig& config, Registry& registry, const TrainOptions& options = {});

// The device a train.device / --device value names ("auto": CUDA when visible,
// else CPU; "cuda" without a GPU is a UserError). On
// CUDA, device LOCAL_RANK (0 when unset) becomes the current device.
FORGE_API at::Device pick_device(const std::string& want);

// The collator `model` reads: vlm.max_text_len tokens, BOS first when no
// image tokens lead the residual stream (cross-attention), data.chat_template.
FORGE_API std::shared_ptr<Collator> make_collator(const JobConfig& job, std::shared_ptr<Tokenizer> tokenizer,
                                                  const VLMImpl& model);
// The training loader's options from [train] and [data], for rank `rank` of
// `world` ranks training on `device` (pinned batches only for CUDA).
FORGE_API LoaderOptions train_loader_options(const JobConfig& job, const at::Device& device, int64_t rank = 0,
                                             int64_t world = 1);

// Ask a running train() to stop after its current step (as a signal does).
FORGE_API void request_stop();

// FLOP/s one device peaks at for MFU: [metrics] peak_tflops, else 989
// TFLOP/s on a GPU (H100/H200 bf16) and 1 TFLOP/s on a CPU.
FORGE_API double peak_flops(const MetricsConfig& m, const at::Device& device);

}  // namespace forge
